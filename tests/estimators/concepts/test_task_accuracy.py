"""Task accuracy / AUC / F1 against scikit-learn; absent classes warn, never score 0."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts import TaskScores, task_accuracy, task_auc, task_f1


def _task(n: int = 500, t: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(t, (n,), generator=g)
    logits = torch.randn(n, t, generator=g, dtype=torch.float64)
    logits[torch.arange(n), y] += 1.0
    return y, logits


def test_matches_scikit_learn() -> None:
    y, logits = _task()
    proba = torch.softmax(logits, 1)
    assert task_accuracy(y, logits, n_boot=0).value == pytest.approx(
        float((logits.argmax(1) == y).double().mean())
    )
    assert task_auc(y, logits, n_boot=0).value == pytest.approx(
        roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert task_f1(y, logits, n_boot=0).value == pytest.approx(
        f1_score(y, logits.argmax(1), average="macro"), abs=1e-12
    )


def test_binary_probability_vector() -> None:
    y, logits = _task(t=2)
    p1 = torch.softmax(logits, 1)[:, 1]
    r = TaskScores("auc", logits=False, n_boot=0).estimate(y, p1)
    assert r.value == pytest.approx(roc_auc_score(y, p1), abs=1e-12)


def test_absent_class_warns_and_averages_over_present_classes() -> None:
    y, logits = _task(t=3)
    keep = y != 2
    with pytest.warns(UserWarning, match="never occur"):
        r = task_auc(y[keep], logits[keep], n_boot=0)
    assert 0.5 < r.value < 1.0


def test_stratified_bootstrap_interval_covers_the_value() -> None:
    y, logits = _task(n=800)
    r = task_accuracy(y, logits, n_boot=100, seed=3)
    assert r.interval[0] < r.value < r.interval[1]


def test_bad_labels_refuse() -> None:
    y, logits = _task(n=10)
    with pytest.raises(InvalidInputError, match="class indices"):
        task_accuracy(y.double() + 0.5, logits)
    with pytest.raises(InvalidInputError, match="columns"):
        task_accuracy(y + 4, logits)
    with pytest.raises(InvalidInputError, match="rows"):
        task_accuracy(y[:5], logits)


@pytest.mark.parametrize("score", ["accuracy", "auc", "f1"])
def test_weighted_bootstrap_interval_is_bit_identical_to_row_resampling(score: str) -> None:
    from dynalens.estimators.concepts._scores import bootstrap_interval
    from dynalens.estimators.concepts.task_accuracy import _scores

    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 4, (301,), generator=g)
    logits = torch.randn(301, 4, generator=g, dtype=torch.float64)
    logits[torch.arange(301), y] += 0.7
    logits = (logits * 4).round() / 4  # ties in the AUC
    r = TaskScores(score, n_boot=150, seed=3).estimate(y, logits)
    proba = torch.softmax(logits, 1)
    ref = bootstrap_interval(
        lambda rows: _scores(y[rows], proba[rows])[score], 301, strata=y, n_boot=150, seed=3
    )
    assert r.interval == ref  # exact float equality
