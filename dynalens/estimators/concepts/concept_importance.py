r"""Concept Global Importance Metric (CGIM) of Aysel et al. 2025 ("Concept-Based
Explainable Artificial Intelligence: Metrics and Benchmarks", arXiv 2501.19271), **as
reconstructed in the project guide §3.9** (the definition of V is from secondary
summaries, not the paper's text).

Ground truth :math:`V` (k, T): :math:`V_{jt}` = fraction of class-t training images that
have concept j. Model side :math:`X` (k, T), by ``kind``:

1. :math:`X = \tilde\theta`, the head weights (k, T) (for ``nn.Linear`` pass
   ``head.weight.T``);
2. :math:`X = \hat U^*`, :math:`\hat U^*_{jt}` = mean concept score :math:`\hat u_{ij}` over
   the correctly classified training images of class t;
3. :math:`X = \tilde\theta \odot \hat U^*`.

.. math:: \mathrm{CGIM}_j = \cos(X_{j,:}, V_{j,:}), \qquad \mathrm{CGIM} = \frac1k\sum_j
          \mathrm{CGIM}_j,

with 0 where :math:`X_{j,:}` or :math:`V_{j,:}` is zero (no weight: no importance).

Quirk fixed by default (``center_weights=True``): softmax heads are invariant to adding a
constant to a concept's weights across classes, so :math:`\cos(\theta_j, V_j)` of the raw
weights is arbitrary. :math:`\tilde\theta_j = \theta_j - \overline{\theta_j}` is the
invariant (minimum-norm) representative, which an L2-regularised head reaches anyway.
With it, :math:`\cos(\tilde\theta_j, V_j) = \cos(\tilde\theta_j, V_j - \bar V_j)\,
\lVert V_j - \bar V_j\rVert / \lVert V_j \rVert`: a concept independent of the class (V
constant, e.g. removed from the task rule) scores ≈ 0 whatever its weights, and a concept
the rule uses scores high when the head weights it accordingly. Type 2 compares two
non-negative profiles, so it is high even for a concept the task does not use; type 3's
product is not centred, so an unused concept keeps a small score (≈ 0.2 in the tests).
Interval: percentile bootstrap over training rows stratified by class (θ fixed).
"""

from __future__ import annotations

from typing import Any

import torch

from dynalens._validation import check_bool, check_int
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts._checks import as_binary_labels, as_class_labels, as_matrix
from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts._scores import bootstrap_interval

__all__ = ["ConceptGlobalImportance", "concept_class_frequency", "concept_global_importance"]


def concept_class_frequency(c: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """V (k, T): the fraction of class-t rows of ``c`` (n, k) with concept j (NaN for an
    absent class)."""
    onehot = torch.nn.functional.one_hot(y, n_classes).to(c.dtype)
    return (c.T @ onehot) / onehot.sum(0)


class ConceptGlobalImportance:
    """CGIM of type 1 (head weights), 2 (class-mean concept scores) or 3 (both).

    Parameters
    ----------
    kind : {1, 2, 3}
        Model side X: θ, Û* or θ ⊙ Û* (module docstring).
    center_weights : bool
        Centre θ over classes (default True; False reproduces the raw cosine).
    n_boot, seed : bootstrap replicates over rows (0: none) and its seed.
    """

    def __init__(
        self, *, kind: int = 1, center_weights: bool = True, n_boot: int = 200, seed: int = 0
    ) -> None:
        self.kind = kind
        self.center_weights = center_weights
        self.n_boot = n_boot
        self.seed = seed

    def estimate(
        self,
        head_weight: Any,
        c_train: Any,
        y_train: Any,
        *,
        c_scores: Any = None,
        y_pred: Any = None,
    ) -> ConceptResult:
        """CGIM of head weights (k, T) against training concepts ``c_train`` (n, k) and
        labels ``y_train`` (n,); types 2 and 3 also need the model's ``c_scores`` (n, k)
        and predictions ``y_pred`` (n,) on the same rows."""
        kind = check_int("kind", self.kind, min=1, max=3)
        center = check_bool("center_weights", self.center_weights)
        n_boot = check_int("n_boot", self.n_boot, min=0)
        seed = check_int("seed", self.seed)
        c = as_binary_labels("c_train", c_train)
        n, k = c.shape
        y = as_class_labels("y_train", y_train, n=n)
        theta = as_matrix("head_weight", head_weight)
        if theta.shape[0] != k:
            raise InvalidInputError(
                f"head_weight must be (k, T) with k = {k} concepts; got {tuple(theta.shape)}. "
                "For an nn.Linear head pass head.weight.T."
            )
        t = theta.shape[1]
        present = torch.bincount(y, minlength=t)
        if y.max() >= t or bool((present == 0).any()):
            raise InvalidInputError(
                f"every class 0..{t - 1} of the head needs training rows to define V; class "
                f"counts are {present.tolist()}. Pass rows of every class."
            )
        if center:
            theta = theta - theta.mean(1, keepdim=True)
        u = correct = None
        if kind > 1:
            if c_scores is None or y_pred is None:
                raise InvalidParameterError(
                    f"kind={kind} uses the mean concept scores of correctly classified images: "
                    "pass c_scores= (n, k) and y_pred= (n,)."
                )
            u = as_matrix("c_scores", c_scores, n=n)
            correct = as_class_labels("y_pred", y_pred, n=n) == y

        def compute(rows: torch.Tensor) -> torch.Tensor:
            v = concept_class_frequency(c[rows], y[rows], t)
            if kind == 1:
                x = theta
            else:
                assert u is not None and correct is not None
                keep = rows[correct[rows]]
                u_star = concept_class_frequency(u[keep], y[keep], t)
                x = u_star if kind == 2 else theta * u_star
            return _cosine_rows(x, v)

        per = compute(torch.arange(n))
        if bool(torch.isnan(per).any()):
            raise InvalidInputError(
                "a class has no correctly classified training image, so its mean concept "
                "scores (Û*) are undefined; use kind=1 or a better-trained model."
            )
        interval = None
        if n_boot > 0:
            interval = bootstrap_interval(
                lambda rows: float(compute(rows).mean()), n, strata=y, n_boot=n_boot, seed=seed
            )
        return ConceptResult(
            value=float(per.mean()),
            metric=f"cgim_type{kind}",
            per_concept=per,
            interval=interval,
            n=n,
            params={"kind": kind, "center_weights": center, "n_boot": n_boot, "seed": seed},
            details={"V": concept_class_frequency(c, y, t)},
        )


def _cosine_rows(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine; 0 where a row is zero, NaN where a row holds NaN."""
    nx, nv = x.norm(dim=1), v.norm(dim=1)
    cos = (x * v).sum(1) / (nx * nv).clamp_min(1e-300)
    return torch.where((nx > 0) & (nv > 0), cos, torch.where(torch.isnan(nx + nv), nx + nv, 0.0))


def concept_global_importance(
    head_weight: Any, c_train: Any, y_train: Any, **kwargs: Any
) -> ConceptResult:
    """Functional form of :class:`ConceptGlobalImportance` (``c_scores`` and ``y_pred``
    go to ``estimate``).

    Examples
    --------
    >>> c = torch.tensor([[0.0], [1.0]]); y = torch.tensor([0, 1])
    >>> round(concept_global_importance(torch.tensor([[-1.0, 1.0]]), c, y, n_boot=0).value, 4)
    0.7071
    """
    extra = {key: kwargs.pop(key) for key in ("c_scores", "y_pred") if key in kwargs}
    return ConceptGlobalImportance(**kwargs).estimate(head_weight, c_train, y_train, **extra)
