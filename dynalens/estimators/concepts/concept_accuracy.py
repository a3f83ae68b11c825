r"""Concept accuracy, ROC-AUC (on probabilities) and macro F1, per concept and macro-averaged.

For concept j with labels :math:`c_j` and probabilities :math:`p_j`:

- accuracy :math:`= \frac1n\sum_i [\,[p_{ij} \ge t] = c_{ij}\,]` (threshold t, default 0.5);
- AUC = the Mann-Whitney statistic of :math:`p_j` (ties share ranks), i.e. scikit-learn's
  ``roc_auc_score(c_j, p_j)``; computed on the probabilities, not on thresholded labels;
- F1 = the macro mean over the classes {0, 1} of :math:`2TP/(2TP+FP+FN)`.

The summary is the macro mean over concepts whose AUC is defined (both classes present;
``details["n_valid"]``). Also reported: the exact-match ratio (all k concepts right, ECBM's
"overall concept accuracy") and, with ``groups=``, group accuracy (argmax within each
exclusive group equals the true member). Interval: percentile bootstrap over rows
(``n_boot`` replicates, stratified by ``y`` when given, seeded).

``compat="cem"`` reproduces mateoespinosa/cem ``metrics/accs.py``: its concept "AUC" is
computed on thresholded predictions (``p > 0.5``), which equals the balanced accuracy.

Reference: Koh et al. 2020, "Concept Bottleneck Models", ICML (concept accuracy);
Espinosa Zarlenga et al. 2022, "Concept Embedding Models", NeurIPS (cem code).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from dynalens._validation import check_float, check_int, check_option
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import (
    as_binary_labels,
    as_class_labels,
    as_probabilities,
)
from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts._scores import (
    auc_columns,
    bootstrap_interval,
    f1_columns,
    row_means,
    weighted_auc_columns,
    weighted_bootstrap_interval,
)

__all__ = [
    "ConceptScores",
    "UndefinedConceptWarning",
    "concept_accuracy",
    "concept_auc",
    "concept_f1",
]

SCORES = ("accuracy", "auc", "f1")
COMPAT = (None, "cem")


class UndefinedConceptWarning(UserWarning):
    """A per-concept value is undefined (NaN) and was left out of the macro mean."""


def _per_concept(
    c: torch.Tensor, p: torch.Tensor, mask: torch.Tensor | None, threshold: float, compat: Any
) -> dict[str, torch.Tensor]:
    hard = (p > threshold).to(p.dtype) if compat == "cem" else (p >= threshold).to(p.dtype)
    auc_input = hard if compat == "cem" else p
    if mask is None:
        return {
            "accuracy": (hard == c).to(p.dtype).mean(0),
            "auc": auc_columns(c, auc_input),
            "f1": f1_columns(c, hard),
        }
    out: dict[str, list[float]] = {s: [] for s in SCORES}
    for j in range(c.shape[1]):
        rows = mask[:, j]
        cj, hj, aj = c[rows, j : j + 1], hard[rows, j : j + 1], auc_input[rows, j : j + 1]
        if cj.shape[0] == 0:
            out["accuracy"].append(float("nan"))
            out["auc"].append(float("nan"))
            out["f1"].append(float("nan"))
            continue
        out["accuracy"].append(float((hj == cj).to(p.dtype).mean()))
        out["auc"].append(float(auc_columns(cj, aj)[0]))
        out["f1"].append(float(f1_columns(cj, hj)[0]))
    return {s: torch.tensor(v, dtype=p.dtype) for s, v in out.items()}


def _weighted_score(
    c: torch.Tensor, p: torch.Tensor, w: torch.Tensor, threshold: float, compat: Any, score: str
) -> torch.Tensor:
    """Per-concept ``score`` (B, k) of each bootstrap replicate given as multiplicity
    weights (B, n) (no mask): one sort per concept for all replicates; each replicate
    equals :func:`_per_concept` on its resampled rows."""
    hard = (p > threshold).to(p.dtype) if compat == "cem" else (p >= threshold).to(p.dtype)
    if score == "accuracy":
        return (w @ (hard == c).to(p.dtype)) / w.sum(1, keepdim=True)
    if score == "f1":
        return f1_columns(c, hard, w)
    return weighted_auc_columns(c, hard if compat == "cem" else p, w)


def _macro(values: torch.Tensor, valid: torch.Tensor) -> float:
    return float(values[valid].mean()) if valid.any() else float("nan")


class ConceptScores:
    """Concept accuracy / AUC / F1 with a bootstrap interval.

    Parameters
    ----------
    score : {"accuracy", "auc", "f1"}
        The summary returned as ``value``; all three are in ``details``.
    threshold : float
        Decision threshold on the probabilities for accuracy and F1 (default 0.5).
    n_boot : int
        Bootstrap replicates for the interval (0: no interval).
    seed : int
        Seed of the bootstrap.
    compat : None or "cem"
        ``"cem"``: AUC on thresholded predictions (``p > 0.5``), as the cem code does.

    Examples
    --------
    >>> ConceptScores(score="auc").estimate(c, p).value  # doctest: +SKIP
    """

    def __init__(
        self,
        score: str = "auc",
        *,
        threshold: float = 0.5,
        n_boot: int = 200,
        seed: int = 0,
        compat: str | None = None,
    ) -> None:
        self.score = score
        self.threshold = threshold
        self.n_boot = n_boot
        self.seed = seed
        self.compat = compat

    def estimate(
        self,
        c_true: Any,
        c_prob: Any,
        *,
        mask: Any = None,
        y: Any = None,
        groups: Sequence[Sequence[int]] | None = None,
        names: Sequence[str] | None = None,
    ) -> ConceptResult:
        """Score probabilities ``c_prob`` (n, k) against labels ``c_true`` (n, k).

        ``mask`` (n, k) bool marks known labels (False: missing, ignored); ``y`` (n,)
        stratifies the bootstrap; ``groups`` lists exclusive groups of concept indices."""
        score = check_option("score", self.score, SCORES)
        threshold = check_float("threshold", self.threshold, min=0.0, max=1.0)
        n_boot = check_int("n_boot", self.n_boot, min=0)
        seed = check_int("seed", self.seed)
        if self.compat not in COMPAT:
            check_option("compat", self.compat, ("cem",))
        c = as_binary_labels("c_true", c_true)
        p = as_probabilities("c_prob", c_prob, n=c.shape[0])
        if p.shape != c.shape:
            raise InvalidInputError(
                f"c_prob has shape {tuple(p.shape)} but c_true has {tuple(c.shape)}; pass "
                "one probability per concept label."
            )
        m = None
        if mask is not None:
            m = _as_mask(mask, c.shape)
        strata = None if y is None else as_class_labels("y", y, n=c.shape[0])
        return _concept_scores(
            c, p, m, strata, groups, names, score, threshold, n_boot, seed, self.compat
        )


def _concept_scores(
    c: torch.Tensor,
    p: torch.Tensor,
    mask: torch.Tensor | None,
    strata: torch.Tensor | None,
    groups: Sequence[Sequence[int]] | None,
    names: Sequence[str] | None,
    score: str,
    threshold: float,
    n_boot: int,
    seed: int,
    compat: Any,
) -> ConceptResult:
    per = _per_concept(c, p, mask, threshold, compat)
    valid = ~torch.isnan(per["auc"])
    if not valid.any():
        raise InvalidInputError(
            f"concept {score} is undefined: every concept is constant in these "
            f"{c.shape[0]} rows (AUC needs both classes of a concept). Pass more rows."
        )
    undefined = (~valid).nonzero().flatten().tolist()
    if undefined:
        label = [names[j] for j in undefined] if names else undefined
        warnings.warn(
            f"{len(undefined)} concept(s) {label[:8]} are constant in these rows: their AUC "
            "is undefined (NaN) and all their scores are left out of the macro means "
            f"({int(valid.sum())} of {c.shape[1]} concepts used).",
            UndefinedConceptWarning,
            stacklevel=3,
        )
    summaries = {s: _macro(v, valid) for s, v in per.items()}
    hard = (p > threshold) if compat == "cem" else (p >= threshold)
    details: dict[str, Any] = {
        **summaries,
        "per_concept": per,
        "n_valid": int(valid.sum()),
        "undefined": undefined,
        "exact_match": float((hard.to(c.dtype) == c).all(1).to(c.dtype).mean()),
    }
    if groups is not None:
        details["group_accuracy"] = [
            float((p[:, list(g)].argmax(1) == c[:, list(g)].argmax(1)).to(c.dtype).mean())
            for g in groups
        ]
    interval = None
    if n_boot > 0 and mask is None:
        interval = weighted_bootstrap_interval(
            lambda w: row_means(_weighted_score(c, p, w, threshold, compat, score), valid),
            c.shape[0],
            strata=strata,
            n_boot=n_boot,
            seed=seed,
        )
    elif n_boot > 0:

        def stat(rows: torch.Tensor) -> float:
            sub_mask = None if mask is None else mask[rows]
            sub = _per_concept(c[rows], p[rows], sub_mask, threshold, compat)[score]
            ok = valid & ~torch.isnan(sub)
            return _macro(sub, ok)

        interval = bootstrap_interval(stat, c.shape[0], strata=strata, n_boot=n_boot, seed=seed)
    return ConceptResult(
        value=summaries[score],
        metric=f"concept_{score}",
        per_concept=per[score],
        interval=interval,
        n=c.shape[0],
        params={"threshold": threshold, "n_boot": n_boot, "seed": seed, "compat": compat},
        details=details,
    )


def concept_accuracy(c_true: Any, c_prob: Any, **kwargs: Any) -> ConceptResult:
    """Macro concept accuracy; see :class:`ConceptScores` for the parameters."""
    return _functional("accuracy", c_true, c_prob, kwargs)


def concept_auc(c_true: Any, c_prob: Any, **kwargs: Any) -> ConceptResult:
    """Macro concept ROC-AUC on probabilities; see :class:`ConceptScores`."""
    return _functional("auc", c_true, c_prob, kwargs)


def concept_f1(c_true: Any, c_prob: Any, **kwargs: Any) -> ConceptResult:
    """Macro concept F1 (macro over {0, 1}); see :class:`ConceptScores`."""
    return _functional("f1", c_true, c_prob, kwargs)


def _functional(score: str, c_true: Any, c_prob: Any, kwargs: dict[str, Any]) -> ConceptResult:
    init = {k: kwargs.pop(k) for k in ("threshold", "n_boot", "seed", "compat") if k in kwargs}
    return ConceptScores(score, **init).estimate(c_true, c_prob, **kwargs)


def _as_mask(mask: Any, shape: torch.Size) -> torch.Tensor:
    m = torch.as_tensor(mask)
    if tuple(m.shape) != tuple(shape) or m.dtype != torch.bool:
        raise InvalidInputError(
            f"mask must be a bool array of shape {tuple(shape)} (True = label known); got "
            f"dtype {m.dtype}, shape {tuple(m.shape)}."
        )
    return m
