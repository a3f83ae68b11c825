"""Hybrid CBMs: a zero residual is the plain CBM, the bypass share on known heads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dynalens.concepts import make_tabular_concepts
from dynalens.concepts.models import ConceptBottleneckModel, HybridCBM, fit_cbm, fit_hybrid
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import UndefinedShareWarning, bypass_share, intervention_curve


@pytest.fixture(scope="module")
def data():
    return make_tabular_concepts(600, seed=0, input_noise=1.0)


def _pair(seed: int = 0) -> tuple[ConceptBottleneckModel, HybridCBM]:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 12))
    cbm = ConceptBottleneckModel(encoder, nn.Linear(12, 4))
    head = nn.Linear(15, 4)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, :12] = cbm.head.weight
        head.bias.copy_(cbm.head.bias)
    return cbm, HybridCBM(encoder, nn.Linear(16, 3), head)


@pytest.mark.parametrize("policy", ["random", "uncertainty", "entropy", "oracle"])
def test_hybrid_with_zero_residual_weights_has_the_plain_cbm_curve(data, policy) -> None:
    cbm, hybrid = _pair()
    fit_cbm(cbm, data.x, data.c, data.y, mode="independent", epochs=30)
    with torch.no_grad():
        hybrid.head.weight[:, :12] = cbm.head.weight
        hybrid.head.bias.copy_(cbm.head.bias)
        p = cbm.concepts(data.x)
    groups = [list(g) for g in data.groups]
    a = intervention_curve(cbm.concept_task(data.x), p, data.c, data.y, policy=policy,
                           groups=groups)  # fmt: skip
    b = intervention_curve(hybrid.concept_task(data.x), hybrid.concepts(data.x).detach(),
                           data.c, data.y, policy=policy, groups=groups)  # fmt: skip
    assert torch.equal(a.details["curve"], b.details["curve"])


def test_sequential_hybrid_trains_the_encoder_as_the_sequential_cbm(data) -> None:
    cbm, hybrid = _pair(seed=3)
    hybrid.encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 12))
    hybrid.encoder.load_state_dict(cbm.encoder.state_dict())
    fit_cbm(cbm, data.x, data.c, data.y, mode="sequential", epochs=15)
    h = fit_hybrid(hybrid, data.x, data.c, data.y, mode="sequential", epochs=15)
    for pa, pb in zip(cbm.encoder.parameters(), hybrid.encoder.parameters()):
        assert torch.equal(pa, pb)
    assert len(h.task_loss) == 30 and h.task_loss[-1] < h.task_loss[15]


def test_residual_l2_needs_a_linear_head_and_shrinks_the_residual_weights(data) -> None:
    torch.manual_seed(0)
    bad = HybridCBM(nn.Linear(16, 12), nn.Linear(16, 3), nn.Sequential(nn.Linear(15, 4)))
    with pytest.raises(InvalidParameterError, match=r"nn\.Linear head"):
        fit_hybrid(bad, data.x, data.c, data.y, residual_l2=0.1)
    norms = []
    for penalty in (0.0, 1.0):
        torch.manual_seed(0)
        m = HybridCBM(nn.Linear(16, 12), nn.Linear(16, 8), nn.Linear(20, 4),
                      residual_activation="identity")  # fmt: skip
        fit_hybrid(m, data.x, data.c, data.y, mode="sequential", residual_l2=penalty, epochs=40)
        norms.append(float(m.head.weight.detach()[:, 12:].pow(2).mean()))
    assert norms[1] < norms[0]


def _head(wc: float, wr: float):
    def head(c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        z = wc * (c[:, 0] - 0.5) + wr * (r[:, 0] - 0.5)
        return torch.stack([-z, z], 1)

    return head


def test_bypass_share_is_one_when_only_the_residual_is_read() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=g)
    c = torch.rand(400, 2, generator=g, dtype=torch.float64)
    r = y[:, None].double() + 0.3 * torch.randn(400, 1, generator=g, dtype=torch.float64)
    res = bypass_share(_head(0.0, 1.0), c, r, y, n_boot=50)
    assert res.value == 1.0 and res.details["drop_concepts"] == 0.0
    assert res.details["concept_share"] == 0.0
    only_c = bypass_share(_head(1.0, 0.0), r.clamp(0, 1).expand(-1, 2), c[:, :1], y, n_boot=0)
    assert only_c.value == 0.0


def test_bypass_share_equals_the_drops_computed_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    n = 500
    y = torch.randint(0, 2, (n,), generator=g)
    c = y[:, None].double() + 0.8 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    r = y[:, None].double() + 0.8 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    c_train, r_train = (
        torch.zeros(10, 1, dtype=torch.float64),
        torch.ones(10, 1, dtype=torch.float64),
    )
    head = _head(1.0, 2.0)
    res = bypass_share(head, c, r, y, reference=(c_train, r_train), n_boot=100, seed=0)

    def acc(cv, rv):
        return float((head(cv, rv).argmax(1) == y).double().mean())

    full = acc(c, r)
    d_c = max(full - acc(torch.zeros_like(c), r), 0.0)
    d_r = max(full - acc(c, torch.ones_like(r)), 0.0)
    assert math.isclose(res.value, d_r / (d_c + d_r), rel_tol=1e-12)
    assert res.interval is not None and res.interval[0] <= res.value <= res.interval[1]


def test_bypass_share_undefined_warns_and_bad_reference_is_refused() -> None:
    y = torch.tensor([0, 1, 0, 1])
    c = torch.zeros(4, 1)
    with pytest.warns(UndefinedShareWarning):
        res = bypass_share(_head(0.0, 0.0), c, c, y, n_boot=0)
    assert math.isnan(res.value)
    with pytest.raises(InvalidInputError, match="widths"):
        bypass_share(_head(1.0, 1.0), c, c, y, reference=(torch.zeros(3, 2), torch.zeros(3, 1)))


def test_an_unregularised_residual_carries_the_prediction(data) -> None:
    train, test = data, make_tabular_concepts(600, seed=1, input_noise=1.0)
    torch.manual_seed(0)
    model = HybridCBM(
        nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 12)),
        nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)),
        nn.Linear(20, 4),
        residual_activation="identity",
    )
    fit_hybrid(model, train.x, train.c, train.y, mode="sequential", epochs=150)
    with torch.no_grad():
        ref = (model.concepts(train.x), model.residual_values(train.x))
        res = bypass_share(model.task, model.concepts(test.x), model.residual_values(test.x),
                           test.y, reference=ref, n_boot=100)  # fmt: skip
    assert res.interval is not None and res.interval[0] > 0.9
    assert res.details["drop_residual"] > 0.3 > res.details["drop_concepts"]
