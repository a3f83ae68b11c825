"""The record every concept metric returns: the number, its parts, its uncertainty."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ConceptResult"]


@dataclass(frozen=True)
class ConceptResult:
    """A concept metric's value with per-concept values, an interval and its settings.

    Attributes:
        value: the summary number (e.g. macro AUC, OIS, a leakage gap).
        metric: the metric's name (``"concept_auc"``, ``"ois"``, ...).
        per_concept: per-concept (or per-pair) values, NaN where undefined.
        interval: a 95 % interval ``(low, high)`` (bootstrap over test rows, probes fixed)
            or ``None`` where the metric has none.
        seed_spread: ``{"mean", "sd", "min", "max", "values"}`` over split / probe seeds
            where a probe or a random split enters, else empty.
        n: number of rows the value was computed on.
        params: the settings used (split, seed, threshold, compat, ...).
        details: metric-specific extras (other summaries, matrices, masks, counts).
    """

    value: float
    metric: str
    per_concept: torch.Tensor | None = None
    interval: tuple[float, float] | None = None
    seed_spread: Mapping[str, Any] = field(default_factory=dict)
    n: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        text = f"ConceptResult({self.metric}={self.value:.4f}"
        if self.interval is not None:
            text += f", 95% [{self.interval[0]:.4f}, {self.interval[1]:.4f}]"
        return text + f", n={self.n})"


def seed_spread(values: list[float]) -> dict[str, Any]:
    """Mean, sd (ddof 1; 0 for one value), min and max of per-seed values."""
    v = torch.tensor(values, dtype=torch.float64)
    sd = float(v.std()) if len(values) > 1 else 0.0
    return {
        "mean": float(v.mean()),
        "sd": sd,
        "min": float(v.min()),
        "max": float(v.max()),
        "values": list(values),
    }
