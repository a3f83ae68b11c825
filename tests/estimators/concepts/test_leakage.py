"""Leakage: a hidden concept opens a concept -> task gap, hard concepts close it, pure
soft concepts show none; inter-concept leakage sits where the leak goes; bad input."""

from __future__ import annotations

import pytest
import torch

from dynalens.concepts import make_tabular_concepts, soft_concepts
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts import (
    concept_task_leakage,
    inter_concept_leakage,
    oracle_impurity_score,
)

COLOUR = ("red", "green", "blue")  # hiding one colour alone would not hide it: the
# other two members of the exclusive group reveal it


def _hidden_colour(n: int = 2000, seed: int = 0):
    data = make_tabular_concepts(n, hidden=COLOUR, seed=seed)
    return data, data.c_full[:, 3:4]  # the hidden "red", which the rule reads


def test_hidden_concept_opens_a_gap_whose_interval_excludes_zero() -> None:
    data, red = _hidden_colour()
    gaps = []
    for leak in (0.0, 0.5, 1.0):
        soft = soft_concepts(data.c, signal=2.0, leak=leak, leak_source=red, noise=0.5, seed=1)
        r = concept_task_leakage(soft, data.c, data.y, n_seeds=3, n_boot=100)
        gaps.append(r.value)
        if leak == 0.0:
            assert r.interval[0] < 0.0 < r.interval[1]  # pure: no gap
        else:
            assert r.interval[0] > 0.05
            assert abs(r.details["gap_hard"]) < 0.02  # hard concepts do not carry it
        assert r.seed_spread["sd"] < 0.03
    assert gaps == sorted(gaps)


def test_exact_hard_concepts_have_zero_gap() -> None:
    data, _ = _hidden_colour(n=800)
    soft = soft_concepts(data.c, signal=3.0, noise=0.0)  # thresholds back to c exactly
    r = concept_task_leakage(soft, data.c, data.y, n_seeds=1, n_boot=0)
    assert r.details["gap_hard"] == 0.0
    assert r.details["auc_true"] < 0.9  # the hidden colour limits every probe


def test_gap_matches_probe_aucs_and_seed_changes_the_split() -> None:
    data, red = _hidden_colour(n=1000)
    soft = soft_concepts(data.c, leak=1.0, leak_source=red, seed=2)
    a = concept_task_leakage(soft, data.c, data.y, n_seeds=1, n_boot=0, seed=0)
    b = concept_task_leakage(soft, data.c, data.y, n_seeds=1, n_boot=0, seed=1)
    assert a.value == pytest.approx(a.details["auc_soft"] - a.details["auc_true"], abs=1e-15)
    assert a.value != b.value


def test_inter_concept_leakage_is_the_positive_part_of_purity_minus_oracle() -> None:
    data = make_tabular_concepts(1500, seed=0)
    soft = soft_concepts(data.c, signal=2.0, leak=1.5, noise=0.5, seed=1)
    r = inter_concept_leakage(soft, data.c, n_seeds=1, n_boot=0)
    ois = oracle_impurity_score(soft, data.c, n_seeds=1, n_boot=0)
    expected = (ois.details["purity"] - ois.details["oracle"]).clamp_min(0).fill_diagonal_(0)
    assert torch.equal(r.per_concept, expected)
    assert r.value == float(expected.max()) and r.details["ois"] == ois.value
    pure = inter_concept_leakage(
        soft_concepts(data.c, signal=2.0, noise=0.5, seed=1), data.c, n_seeds=1, n_boot=0
    )
    assert pure.value < r.value


def test_too_few_samples_of_a_class_refuses() -> None:
    data, _ = _hidden_colour(n=400)
    y = data.y.clone()
    y[:] = torch.where(y == 3, 2, y)
    y[0] = 3  # a single sample of class 3
    soft = soft_concepts(data.c)
    with pytest.raises(InvalidInputError, match="class 3 has 1 sample"):
        concept_task_leakage(soft, data.c, y)
    with pytest.raises(InvalidInputError, match="at least two classes"):
        concept_task_leakage(soft, data.c, torch.zeros(400, dtype=torch.long))


def test_bad_input_refuses() -> None:
    data, _ = _hidden_colour(n=200)
    soft = soft_concepts(data.c)
    with pytest.raises(InvalidInputError, match="class indices"):
        concept_task_leakage(soft, data.c, data.y.double() - 0.5)
    with pytest.raises(InvalidInputError, match="NaN"):
        concept_task_leakage(soft * float("nan"), data.c, data.y)
    with pytest.raises(InvalidInputError, match="rows"):
        concept_task_leakage(soft[:100], data.c, data.y)
