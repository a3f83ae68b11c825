"""Sparsity counts: exact counts for heads with known zeros, NCC = 1 for one-hot
contributions, NCC = NEC at full coverage, PyC's functions where installed, bad input."""

from __future__ import annotations

import pickle

import pytest
import torch

from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import (
    ConceptSparsity,
    activation_sparsity,
    number_of_contributing_concepts,
    number_of_effective_concepts,
)


def _head_using(k_used: int, classes: int = 4, k: int = 10, seed: int = 0) -> torch.Tensor:
    """A head whose every class reads exactly ``k_used`` of the k concepts."""
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(classes, k, dtype=torch.float64)
    for r in range(classes):
        cols = torch.randperm(k, generator=g)[:k_used]
        w[r, cols] = torch.randn(k_used, generator=g, dtype=torch.float64).abs() + 0.1
    return w


@pytest.mark.parametrize("k_used", [1, 3, 7])
def test_a_head_using_exactly_k_concepts_counts_k(k_used: int) -> None:
    w = _head_using(k_used)
    r = number_of_effective_concepts(w)
    assert r.value == k_used and r.per_concept.tolist() == [k_used] * 4
    assert r.details["nonzero_fraction"] == k_used / 10
    act = torch.rand(50, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert number_of_contributing_concepts(w, act + 0.1, coverage=1.0).value == k_used


def test_threshold_and_groups_change_the_count() -> None:
    w = torch.tensor([[1.0, 0.0, -0.5], [0.0, 0.3, 0.0]])
    assert number_of_effective_concepts(w).value == 1.5
    assert number_of_effective_concepts(w, threshold=0.4).value == 1.0
    # columns 1 and 2 form one categorical concept: class 0 reads 2 concepts, class 1 one
    assert number_of_effective_concepts(w, groups=[[1, 2]]).value == 1.5
    assert number_of_effective_concepts(w, groups=[[0, 2]]).value == 1.0
    assert number_of_effective_concepts(w, groups=[[0, 1, 2]]).value == 1.0


def test_one_hot_contributions_need_one_concept() -> None:
    w = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    act = torch.nn.functional.one_hot(torch.arange(40) % 6, 6).double() * 2.0
    r = number_of_contributing_concepts(w, act, n_boot=50)
    assert r.value == 1.0 and r.interval == (1.0, 1.0)
    zero = number_of_contributing_concepts(w, torch.zeros(5, 6), n_boot=0)
    assert zero.value == 0.0  # a zero total needs no concept


def test_coverage_and_predicted_class_change_ncc() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 8, generator=g, dtype=torch.float64)
    act = torch.randn(200, 8, generator=g, dtype=torch.float64)
    low = number_of_contributing_concepts(w, act, coverage=0.5, n_boot=0).value
    high = number_of_contributing_concepts(w, act, coverage=0.95, n_boot=0).value
    assert low < high <= 8
    assert number_of_contributing_concepts(w, act, coverage=1.0, n_boot=0).value == 8
    pred = number_of_contributing_concepts(w, act, predicted_class_only=True, n_boot=0)
    assert pred.value != high


@pytest.mark.slow  # importing torch_concepts takes ~20 s (Lightning)
def test_equals_pyc_where_installed() -> None:
    functional = pytest.importorskip("torch_concepts.nn.functional")
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 9, generator=g, dtype=torch.float64)
    w[w.abs() < 0.5] = 0.0
    act = torch.randn(300, 9, generator=g, dtype=torch.float64)
    assert number_of_effective_concepts(w).value == functional.number_of_effective_concepts(w)
    groups, cards = [[0, 1, 2], [3, 4], [5], [6], [7, 8]], [3, 2, 1, 1, 2]
    for cov in (0.5, 0.9, 1.0):
        for pred in (False, True):
            for grp, card in ((None, None), (groups, cards)):
                ours = number_of_contributing_concepts(
                    w, act, coverage=cov, predicted_class_only=pred, groups=grp, n_boot=0
                ).value
                ref = functional.number_of_contributing_concepts(
                    w, act, coverage=cov, predicted_class_only=pred, cardinalities=card
                )
                assert ours == pytest.approx(ref, abs=1e-6)  # PyC averages in float32
    ours = number_of_effective_concepts(w, groups=groups).value
    assert ours == functional.number_of_effective_concepts(w, cardinalities=cards)


def test_activation_sparsity_extremes() -> None:
    one_hot = torch.eye(5, dtype=torch.float64) * 30
    flat = torch.ones(4, 5, dtype=torch.float64)
    r1, r0 = activation_sparsity(one_hot), activation_sparsity(flat)
    assert r1.value == pytest.approx(1.0) and r0.value == pytest.approx(0.0, abs=1e-12)
    assert r0.details["effective_number"] == pytest.approx(5.0)
    assert r1.details["hardness"] == pytest.approx(1.0) and r1.details[
        "effective_number"
    ] == pytest.approx(1.0, abs=1e-9)


def test_bad_input_refuses() -> None:
    w = torch.ones(2, 3)
    with pytest.raises(InvalidInputError, match="concept columns"):
        ConceptSparsity().estimate(w, torch.ones(4, 2))
    with pytest.raises(InvalidParameterError, match="disjoint"):
        number_of_effective_concepts(w, groups=[[0, 1], [1, 2]])
    with pytest.raises(InvalidParameterError):
        number_of_effective_concepts(w, threshold=-1.0)


def test_activation_stats_are_optional() -> None:
    w = torch.ones(2, 3, dtype=torch.float64)
    act = torch.rand(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with_stats = ConceptSparsity(n_boot=0).estimate(w, act)
    assert "hoyer" in with_stats.details
    assert "hoyer" not in number_of_contributing_concepts(w, act, n_boot=0).details
    assert "hoyer" in number_of_contributing_concepts(w, act, activation_stats=True).details


def test_fast_nec_path_equals_the_checked_path_and_still_refuses_nan() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 12, generator=g)
    w[w.abs() < 0.5] = 0.0
    fast = number_of_effective_concepts(w, threshold=0.1)  # CPU float32 tensor: fast path
    slow = number_of_effective_concepts(w.numpy().tolist(), threshold=0.1)  # a list: checked
    assert fast.value == slow.value
    assert fast.details["nonzero_fraction"] == slow.details["nonzero_fraction"]
    assert torch.equal(fast.per_concept, slow.per_concept)
    assert fast.per_concept.dtype == torch.float64
    assert torch.equal(fast.details["concepts_used"], slow.details["concepts_used"])
    head = torch.nn.Linear(12, 5)  # requires grad: still counted, the model untouched
    assert number_of_effective_concepts(head.weight).value == 12.0
    for bad in (float("nan"), float("inf")):
        w2 = w.clone()
        w2[2, 3] = bad
        with pytest.raises(InvalidInputError, match="row 2, column 3"):
            number_of_effective_concepts(w2)


def test_lean_nec_result_equals_the_estimator_result() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 9, generator=g, dtype=torch.float64)
    w[w.abs() < 0.7] = 0.0
    for threshold in (0.0, 0.9):
        lean = number_of_effective_concepts(w, threshold=threshold)
        full = ConceptSparsity(threshold=threshold).estimate(w)
        assert (lean.value, lean.metric, lean.n, lean.interval) == (
            full.value,
            full.metric,
            full.n,
            full.interval,
        )
        assert type(lean.value) is float and dict(lean.params) == dict(full.params)
        assert torch.equal(lean.per_concept, full.per_concept)
        assert set(lean.details) == set(full.details)
        assert dict(pickle.loads(pickle.dumps(lean)).details).keys() == full.details.keys()
        for key in full.details:
            assert torch.equal(
                torch.as_tensor(lean.details[key]), torch.as_tensor(full.details[key])
            )
    with pytest.raises(InvalidParameterError, match="threshold"):
        number_of_effective_concepts(w, threshold=-1.0)
    with pytest.raises(InvalidParameterError, match="threshold"):
        number_of_effective_concepts(w, threshold="0")
