r"""Bypass share of a hybrid concept bottleneck model: how much of its task accuracy goes
past the concepts, through the residual.

For a head :math:`f(\hat c, r)` on concept values :math:`\hat c` (n, k) and residual
values r (n, m), each part is *ablated* by replacing it, in every row, with its mean over
a reference set (the training split by default: ``reference=(c_train, r_train)``):

.. math::

    \Delta_c = \max(a(\hat c, r) - a(\bar c, r), 0), \quad
    \Delta_r = \max(a(\hat c, r) - a(\hat c, \bar r), 0), \quad
    \mathrm{share} = \frac{\Delta_r}{\Delta_c + \Delta_r}

with a the task accuracy on the evaluated rows. share = 1: the concepts can be removed at
no cost and the residual carries the prediction (complete bypass); 0: the residual can be
removed at no cost. A negative drop (ablation *helps*) means that part carries no useful
information and counts 0; both drops 0 leaves the share undefined: NaN with a warning.

The guide's §3.6 (the project's own definition: no reference implements one; mean
ablation as in VectorInstitute/odyssey#217, "deleting all 26 concepts cost 1.6 % of
accuracy") writes the share as :math:`\Delta_c / (\Delta_c + \Delta_r)` while calling
it the share that bypasses the bottleneck and expecting a wide unregularised residual to
score near 1; that ratio is the *concept* share, so it is reported beside it
(``details["concept_share"]`` = 1 − share). Hybrid CBMs: Espinosa Zarlenga et al. 2022
(cem's ``extra_dims``), Yuksekgonul et al. 2023 (PCBM-h); leakage past the bottleneck:
Mahinpei et al. 2021, Havasi et al. 2022.

Interval: percentile bootstrap over rows (stratified by y; the head and the means fixed).

Examples
--------
>>> bypass_share(model.task, c_hat, r, y, reference=(c_train, r_train))  # doctest: +SKIP
ConceptResult(bypass_share=0.93, 95% [0.88, 0.97], n=1000)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from dynalens._validation import check_int
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import as_class_labels, as_matrix
from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts._scores import bootstrap_interval

__all__ = ["BypassShare", "UndefinedShareWarning", "bypass_share"]

TaskHead = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class UndefinedShareWarning(UserWarning):
    """Neither ablation lowered the accuracy: the bypass share is NaN."""


class BypassShare:
    """Bypass share of a hybrid model's head (see the module docstring).

    Parameters
    ----------
    n_boot : int
        Bootstrap replicates over rows (0: no interval).
    seed : int
        Bootstrap seed.
    """

    def __init__(self, *, n_boot: int = 200, seed: int = 0) -> None:
        self.n_boot = n_boot
        self.seed = seed

    def estimate(
        self,
        head: TaskHead,
        c_values: Any,
        residual: Any,
        y: Any,
        *,
        reference: tuple[Any, Any] | None = None,
    ) -> ConceptResult:
        """``head(c_values, residual) -> task logits`` on concept values (n, k), residual
        values (n, m) and labels y (n,); ``reference`` = (concepts, residual) of the
        training split whose means replace each part (default: the evaluated rows)."""
        n_boot = check_int("n_boot", self.n_boot, min=0)
        seed = check_int("seed", self.seed)
        c = as_matrix("c_values", c_values)
        n = c.shape[0]
        r = as_matrix("residual", residual, n=n)
        labels = as_class_labels("y", y, n=n)
        if reference is None:
            c_ref, r_ref = c, r
        else:
            c_ref = as_matrix("reference[0]", reference[0])
            r_ref = as_matrix("reference[1]", reference[1], n=c_ref.shape[0])
            if c_ref.shape[1] != c.shape[1] or r_ref.shape[1] != r.shape[1]:
                raise InvalidInputError(
                    f"reference parts have widths {c_ref.shape[1]} and {r_ref.shape[1]}, the "
                    f"evaluated ones {c.shape[1]} and {r.shape[1]}; pass the training split's "
                    "(concept values, residual values) of the same model."
                )
        c_bar = c_ref.mean(0, keepdim=True).expand_as(c)
        r_bar = r_ref.mean(0, keepdim=True).expand_as(r)
        hits = {
            name: _hits(head, cv, rv, labels)
            for name, (cv, rv) in {
                "full": (c, r),
                "no_concepts": (c_bar, r),
                "no_residual": (c, r_bar),
            }.items()
        }

        def share(rows: torch.Tensor) -> float:
            return _share({k: float(v[rows].mean()) for k, v in hits.items()})[0]

        value, d_c, d_r = _share({k: float(v.mean()) for k, v in hits.items()})
        if value != value:
            warnings.warn(
                "neither replacing the concepts nor the residual by its mean lowered the "
                "task accuracy; the bypass share is undefined (NaN).",
                UndefinedShareWarning,
                stacklevel=2,
            )
        interval = None
        if n_boot > 0:
            interval = bootstrap_interval(share, n, strata=labels, n_boot=n_boot, seed=seed)
        return ConceptResult(
            value=value,
            metric="bypass_share",
            interval=interval,
            n=n,
            params={"n_boot": n_boot, "seed": seed, "reference": reference is not None},
            details={
                "accuracy": float(hits["full"].mean()),
                "accuracy_without_concepts": float(hits["no_concepts"].mean()),
                "accuracy_without_residual": float(hits["no_residual"].mean()),
                "drop_concepts": d_c,
                "drop_residual": d_r,
                "concept_share": 1 - value,
            },
        )


def _hits(head: TaskHead, c: torch.Tensor, r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dtype = torch.get_default_dtype()
    with torch.no_grad():
        out = head(c.to(dtype), r.to(dtype))
    if not torch.is_tensor(out) or out.ndim != 2 or out.shape[0] != c.shape[0]:
        raise InvalidInputError(
            f"head(c, r) must return task logits (n, T) with n = {c.shape[0]}; got "
            f"{tuple(getattr(out, 'shape', ()))}."
        )
    return (out.argmax(1) == y).to(torch.float64)


def _share(acc: dict[str, float]) -> tuple[float, float, float]:
    d_c = max(acc["full"] - acc["no_concepts"], 0.0)
    d_r = max(acc["full"] - acc["no_residual"], 0.0)
    total = d_c + d_r
    return (d_r / total if total > 0 else float("nan")), d_c, d_r


def bypass_share(
    head: TaskHead,
    c_values: Any,
    residual: Any,
    y: Any,
    *,
    reference: tuple[Any, Any] | None = None,
    **kwargs: Any,
) -> ConceptResult:
    """The bypass share; see :class:`BypassShare`."""
    return BypassShare(**kwargs).estimate(head, c_values, residual, y, reference=reference)
