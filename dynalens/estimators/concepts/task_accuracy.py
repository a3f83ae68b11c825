r"""Task accuracy, ROC-AUC and macro F1 of a concept model's class outputs.

Outputs are (n, T) logits (``logits=True``, softmax applied for the AUC) or class
probabilities, or for T = 2 an (n,) probability of class 1. accuracy = mean
:math:`[\arg\max_t o_{it} = y_i]`; AUC = macro one-vs-rest ROC-AUC (T = 2: the AUC of
class 1), as scikit-learn's ``roc_auc_score(y, proba, multi_class="ovr")``; F1 = macro over
the classes present in ``y`` or predicted. Classes absent from ``y`` are left out of the
AUC with a warning, never scored 0 (cem's task AUC turns any error into 0.0). Interval:
percentile bootstrap over rows stratified by ``y``, computed for all replicates at once
from multiplicity weights (one sort per class for the AUC,
:func:`~._scores.weighted_macro_ovr_auc`; weighted counts for accuracy and F1): every
replicate equals the score of its resampled rows bit for bit (counts are exact integers
in float64, and the F1 mean adds the classes in the same order), so the interval is the
row-resampling one.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from dynalens._validation import check_bool, check_int, check_option
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import as_class_labels, as_matrix
from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts._scores import (
    macro_ovr_auc,
    weighted_bootstrap_interval,
    weighted_macro_ovr_auc,
)

__all__ = ["TaskScores", "task_accuracy", "task_auc", "task_f1"]

SCORES = ("accuracy", "auc", "f1")


def class_probabilities(output: Any, *, logits: bool, n: int | None = None) -> torch.Tensor:
    """(n, T) class probabilities from logits, probabilities, or an (n,) P(class 1)."""
    o = as_matrix("output", output, n=n)
    if o.shape[1] == 1:
        if logits:
            o = torch.sigmoid(o)
        if ((o < 0) | (o > 1)).any():
            raise InvalidInputError(
                "a one-column task output is read as P(class 1) and must lie in [0, 1]; "
                "pass logits=True for logits."
            )
        return torch.cat([1 - o, o], 1)
    if logits:
        return torch.softmax(o, 1)
    if ((o < 0) | (o > 1)).any():
        raise InvalidInputError(
            "task output has values outside [0, 1] but logits=False; pass logits=True."
        )
    return o


def _scores(y: torch.Tensor, proba: torch.Tensor) -> dict[str, float]:
    pred = proba.argmax(1)
    t = proba.shape[1]
    f1s = []
    for k in range(t):
        tp = float(((pred == k) & (y == k)).sum())
        fp = float(((pred == k) & (y != k)).sum())
        fn = float(((pred != k) & (y == k)).sum())
        if tp + fp + fn > 0:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": float((pred == y).to(torch.float64).mean()),
        "auc": macro_ovr_auc(y, proba),
        "f1": sum(f1s) / len(f1s),
    }


def _weighted_scores(
    score: str, y: torch.Tensor, proba: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """:func:`_scores`' ``score`` for each replicate given as multiplicity weights (B, n)."""
    if score == "auc":
        return weighted_macro_ovr_auc(y, proba, w)
    pred = proba.argmax(1)
    if score == "accuracy":
        return (w @ (pred == y).to(torch.float64)) / w.sum(1)
    total = torch.zeros(w.shape[0], dtype=torch.float64)
    count = torch.zeros(w.shape[0], dtype=torch.float64)
    for k in range(proba.shape[1]):  # same class order as _scores: same float sums
        tp = w @ ((pred == k) & (y == k)).to(torch.float64)
        fp = w @ ((pred == k) & (y != k)).to(torch.float64)
        fn = w @ ((pred != k) & (y == k)).to(torch.float64)
        den = 2 * tp + fp + fn
        valid = tp + fp + fn > 0
        total = total + torch.where(valid, 2 * tp / den.clamp_min(1.0), 0.0)
        count = count + valid.to(torch.float64)
    return total / count


class TaskScores:
    """Task accuracy / AUC / F1 with a stratified bootstrap interval.

    Parameters
    ----------
    score : {"accuracy", "auc", "f1"}
    logits : bool
        Whether the outputs are logits (default) or probabilities.
    n_boot, seed : int
        Bootstrap replicates (0: none) and their seed.
    """

    def __init__(
        self, score: str = "accuracy", *, logits: bool = True, n_boot: int = 200, seed: int = 0
    ) -> None:
        self.score = score
        self.logits = logits
        self.n_boot = n_boot
        self.seed = seed

    def estimate(self, y: Any, output: Any) -> ConceptResult:
        """Score task outputs (n, T) or (n,) against class labels ``y`` (n,)."""
        score = check_option("score", self.score, SCORES)
        logits = check_bool("logits", self.logits)
        n_boot = check_int("n_boot", self.n_boot, min=0)
        seed = check_int("seed", self.seed)
        labels = as_class_labels("y", y)
        proba = class_probabilities(output, logits=logits, n=labels.shape[0])
        if int(labels.max()) >= proba.shape[1]:
            raise InvalidInputError(
                f"y holds class {int(labels.max())} but the output has {proba.shape[1]} "
                "columns; pass one column per class."
            )
        present = torch.bincount(labels, minlength=proba.shape[1]) > 0
        if score == "auc" and not present.all():
            absent = (~present).nonzero().flatten().tolist()
            warnings.warn(
                f"classes {absent} never occur in y: the task AUC is the one-vs-rest mean "
                "over the present classes only.",
                UserWarning,
                stacklevel=2,
            )
        values = _scores(labels, proba)
        interval = None
        if n_boot > 0:
            interval = weighted_bootstrap_interval(
                lambda w: _weighted_scores(score, labels, proba, w),
                labels.shape[0],
                strata=labels,
                n_boot=n_boot,
                seed=seed,
            )
        return ConceptResult(
            value=values[score],
            metric=f"task_{score}",
            interval=interval,
            n=labels.shape[0],
            params={"logits": logits, "n_boot": n_boot, "seed": seed},
            details=values,
        )


def task_accuracy(y: Any, output: Any, **kwargs: Any) -> ConceptResult:
    """Task accuracy; see :class:`TaskScores` for the keyword parameters."""
    return TaskScores("accuracy", **kwargs).estimate(y, output)


def task_auc(y: Any, output: Any, **kwargs: Any) -> ConceptResult:
    """Macro one-vs-rest task ROC-AUC; see :class:`TaskScores`."""
    return TaskScores("auc", **kwargs).estimate(y, output)


def task_f1(y: Any, output: Any, **kwargs: Any) -> ConceptResult:
    """Macro task F1; see :class:`TaskScores`."""
    return TaskScores("f1", **kwargs).estimate(y, output)
