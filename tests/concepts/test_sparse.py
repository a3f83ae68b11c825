"""Sparse CBMs: the bottleneck losses against their formulas, k-sparse Gumbel top-k, L1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynalens.concepts import make_tabular_concepts
from dynalens.concepts.models import (
    SparseCBM,
    contrastive_loss,
    fit_sparse_cbm,
    gumbel_loss,
    gumbel_topk_mask,
    l1_loss,
)
from dynalens.errors import InvalidParameterError
from dynalens.estimators.concepts import intervention_curve


def test_gumbel_loss_equals_its_formula_with_the_same_noise() -> None:
    s = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = gumbel_loss(s, tau=0.5, generator=torch.Generator().manual_seed(3))
    u = torch.rand(6, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z = (s - torch.log(-torch.log(u))) / 0.5
    want = 0.0
    for dim in (0, 1):
        p = torch.exp(z) / torch.exp(z).sum(dim, keepdim=True)
        want += -torch.log(p).mean() / 2
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_contrastive_loss_is_clips_symmetric_cross_entropy() -> None:
    s = torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.arange(5)
    ce = nn.functional.cross_entropy
    want = (ce(s, labels) + ce(s.T, labels)) / 2
    torch.testing.assert_close(contrastive_loss(s), want, rtol=1e-12, atol=1e-12)


def test_l1_loss_is_lambda_times_sum_abs_over_k() -> None:
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    assert float(l1_loss(w, 0.1)) == pytest.approx(0.1 * 3.5 / 2)


def test_gumbel_topk_keeps_exactly_k_and_passes_gradients() -> None:
    s = torch.randn(20, 9, generator=torch.Generator().manual_seed(2), requires_grad=True)
    for k in (1, 3, 9):
        mask = gumbel_topk_mask(s, k, tau=0.5, generator=torch.Generator().manual_seed(k))
        assert torch.equal(mask.detach().sum(1), torch.full((20,), float(k)))
        assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    (mask * torch.arange(9.0)).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    plain = gumbel_topk_mask(s.detach(), 3, noise=False)
    assert torch.equal(plain.nonzero()[:, 1].view(20, 3).sort(1).values,
                       s.detach().topk(3, 1).indices.sort(1).values)  # fmt: skip
    with pytest.raises(InvalidParameterError, match="k"):
        gumbel_topk_mask(s, 10)


def _data():
    d = make_tabular_concepts(400, seed=0, input_noise=1.0)
    torch.manual_seed(0)
    return d, nn.Linear(16, 12)


def test_active_k_bottleneck_has_k_nonzero_concepts_per_sample() -> None:
    d, backbone = _data()
    model = SparseCBM(backbone, 12, 4, active=3, tau=0.5)
    fit_sparse_cbm(model, d.x, d.y, loss="gumbel", epochs=20)
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            c = model.concepts(d.x)
        assert ((c != 0).sum(1) == 3).all()


def test_l1_path_shrinks_the_bottleneck_weights() -> None:
    d, _ = _data()
    norms = []
    for lam in (0.0, 1.0, 10.0):
        torch.manual_seed(0)
        model = SparseCBM(nn.Linear(16, 12), 12, 4)
        fit_sparse_cbm(model, d.x, d.y, loss="l1", l1_lambda=lam, epochs=60)
        norms.append(float(model.cbl.weight.detach().abs().sum()))
    assert norms[0] > norms[1] > norms[2]


@pytest.mark.parametrize("loss", ["gumbel", "contrastive"])
def test_sparse_model_trains_and_intervenes_through_the_engine(loss) -> None:
    d, backbone = _data()
    model = SparseCBM(backbone, 12, 4)
    h = fit_sparse_cbm(model, d.x, d.y, loss=loss, epochs=40)
    assert h.task_loss[-1] < h.task_loss[0]
    with torch.no_grad():
        c = model.concepts(d.x)
    writes = (c.min(0).values.double(), c.max(0).values.double())
    res = intervention_curve(model.concept_task(d.x), c, d.c, d.y, bottleneck="logit",
                             writes=writes, policy="uncertainty")  # fmt: skip
    with torch.no_grad():
        a0 = float((model.head(c).argmax(1) == d.y).double().mean())
    assert float(res.details["curve"][0]) == a0
