r"""Soft concept representations with a known signal, leak and noise (for metric tests).

:math:`\hat c = \sigma\big(a(2c-1) + l(2s-1) + \sigma_\varepsilon\varepsilon\big)`, with
signal a, leak l from a source s (default: the next concept, ``c`` rolled by one column,
so concept j's probability carries concept j+1: impurity) and Gaussian noise. With l = 0
the representation is *pure*: column j depends on concept j only.
"""

from __future__ import annotations

from typing import Any

import torch

from dynalens._validation import check_float, check_int
from dynalens.errors import InvalidInputError

__all__ = ["soft_concepts"]


def soft_concepts(
    c: torch.Tensor,
    *,
    signal: float = 2.0,
    leak: float = 0.0,
    noise: float = 1.0,
    leak_source: Any = None,
    seed: int = 0,
) -> torch.Tensor:
    """Concept probabilities (n, k) float64 from binary concepts ``c`` (n, k).

    ``leak_source`` (n, k) or (n, 1) in {0, 1} is what leaks in (default
    ``c.roll(-1, 1)``: concept j+1 leaks into column j); use a hidden concept to build a
    bottleneck that leaks task information."""
    signal = check_float("signal", signal)
    leak = check_float("leak", leak)
    noise = check_float("noise", noise, min=0.0)
    seed = check_int("seed", seed)
    c = torch.as_tensor(c, dtype=torch.float64)
    source = c.roll(-1, 1) if leak_source is None else torch.as_tensor(leak_source).double()
    if source.ndim == 1:
        source = source[:, None]
    if source.shape[0] != c.shape[0] or source.shape[1] not in (1, c.shape[1]):
        raise InvalidInputError(
            f"leak_source must have shape ({c.shape[0]}, {c.shape[1]}) or ({c.shape[0]}, 1); "
            f"got {tuple(source.shape)}."
        )
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(c.shape, generator=g, dtype=torch.float64)
    return torch.sigmoid(signal * (2 * c - 1) + leak * (2 * source - 1) + noise * eps)
