r"""Leakage: task information that passes through soft concepts beyond the concepts
themselves (Mahinpei et al. 2021, "Promises and Pitfalls of Black-Box Concept Learning
Models"; Havasi et al. 2022, "Addressing Leakage in Concept Bottleneck Models").

No reference implements these; the definitions are the project's (guide §3.6):

- **concept -> task gap**: with probes g fitted on one seeded train split,
  :math:`\mathrm{gap} = \mathrm{AUC}_y(g(\hat c)) - \mathrm{AUC}_y(g(c))`, the macro
  one-vs-rest task AUC on the test split of a multinomial logistic probe on the soft
  concepts minus one on the true concepts (T = 2: the AUC of class 1). A soft bottleneck
  that encodes a concept hidden from it (in the task rule, not among the concepts)
  predicts y better than the true visible concepts can: gap > 0. ``details["gap_hard"]``
  repeats it with :math:`[\hat c \ge t]` (hard concepts, which leak far less).
  Interval: paired percentile bootstrap over test rows (stratified by y, probes fixed);
  ``n_seeds`` splits give the seed spread.
- **inter-concept leakage**: :math:`L_{ij} = \max(P_{ij} - O_{ij}, 0)` off the diagonal,
  with P and O the purity and oracle matrices of the Oracle Impurity Score: how much
  better soft column i predicts concept j than the true concept i does.

Probes: L2 multinomial logistic regression (C = 1) trained by Newton's method to
convergence (see ``_probe``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dynalens._validation import check_float, check_int
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import as_binary_labels, as_class_labels, as_matrix
from dynalens.estimators.concepts._probe import fit_multinomial_probe, predict_multinomial
from dynalens.estimators.concepts._result import ConceptResult, seed_spread
from dynalens.estimators.concepts._scores import (
    macro_ovr_auc,
    weighted_bootstrap_interval,
    weighted_macro_ovr_auc,
)
from dynalens.estimators.concepts._split import train_test_split
from dynalens.estimators.concepts.oracle_impurity import OracleImpurity

__all__ = ["ConceptTaskLeakage", "concept_task_leakage", "inter_concept_leakage"]


class ConceptTaskLeakage:
    """Concept -> task leakage gap of a soft bottleneck.

    Parameters
    ----------
    test_size : float
        Held-out fraction (default 0.2).
    seed : int
        Split seed; the seed spread uses ``seed, seed + 1, ...``.
    n_seeds : int
        Splits for the seed spread (1: none).
    C : float
        Inverse L2 strength of the probes.
    threshold : float
        Threshold of the hard concepts for ``gap_hard``.
    n_boot : int
        Paired bootstrap replicates over test rows (0: no interval).
    """

    def __init__(
        self,
        *,
        test_size: float = 0.2,
        seed: int = 0,
        n_seeds: int = 5,
        C: float = 1.0,
        threshold: float = 0.5,
        n_boot: int = 200,
    ) -> None:
        self.test_size = test_size
        self.seed = seed
        self.n_seeds = n_seeds
        self.C = C
        self.threshold = threshold
        self.n_boot = n_boot

    def estimate(self, c_soft: Any, c_true: Any, y: Any) -> ConceptResult:
        """Gap of soft concepts ``c_soft`` (n, k) over true concepts ``c_true`` (n, k) for
        predicting task labels ``y`` (n,)."""
        test_size = check_float("test_size", self.test_size, min=0.0, max=1.0, min_inclusive=False)
        seed = check_int("seed", self.seed)
        n_seeds = check_int("n_seeds", self.n_seeds, min=1)
        C = check_float("C", self.C, min=0.0, min_inclusive=False)
        threshold = check_float("threshold", self.threshold)
        n_boot = check_int("n_boot", self.n_boot, min=0)
        c = as_binary_labels("c_true", c_true)
        soft = as_matrix("c_soft", c_soft, n=c.shape[0])
        labels = as_class_labels("y", y, n=c.shape[0])
        _check_task_classes(labels, test_size)
        hard = (soft >= threshold).to(torch.float64)
        n_classes = int(labels.max()) + 1
        gaps = []
        for s in range(seed, seed + n_seeds):
            fit = _fit(soft, hard, c, labels, n_classes, test_size, s, C)
            gaps.append(fit["gap"])
            if s == seed:
                first = fit
        interval = None
        if n_boot > 0:
            y_test, probs = first["y_test"], first["proba"]
            interval = weighted_bootstrap_interval(
                lambda w: (
                    weighted_macro_ovr_auc(y_test, probs["soft"], w)
                    - weighted_macro_ovr_auc(y_test, probs["true"], w)
                ),
                len(y_test),
                strata=y_test,
                n_boot=n_boot,
                seed=seed,
            )
        return ConceptResult(
            value=first["gap"],
            metric="concept_task_leakage",
            interval=interval,
            seed_spread=seed_spread(gaps) if n_seeds > 1 else {},
            n=len(first["y_test"]),
            params={
                "test_size": test_size,
                "seed": seed,
                "n_seeds": n_seeds,
                "C": C,
                "threshold": threshold,
                "n_boot": n_boot,
                "probe": "multinomial logistic",
            },
            details={
                "auc_soft": first["auc"]["soft"],
                "auc_true": first["auc"]["true"],
                "auc_hard": first["auc"]["hard"],
                "gap_hard": first["auc"]["hard"] - first["auc"]["true"],
            },
        )


def _check_task_classes(labels: torch.Tensor, test_size: float) -> None:
    counts = torch.bincount(labels)
    present = counts[counts > 0]
    smaller = min(test_size, 1 - test_size)
    if len(present) < 2:
        raise InvalidInputError(
            "the concept -> task leakage gap needs at least two classes in y; got only "
            f"class {int(labels[0])}."
        )
    rare = ((counts > 0) & (counts * smaller < 2)).nonzero().flatten().tolist()
    if rare:
        raise InvalidInputError(
            f"the concept -> task leakage gap needs every class of y in the train and the "
            f"test split; class {rare[0]} has {int(counts[rare[0]])} sample(s), so a "
            f"{smaller:.0%} split holds about {float(counts[rare[0]]) * smaller:.1f} of "
            f"them (rare classes: {rare}). Pass more rows, merge or drop the class, or "
            "raise test_size."
        )


def _fit(
    soft: torch.Tensor,
    hard: torch.Tensor,
    c: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    test_size: float,
    seed: int,
    C: float,
) -> dict[str, Any]:
    train, test = train_test_split(y.shape[0], test_size, seed)
    missing = set(y.unique().tolist()) - set(y[train].unique().tolist())
    missing |= set(y.unique().tolist()) - set(y[test].unique().tolist())
    if missing:
        raise InvalidInputError(
            f"the split with seed={seed} leaves class(es) {sorted(missing)} of y out of the "
            "train or test rows; choose another seed, raise test_size, or pass more rows."
        )
    proba, auc = {}, {}
    for name, x in (("soft", soft), ("true", c), ("hard", hard)):
        theta = fit_multinomial_probe(x[train], y[train], n_classes, C=C)
        proba[name] = predict_multinomial(theta, x[test])
        auc[name] = macro_ovr_auc(y[test], proba[name])
    return {"gap": auc["soft"] - auc["true"], "auc": auc, "proba": proba, "y_test": y[test]}


def concept_task_leakage(c_soft: Any, c_true: Any, y: Any, **kwargs: Any) -> ConceptResult:
    """The concept -> task leakage gap; see :class:`ConceptTaskLeakage`."""
    return ConceptTaskLeakage(**kwargs).estimate(c_soft, c_true, y)


def inter_concept_leakage(
    c_soft: Any, c_true: Any, *, names: Sequence[str] | None = None, **kwargs: Any
) -> ConceptResult:
    """Inter-concept leakage max(P - O, 0) off the diagonal (k, k) as ``per_concept``,
    its largest entry as ``value``; parameters as :class:`OracleImpurity` (one shared
    computation: ``details["ois"]`` is the OIS of the same split)."""
    ois = OracleImpurity(**kwargs).estimate(c_soft, c_true, names=names)
    leakage = ois.details["leakage"]
    return ConceptResult(
        value=float(leakage.max()),
        metric="inter_concept_leakage",
        per_concept=leakage,
        n=ois.n,
        params=ois.params,
        details={
            "ois": ois.value,
            "purity": ois.details["purity"],
            "oracle": ois.details["oracle"],
        },
    )
