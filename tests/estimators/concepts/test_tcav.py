"""TCAV: exact directional derivatives, sign conventions, significance, corrections,
reusable CAVs and captum as a peer."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dynalens.errors import InvalidInputError, SiteNotFoundError
from dynalens.estimators.concepts._multitest import adjust_pvalues
from dynalens.estimators.concepts.cav import CAV, train_cav
from dynalens.estimators.concepts.tcav import (
    TCAV,
    directional_derivatives,
    tcav,
    tcav_scores,
)

D = 5


class QuadraticHead(nn.Module):
    """logit_t(a) = w_t·a + ½ aᵀA_t a on the output a of ``feat``: a known gradient."""

    def __init__(self, w: torch.Tensor, a: torch.Tensor) -> None:
        super().__init__()
        self.feat = nn.Linear(D, D).double()
        self.w = w  # (T, D)
        self.a = a  # (T, D, D), symmetric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.feat(x)
        return h @ self.w.T + 0.5 * torch.einsum("nd,tde,ne->nt", h, self.a, h)


def _quadratic(seed: int = 0, t: int = 3) -> QuadraticHead:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(t, D, D, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    return QuadraticHead(
        torch.randn(t, D, generator=g, dtype=torch.float64), m + m.transpose(1, 2)
    ).eval()


def test_directional_derivatives_equal_the_closed_form_gradient() -> None:
    model = _quadratic()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, D, generator=g, dtype=torch.float64)
    v = torch.randn(3, D, generator=g, dtype=torch.float64)
    s = directional_derivatives(model, x, "feat", v, 2, batch_size=10)
    with torch.no_grad():
        h = model.feat(x)
    exact = torch.empty(64, 3, dtype=torch.float64)
    for i in range(64):  # float64 loop: ∇_a z_2 = w_2 + A_2 a
        grad = model.w[2] + model.a[2] @ h[i]
        for j in range(3):
            exact[i, j] = grad @ v[j]
    torch.testing.assert_close(s, exact, rtol=1e-12, atol=1e-12)
    share = [sum(float(exact[i, j]) > 0 for i in range(64)) / 64 for j in range(3)]
    assert tcav_scores(s).tolist() == share


def test_linear_logit_and_its_own_direction_score_one() -> None:
    model = _quadratic()
    model.a = torch.zeros_like(model.a)  # logit_t = w_t · a
    x = torch.randn(30, D, dtype=torch.float64)
    w = model.w[1][None]
    assert tcav_scores(directional_derivatives(model, x, "feat", w, 1)).tolist() == [1.0]
    assert tcav_scores(directional_derivatives(model, x, "feat", -w, 1)).tolist() == [0.0]


def test_loss_sign_equals_logit_sign_when_only_the_target_logit_depends_on_the_layer() -> None:
    model = _quadratic(t=3)
    model.w = model.w * torch.tensor([0.0, 1.0, 0.0])[:, None]
    model.a = model.a * torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    g = torch.Generator().manual_seed(2)
    x, v = (
        torch.randn(80, D, generator=g, dtype=torch.float64),
        torch.randn(6, D, generator=g, dtype=torch.float64),
    )
    pos = tcav_scores(directional_derivatives(model, x, "feat", v, 1, sign="logit_pos"))
    neg = tcav_scores(directional_derivatives(model, x, "feat", v, 1, sign="loss_neg"), "loss_neg")
    assert torch.equal(pos, neg)
    # every logit depends on the layer: ∇CE mixes them and the counts differ
    full = _quadratic(seed=3, t=3)
    pos = tcav_scores(directional_derivatives(full, x, "feat", v, 1, sign="logit_pos"))
    neg = tcav_scores(directional_derivatives(full, x, "feat", v, 1, sign="loss_neg"), "loss_neg")
    assert not torch.equal(pos, neg)


def _mlp_task(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(150, D, generator=g)
    pool = torch.randn(800, D, generator=g)
    # inputs moved along the direction that raises logit 1 most (the input gradient at 0)
    x0 = torch.zeros(1, D, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x0)[0, 1] - model(x0)[0].mean(), x0)
    concept = torch.randn(60, D, generator=g) + 2.5 * grad[0] / grad.norm()
    return model, x, pool, concept


def test_a_used_concept_is_significant_and_random_concepts_are_not() -> None:
    model, x, pool, concept = _mlp_task()
    g = torch.Generator().manual_seed(5)
    randoms = {f"random{i}": torch.randn(60, D, generator=g) for i in range(6)}
    report = tcav(model, x, 1, {"used": concept, **randoms}, pool, layers="0", n_runs=10)
    assert report.significant() == [("used", "0")]
    used = report["used", "0"]
    assert used.value > 0.9 and used.interval is not None and used.interval[0] > 0.8
    assert not used.details["low_accuracy"]
    assert all(report[f"random{i}", "0"].details["low_accuracy"] for i in range(6))
    assert len(report.table()) == 7


def test_random_concepts_false_positive_rate_is_near_alpha() -> None:
    """Random-vs-random concepts: uncorrected p-values are (close to) uniform, so about
    alpha of them fall below alpha; Bonferroni keeps the family-wise rate below alpha."""
    model, x, pool, _ = _mlp_task(seed=1)
    g = torch.Generator().manual_seed(9)
    randoms = {f"r{i}": pool[torch.randperm(800, generator=g)[:40]] for i in range(20)}
    est = TCAV(model, "0", n_runs=8, correction="none", n_random=40).fit(randoms, pool)
    p = torch.tensor([r.details["p_value"] for r in est.estimate(x, 1).results.values()])
    assert (p <= 0.05).sum() <= 4  # 20 tests at alpha 0.05: expected 1
    assert 0.25 < float(p.mean()) < 0.75  # uniform: mean 0.5
    adj = adjust_pvalues(p, "bonferroni")
    assert int((adj <= 0.05).sum()) == 0


def test_corrections_match_their_definitions_and_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    p = torch.tensor([0.01, 0.04, 0.03, 0.2, float("nan"), 0.005], dtype=torch.float64)
    valid = p[~p.isnan()]
    bh = adjust_pvalues(p, "bh")
    expected = torch.tensor(stats.false_discovery_control(valid.numpy()))
    torch.testing.assert_close(bh[~p.isnan()], expected)
    assert torch.isnan(bh[4])
    torch.testing.assert_close(
        adjust_pvalues(p, "holm")[~p.isnan()],
        torch.tensor([0.04, 0.09, 0.09, 0.2, 0.025], dtype=torch.float64),
    )
    torch.testing.assert_close(
        adjust_pvalues(p, "bonferroni")[~p.isnan()],
        torch.tensor([0.05, 0.2, 0.15, 1.0, 0.025], dtype=torch.float64),
    )


def test_each_parameter_changes_the_result() -> None:
    model, x, pool, concept = _mlp_task(seed=2)
    concepts = {"used": concept, "other": pool[:60]}
    base = TCAV(model, "0", n_runs=6).fit(concepts, pool[60:]).estimate(x, 1)
    for kw in ({"seed": 1}, {"method": "svm", "C": 0.1}, {"n_random": 30}):
        other = TCAV(model, "0", n_runs=6, **kw).fit(concepts, pool[60:]).estimate(x, 1)
        assert not torch.equal(other["other", "0"].per_concept, base["other", "0"].per_concept)
    holm = (
        TCAV(model, "0", n_runs=6, correction="bonferroni").fit(concepts, pool[60:]).estimate(x, 1)
    )
    assert holm["other", "0"].details["p_adjusted"] != base["other", "0"].details["p_adjusted"]
    student = TCAV(model, "0", n_runs=6, test="student").fit(concepts, pool[60:]).estimate(x, 1)
    assert student["other", "0"].details["p_value"] != base["other", "0"].details["p_value"]
    tf = TCAV(model, "0", n_runs=6, compat="tf_tcav").fit(concepts, pool[60:])
    assert tf.settings_["sign"] == "loss_neg" and tf.cavs_["0"]["used"][0].method == "sgd"


def test_cavs_are_reusable_and_refuse_another_layer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, x, pool, concept = _mlp_task()
    est = TCAV(model, ["0", "2"], n_runs=3).fit({"used": concept}, pool)
    cav = est.cavs_["0"]["used"][0]
    cav.save(tmp_path / "cav.json")
    back = CAV.load(tmp_path / "cav.json")
    assert torch.equal(back.vector, cav.vector) and back.layer == "0"
    s1 = directional_derivatives(model, x, "0", [cav], 1)
    s2 = directional_derivatives(model, x, "0", [back], 1)
    torch.testing.assert_close(s1, s2)
    with pytest.raises(InvalidInputError, match="trained on layer '0' but is applied to layer '2'"):
        directional_derivatives(model, x, "2", [back], 1)
    with pytest.raises(InvalidInputError, match="trained on layer"):
        back.margin(torch.zeros(3, 16), layer="2")
    # the same CAVs serve another target without retraining
    assert est.estimate(x, 0)["used", "0"].value != est.estimate(x, 1)["used", "0"].value


def test_margins_are_signed_distances() -> None:
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(40, 3, generator=g) + torch.tensor([3.0, 0, 0])
    cav = train_cav(pos, torch.randn(40, 3, generator=g), layer="l", C=10.0)
    a = torch.randn(7, 3, generator=g, dtype=torch.float64)
    expected = (a @ cav.vector + cav.intercept) / cav.vector.norm()
    torch.testing.assert_close(cav.margin(a), expected)
    assert (
        cav.accuracy > 0.9
        and cav.margin_stats["concept_mean"] > 0 > cav.margin_stats["negative_mean"]
    )


def test_bad_input_is_refused_with_a_reason() -> None:
    model, x, pool, concept = _mlp_task()
    with pytest.raises(SiteNotFoundError, match="Layers: 0, 1, 2"):
        tcav(model, x, 1, {"c": concept}, pool, layers="O", n_runs=2)
    with pytest.raises(InvalidInputError, match="at least 120 random inputs"):
        tcav(model, x, 1, {"c": concept}, pool[:100], layers="0", n_runs=2)
    model.train()
    with pytest.raises(InvalidInputError, match=r"model\.eval"):
        tcav(model, x, 1, {"c": concept}, pool, layers="0", n_runs=2)
    model.eval()
    with pytest.warns(UserWarning, match="no p-values"):
        report = tcav(model, x, 1, {"c": concept}, pool, layers="0", n_runs=1)
    assert report.significant() == [] and report["c", "0"].interval is None
    with pytest.raises(InvalidInputError, match="at least 2 concept examples"):
        train_cav(concept[:1], pool, layer="0")


def test_equals_captum_tcav_on_the_same_cavs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("captum")
    from captum.concept import TCAV as CaptumTCAV
    from captum.concept import Classifier, Concept

    model, x, pool, concept = _mlp_task()
    cavs = TCAV(model, "0", n_runs=2, compat="captum").fit({"c": concept}, pool).cavs_["0"]["c"]

    class Fixed(Classifier):
        def __init__(self) -> None:
            self.i = 0

        def train_and_eval(self, dataloader, **kwargs):  # type: ignore[no-untyped-def]
            return {"accs": torch.tensor(1.0)}

        def weights(self) -> torch.Tensor:  # rows in class order: concept id 0, random id 1
            v = cavs[self.i].vector.float()
            self.i += 1
            return torch.stack([v, -v])

        def classes(self) -> list[int]:
            return [0, 1]

    def dataset(t: torch.Tensor) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(t),
            batch_size=64,
            collate_fn=lambda b: torch.stack([r[0] for r in b]),
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = CaptumTCAV(model, ["0"], classifier=Fixed(), save_path=str(tmp_path))
        sets = [
            [Concept(0, "c", dataset(concept)), Concept(1, f"r{r}", dataset(pool[:60]))]
            for r in range(2)
        ]
        scores = [peer.interpret(x, [s], target=1)[f"0-{s[1].id}"]["0"] for s in sets[:1]]
    ours = directional_derivatives(model, x, "0", cavs[:1], 1, unit=False)
    assert float(scores[0]["sign_count"][0]) == float(tcav_scores(ours)[0])
    torch.testing.assert_close(
        float(scores[0]["magnitude"][0]), float(ours.mean()), rtol=1e-5, atol=1e-6
    )
    assert float(scores[0]["sign_count"][1]) == float(tcav_scores(-ours)[0])
