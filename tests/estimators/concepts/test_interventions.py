"""Intervention curves: exact head, exact random expectation vs a per-subset loop and the
Monte Carlo band, nested masks, policies, group writes, logit writes, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from dynalens.concepts import GROUPS, make_tabular_concepts, soft_concepts
from dynalens.concepts.data.factors import DEFAULT_RULE
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import InterventionCurve, intervention_curve, percentile_writes

GROUP_LIST = [list(g) for g in GROUPS.values()]


def rule_head(c: torch.Tensor) -> torch.Tensor:
    """The optimal head of the noise-free default rule, on thresholded probabilities."""
    y = DEFAULT_RULE.apply((c >= 0.5).float()).clamp(max=3)
    return torch.nn.functional.one_hot(y, 4).float() * 10


def _setup(n: int = 400, noise: float = 2.0, seed: int = 0):
    data = make_tabular_concepts(n, seed=seed)
    p = soft_concepts(data.c, signal=1.0, noise=noise, seed=seed)
    return data, p


def test_full_intervention_with_the_exact_head_is_perfect() -> None:
    data, p = _setup()
    for policy in ("random", "uncertainty", "oracle"):
        r = intervention_curve(rule_head, p, data.c, data.y, policy=policy, groups=GROUP_LIST)
        curve = r.details["curve"]
        assert curve[-1] == 1.0 and curve[0] < 0.7
        assert r.value == pytest.approx(float(curve.mean()))


def test_exact_random_expectation_matches_a_per_subset_loop() -> None:
    data, p = _setup(n=60)
    r = intervention_curve(rule_head, p, data.c, data.y, groups=GROUP_LIST, random="exact")
    members = [set(g) for g in GROUP_LIST]
    expected = []
    for j in range(5):
        accs = []
        for subset in itertools.combinations(range(4), j):
            cols = set().union(*(members[s] for s in subset)) if subset else set()
            hits = 0
            for i in range(60):  # float64 per-example loop
                row = p[i].clone()
                for col in cols:
                    row[col] = data.c[i, col].double()
                hits += int(rule_head(row[None].float()).argmax(1).item() == data.y[i].item())
            accs.append(hits / 60)
        expected.append(sum(accs) / len(accs))
    assert r.details["exact"] is True
    assert torch.allclose(r.details["curve"], torch.tensor(expected, dtype=torch.float64))


def test_exact_random_expectation_lies_in_the_monte_carlo_band() -> None:
    data, p = _setup(n=300)
    exact = intervention_curve(rule_head, p, data.c, data.y, groups=GROUP_LIST, random="exact")
    mc = intervention_curve(
        rule_head, p, data.c, data.y, groups=GROUP_LIST, random="mc", n_mc=200, seed=1
    )
    band = mc.details["band"]
    curve = exact.details["curve"]
    assert ((band[:, 0] <= curve + 1e-12) & (curve <= band[:, 1] + 1e-12)).all()
    assert torch.allclose(band[0], curve[0].expand(2), rtol=0, atol=1e-12)  # j = 0: no randomness
    assert (torch.diff(curve) >= 0).all()  # expected curve does not decrease here


def test_masks_are_nested_and_count_steps() -> None:
    data, p = _setup(n=50)
    for policy in ("uncertainty", "oracle"):
        masks = intervention_curve(rule_head, p, data.c, data.y, policy=policy).details["masks"]
        assert masks.shape == (13, 50, 12)
        for j in range(13):
            assert (masks[j].sum(1) == j).all()
        assert (masks[:-1] <= masks[1:]).all()


def test_uncertainty_policy_picks_the_least_certain_group_first() -> None:
    c = torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.tensor([[0.9, 0.45, 0.3]])  # |p - 0.5|: 0.4, 0.05, 0.2
    r = intervention_curve(lambda z: z[:, :2], p, c, [0], policy="uncertainty")
    order = [
        int((r.details["masks"][j + 1] & ~r.details["masks"][j]).nonzero()[0, 1]) for j in range(3)
    ]
    assert order == [1, 2, 0]


def test_oracle_is_above_random_and_uncertainty() -> None:
    data, p = _setup(n=400, seed=2)
    curves = {
        policy: intervention_curve(
            rule_head, p, data.c, data.y, policy=policy, groups=GROUP_LIST
        ).details["curve"]
        for policy in ("random", "uncertainty", "oracle")
    }
    assert (curves["oracle"] >= curves["random"] - 1e-12).all()
    assert (curves["oracle"] >= curves["uncertainty"] - 1e-12).all()
    assert curves["uncertainty"][1] > curves["random"][1]  # uncertainty beats chance early


def test_custom_policy_equals_the_builtin_it_reimplements() -> None:
    data, p = _setup(n=100)

    def most_uncertain(c_pred, c_true, mask):
        return 1.0 / (c_pred - 0.5 + 1e-8).abs()

    a = intervention_curve(rule_head, p, data.c, data.y, policy=most_uncertain)
    b = intervention_curve(rule_head, p, data.c, data.y, policy="uncertainty")
    assert torch.equal(a.details["masks"], b.details["masks"])
    assert torch.equal(a.details["curve"], b.details["curve"])


def test_group_intervention_writes_every_member() -> None:
    c = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    p = torch.tensor([[0.2, 0.8, 0.2, 0.8]])
    seen = []

    def head(z):
        seen.append(z.clone())
        return torch.zeros(1, 2)

    intervention_curve(head, p, c, [0], policy="uncertainty", groups=[[0, 1], [2, 3]])
    assert torch.equal(seen[1], torch.tensor([[1.0, 0.0, 0.2, 0.8]]))
    assert torch.equal(seen[2], c)


def test_logit_bottleneck_writes_plus_minus_five_or_percentiles() -> None:
    c = torch.tensor([[1.0, 0.0]] * 3)
    logits = torch.tensor([[-1.0, 1.0], [0.0, 0.5], [1.0, 2.0]])
    seen = []

    def head(z):
        seen.append(z.clone())
        return torch.zeros(3, 2)

    intervention_curve(head, logits, c, [0, 0, 0], policy="uncertainty", bottleneck="logit")
    assert torch.equal(seen[-1], torch.tensor([[5.0, -5.0]] * 3))
    off, on = percentile_writes(torch.arange(101.0)[:, None].expand(101, 2))
    assert torch.allclose(off, torch.tensor([5.0, 5.0], dtype=torch.float64))
    assert torch.allclose(on, torch.tensor([95.0, 95.0], dtype=torch.float64))
    intervention_curve(
        head, logits, c, [0, 0, 0], policy="uncertainty", bottleneck="logit", writes=(off, on)
    )
    assert torch.equal(seen[-1], torch.tensor([[95.0, 5.0]] * 3))


def test_auc_metric_and_binary_task() -> None:
    data, p = _setup(n=200)
    y = data.c[:, 0].long()  # task: circle or not

    def head(z):
        return z[:, 0]  # P(class 1)

    r = intervention_curve(
        head, p, data.c, y, metric="auc", task_output="probabilities", random="mc", n_mc=10
    )
    assert r.details["curve"][-1] == 1.0 and r.details["curve"][0] < 1.0


def test_compat_koh_reports_the_max_over_fresh_trials() -> None:
    data, p = _setup(n=300, seed=3)
    koh = intervention_curve(
        rule_head, p, data.c, data.y, groups=GROUP_LIST, compat="koh", n_trials=5
    )
    exact = intervention_curve(rule_head, p, data.c, data.y, groups=GROUP_LIST)
    trials = koh.details["trials"]
    assert trials.shape == (5, 5)
    assert torch.equal(koh.details["curve"], trials.amax(1))
    assert koh.details["curve"][0] == exact.details["curve"][0]
    assert koh.details["curve"][-1] == exact.details["curve"][-1]
    assert (koh.details["curve"] >= exact.details["curve"]).all()  # the max is optimistic
    assert (koh.details["curve"][1:-1] > exact.details["curve"][1:-1]).any()


def test_compat_koh_writes_percentiles_of_the_evaluated_logits() -> None:
    c = torch.tensor([[1.0, 0.0]] * 3)
    logits = torch.tensor([[-1.0, 1.0], [0.0, 0.5], [1.0, 2.0]])
    r = intervention_curve(
        lambda z: torch.zeros(3, 2), logits, c, [0, 0, 0], bottleneck="logit", compat="koh"
    )
    off, on = percentile_writes(logits)
    assert torch.equal(r.params["writes"][0], off) and torch.equal(r.params["writes"][1], on)


def test_entropy_policy_matches_a_per_sample_loop() -> None:
    g = torch.Generator().manual_seed(5)
    c = (torch.rand(40, 4, generator=g) < 0.5).float()
    p = torch.rand(40, 4, generator=g)
    w = torch.tensor([[0.5, -0.5], [0.0, 0.0], [3.0, -3.0], [1.0, 1.5]])

    def head(z):
        return z @ w

    r = intervention_curve(head, p, c, torch.zeros(40, dtype=torch.long), policy="entropy")
    first = (r.details["masks"][1] & ~r.details["masks"][0]).int().argmax(1)

    def entropy(z):
        q = torch.softmax(z.double() @ w.double(), 0)
        return float(-(q * q.log()).sum())

    for i in range(40):  # float64 per-sample loop over the definition
        gains = []
        for j in range(4):
            on, off = p[i].clone(), p[i].clone()
            on[j], off[j] = 1.0, 0.0
            pj = float(p[i, j])
            gains.append(entropy(p[i]) - (pj * entropy(on) + (1 - pj) * entropy(off)))
        assert int(first[i]) == max(range(4), key=lambda j: gains[j])
        assert abs(gains[1]) < 1e-12  # concept 1 does not move the head


def test_competence_lowers_the_fully_intervened_accuracy() -> None:
    data, p = _setup(n=400)
    full = []
    for q in (0.0, 0.5, 0.9, 1.0):
        r = intervention_curve(
            rule_head, p, data.c, data.y, policy="uncertainty", competence=q, seed=1
        )
        full.append(float(r.details["curve"][-1]))
    assert full == sorted(full) and full[-1] == 1.0 and full[0] < 0.2
    default = intervention_curve(rule_head, p, data.c, data.y, policy="uncertainty")
    assert default.details["curve"][-1] == 1.0


def test_bad_input_refuses() -> None:
    data, p = _setup(n=20)
    with pytest.raises(InvalidParameterError, match="competence"):
        intervention_curve(rule_head, p, data.c, data.y, competence=1.5)
    with pytest.raises(InvalidParameterError, match="compat"):
        intervention_curve(rule_head, p, data.c, data.y, compat="cem")
    with pytest.raises(InvalidParameterError, match="policy"):
        InterventionCurve("randm").estimate(rule_head, p, data.c, data.y)
    with pytest.raises(InvalidParameterError, match="disjoint"):
        intervention_curve(rule_head, p, data.c, data.y, groups=[[0, 1], [1, 2]])
    with pytest.raises(InvalidParameterError, match="indices"):
        intervention_curve(rule_head, p, data.c, data.y, groups=[[0, 12]])
    with pytest.raises(InvalidParameterError, match="metric='accuracy'"):
        intervention_curve(rule_head, p, data.c, data.y, metric="auc", random="exact")
    with pytest.raises(InvalidParameterError, match="budget"):
        intervention_curve(rule_head, p, data.c, data.y, random="exact", budget=100)
    with pytest.raises(InvalidInputError, match="one row per sample"):
        intervention_curve(lambda z: z[:3], p, data.c, data.y, policy="uncertainty")
    with pytest.raises(InvalidInputError, match="probabilities"):
        intervention_curve(rule_head, p * 3, data.c, data.y)
    with pytest.raises(InvalidInputError, match="binary"):
        intervention_curve(rule_head, p, data.c * 2, data.y)
