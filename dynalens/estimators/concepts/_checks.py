"""Input checks shared by the concept metrics (run once, at the API boundary).

Every check converts to a float64 torch tensor on the CPU and raises
:class:`~dynalens.errors.InvalidInputError` saying what was expected, what came and how
to fix it: concept labels must be 0/1 without NaN, probabilities must lie in [0, 1], and
a metric that needs both classes of a concept (an AUC, a probe) refuses a concept that is
constant in the rows it is computed on, naming the metric and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynalens.errors import InvalidInputError

__all__ = [
    "as_binary_labels",
    "as_class_labels",
    "as_matrix",
    "as_probabilities",
    "require_both_classes",
]


def as_matrix(name: str, value: Any, *, n: int | None = None) -> torch.Tensor:
    """A finite (n, k) float64 tensor; an (n,) vector becomes (n, 1)."""
    t = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    t = t.detach().to("cpu", torch.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] == 0:
        raise InvalidInputError(
            f"{name} must be an (n, k) array with n >= 1; got shape {tuple(t.shape)}. "
            "Pass one row per sample and one column per concept."
        )
    if n is not None and t.shape[0] != n:
        raise InvalidInputError(
            f"{name} has {t.shape[0]} rows but the other inputs have {n}; pass the same "
            "samples, in the same order, to every argument."
        )
    bad = ~torch.isfinite(t)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise InvalidInputError(
            f"{name} contains {int(bad.sum())} NaN or infinite values (first at row {row}, "
            f"column {col}); drop or impute those rows (or pass mask= where the metric "
            "accepts one) before computing the metric."
        )
    return t


def as_binary_labels(name: str, value: Any, *, n: int | None = None) -> torch.Tensor:
    """Concept labels: an (n, k) float64 tensor whose entries are exactly 0 or 1."""
    t = as_matrix(name, value, n=n)
    bad = (t != 0) & (t != 1)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise InvalidInputError(
            f"{name} must hold binary concept labels in {{0, 1}}; got {t[row, col].item()!r} "
            f"at row {row}, column {col} ({int(bad.sum())} such entries). Threshold soft "
            "labels yourself, or pass them as predictions rather than as labels."
        )
    return t


def as_probabilities(name: str, value: Any, *, n: int | None = None) -> torch.Tensor:
    """Concept probabilities: an (n, k) float64 tensor with entries in [0, 1]."""
    t = as_matrix(name, value, n=n)
    bad = (t < 0) | (t > 1)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise InvalidInputError(
            f"{name} must hold probabilities in [0, 1]; got {t[row, col].item()!r} at row "
            f"{row}, column {col} ({int(bad.sum())} entries outside). If these are logits, "
            "apply torch.sigmoid first (or pass logits=True where the metric accepts it)."
        )
    return t


def as_class_labels(name: str, value: Any, *, n: int | None = None) -> torch.Tensor:
    """Task labels: an (n,) int64 tensor of non-negative integers."""
    t = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    t = t.detach().to("cpu")
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1 or t.numel() == 0:
        raise InvalidInputError(
            f"{name} must be a non-empty (n,) vector of class indices; got shape {tuple(t.shape)}."
        )
    f = t.to(torch.float64)
    bad = ~torch.isfinite(f) | (f != f.round()) | (f < 0)
    if bad.any():
        raise InvalidInputError(
            f"{name} must hold class indices 0, 1, ..., T-1 (no NaN, no fractions, no "
            f"negatives); got values such as {f[bad][:3].tolist()}."
        )
    if n is not None and t.shape[0] != n:
        raise InvalidInputError(
            f"{name} has {t.shape[0]} rows but the other inputs have {n}; pass the same "
            "samples, in the same order, to every argument."
        )
    return f.to(torch.int64)


def require_both_classes(
    labels: torch.Tensor, *, metric: str, where: str, names: Sequence[str] | None = None
) -> None:
    """Raise if a column of binary ``labels`` is constant: ``metric`` (an AUC or a probe)
    is undefined with a single class, so no number is returned for it."""
    pos = labels.sum(0)
    const = ((pos == 0) | (pos == labels.shape[0])).nonzero().flatten().tolist()
    if const:
        j = const[0]
        label = names[j] if names else f"concept {j}"
        value = int(labels[0, j].item())
        raise InvalidInputError(
            f"{metric} is undefined: {label} is constant (always {value}) in the {where} "
            f"({labels.shape[0]} rows; {len(const)} constant concept(s): {const[:8]}); an "
            "AUC or a probe needs both classes. Drop the concept, use more rows, or choose "
            "another split (seed=, test_size=)."
        )
