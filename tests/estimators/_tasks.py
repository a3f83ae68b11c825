"""Ground-truth tasks shared by the estimator tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

VAR_U = Path("/work/shared/data/var_u.mat")


def gaussian_pair(
    n: int, d: int, rho: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """x, y in R^d with corr(x_j, y_j) = rho, independent across j; I = -d/2 log(1-rho^2)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(n, d))
    return x, y, -0.5 * d * math.log(1 - rho**2)


def tishby_data() -> tuple[np.ndarray, np.ndarray]:
    """The 4096 12-bit patterns F (uint8) and their labels y (uint8) of var_u.mat."""
    if not VAR_U.exists():
        pytest.skip(f"{VAR_U} not available")
    from scipy.io import loadmat

    m = loadmat(VAR_U)
    return m["F"], m["y"].ravel()


def mixture_entropy_1d(c: np.ndarray, var: float, weights: np.ndarray | None = None) -> float:
    """Exact differential entropy (nats) of sum_j w_j N(c_j, var) in 1-D, by quadrature
    on a fine grid (error << 1e-4 for the grids used here)."""
    c = np.asarray(c, dtype=float).ravel()
    w = np.full(c.size, 1.0 / c.size) if weights is None else weights / weights.sum()
    s = math.sqrt(var)
    grid = np.linspace(c.min() - 9 * s, c.max() + 9 * s, 40001)
    uniq, inv = np.unique(c, return_inverse=True)
    wu = np.bincount(inv, weights=w)
    p = np.zeros_like(grid)
    for u, wt in zip(uniq, wu):
        p += wt * np.exp(-((grid - u) ** 2) / (2 * var))
    p /= math.sqrt(2 * math.pi * var)
    integrand = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return float(np.trapezoid(integrand, grid))
