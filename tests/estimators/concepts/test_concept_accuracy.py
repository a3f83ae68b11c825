"""Concept accuracy / AUC / F1: ground truth, scikit-learn, the cem compat mode, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import (
    ConceptScores,
    UndefinedConceptWarning,
    concept_accuracy,
    concept_auc,
    concept_f1,
)


def _data(n: int = 600, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(n, k, generator=g) < 0.4).double()
    logits = 1.5 * (2 * c - 1) + torch.randn(n, k, generator=g, dtype=torch.float64)
    p = torch.sigmoid(logits)
    p[:50] = torch.round(p[:50] * 4) / 4  # ties
    return c, p


def test_perfect_predictions_score_one() -> None:
    c, _ = _data()
    for fn in (concept_accuracy, concept_auc, concept_f1):
        r = fn(c, c, n_boot=20)
        assert r.value == 1.0 and r.interval == (1.0, 1.0)
    assert concept_accuracy(c, c, n_boot=0).details["exact_match"] == 1.0


def test_matches_scikit_learn_per_concept() -> None:
    c, p = _data()
    r = ConceptScores("auc", n_boot=0).estimate(c, p)
    per = r.details["per_concept"]
    for j in range(c.shape[1]):
        assert per["auc"][j].item() == pytest.approx(roc_auc_score(c[:, j], p[:, j]), abs=1e-12)
        hard = (p[:, j] >= 0.5).numpy()
        assert per["f1"][j].item() == pytest.approx(
            f1_score(c[:, j], hard, average="macro"), abs=1e-12
        )
        assert per["accuracy"][j].item() == pytest.approx(float((hard == c[:, j].numpy()).mean()))
    assert r.value == pytest.approx(float(per["auc"].mean()))


def test_compat_cem_auc_is_balanced_accuracy_of_thresholded_predictions() -> None:
    c, p = _data(seed=1)
    r = concept_auc(c, p, compat="cem", n_boot=0)
    for j in range(c.shape[1]):
        bal = balanced_accuracy_score(c[:, j], (p[:, j] > 0.5).numpy())
        assert r.per_concept[j].item() == pytest.approx(bal, abs=1e-12)
    assert r.value < concept_auc(c, p, n_boot=0).value  # thresholding discards ranking


def test_independent_probabilities_give_auc_interval_around_half() -> None:
    g = torch.Generator().manual_seed(7)
    n, k = 2000, 3
    c = (torch.rand(n, k, generator=g) < 0.5).double()
    p = torch.rand(n, k, generator=g, dtype=torch.float64)
    r = concept_auc(c, p, n_boot=200, seed=0)
    n1 = c.sum(0)
    # null sd of the Mann-Whitney AUC, averaged over k independent concepts
    sd = float((((n + 1) / (12 * n1 * (n - n1))).sum()).sqrt() / k)
    assert abs(r.value - 0.5) < 4 * sd
    half_width = (r.interval[1] - r.interval[0]) / 2
    assert half_width == pytest.approx(1.96 * sd, rel=0.25)


def test_threshold_and_seed_change_the_output() -> None:
    c, p = _data()
    assert (
        concept_accuracy(c, p, threshold=0.3, n_boot=0).value
        != concept_accuracy(c, p, n_boot=0).value
    )
    a = concept_auc(c, p, n_boot=50, seed=0).interval
    b = concept_auc(c, p, n_boot=50, seed=1).interval
    assert a != b and a == concept_auc(c, p, n_boot=50, seed=0).interval


def test_mask_ignores_unknown_labels() -> None:
    c, p = _data()
    mask = torch.ones_like(c, dtype=torch.bool)
    mask[:100, 0] = False
    r = concept_auc(c, p, mask=mask, n_boot=0)
    assert r.per_concept[0].item() == pytest.approx(roc_auc_score(c[100:, 0], p[100:, 0]))
    assert r.per_concept[1].item() == pytest.approx(roc_auc_score(c[:, 1], p[:, 1]))


def test_group_accuracy_uses_argmax_within_the_group() -> None:
    c = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    p = torch.tensor([[0.4, 0.3, 0.1], [0.2, 0.1, 0.0], [0.0, 0.1, 0.9], [0.6, 0.7, 0.0]])
    r = concept_accuracy(c, p, groups=[(0, 1, 2)], n_boot=0)
    assert r.details["group_accuracy"] == [0.5]


def test_constant_concept_is_left_out_of_the_macro_mean_with_a_warning() -> None:
    c, p = _data()
    c[:, 2] = 0
    with pytest.warns(UndefinedConceptWarning, match="constant"):
        r = concept_auc(c, p, n_boot=0, names=["a", "b", "c", "d", "e"])
    assert r.details["n_valid"] == 4 and np.isnan(r.per_concept[2].item())
    assert r.value == pytest.approx(float(r.per_concept[[0, 1, 3, 4]].mean()))


def test_every_concept_constant_refuses() -> None:
    with pytest.raises(InvalidInputError, match="every concept is constant"):
        concept_auc(torch.ones(5, 2), torch.full((5, 2), 0.7))


@pytest.mark.parametrize(
    ("c", "p", "match"),
    [
        ([[0.0, 2.0]], [[0.1, 0.2]], "binary concept labels"),
        ([[0.0, float("nan")]], [[0.1, 0.2]], "NaN"),
        ([[0.0, 1.0]], [[0.1, 1.2]], r"probabilities in \[0, 1\]"),
        ([[0.0, 1.0]], [[0.1, -0.2]], "sigmoid"),
        ([[0.0, 1.0]], [[0.1, 0.2, 0.3]], "shape"),
    ],
)
def test_bad_input_refuses_with_a_fix(c: list, p: list, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        concept_auc(c, p)


def test_bad_parameters_refuse() -> None:
    c, p = _data(n=20)
    with pytest.raises(InvalidParameterError, match="score"):
        ConceptScores("aucc").estimate(c, p)
    with pytest.raises(InvalidParameterError, match="compat"):
        ConceptScores(compat="koh").estimate(c, p)
