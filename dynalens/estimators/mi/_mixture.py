"""Gaussian-mixture log-densities shared by the ``kde`` and ``noisy`` estimators.

For centres c_1..c_n (the clean activations) and isotropic variance s2, the mixture
p(t) = (1/n) sum_j N(t; c_j, s2 I). All functions return natural-log quantities in float64
and call :func:`dynalens.kernels.gauss_lse.gauss_lse` for the O(n^2 d) work.
"""

from __future__ import annotations

import math

import torch

__all__ = ["group_index", "log_mixture", "log_mixture_loo", "normal_logconst"]


def normal_logconst(d: int, var: float) -> float:
    """log of the N(.; c, var I) normaliser: -(d/2) log(2 pi var)."""
    return -0.5 * d * math.log(2.0 * math.pi * var)


def log_mixture(t: torch.Tensor, c: torch.Tensor, var: float) -> torch.Tensor:
    """log (1/m) sum_j N(t_i; c_j, var I) for every row of t (m = rows of c)."""
    from dynalens.kernels.gauss_lse import gauss_lse

    lse = gauss_lse(t, c, var=var).to(torch.float64)
    return lse - math.log(c.shape[0]) + normal_logconst(c.shape[1], var)


def log_mixture_loo(t: torch.Tensor, c: torch.Tensor, var: float) -> torch.Tensor:
    """log (1/(n-1)) sum_{j != i} N(t_i; c_j, var I), t and c paired by row.

    One streaming pass of :func:`~dynalens.kernels.gauss_lse.gauss_lse` with the pair
    (t_i, c_i) dropped by index (``exclude_self=True``): nothing is subtracted, so rows whose
    own term dominates the full sum (t_i close to c_i, small var: the others' share can be
    far below float64 resolution) are as exact as the rest.
    """
    from dynalens.kernels.gauss_lse import gauss_lse

    n, d = c.shape
    lse = gauss_lse(t, c, var=var, exclude_self=True).to(torch.float64)
    return lse - math.log(n - 1) + normal_logconst(d, var)


def group_index(codes: torch.Tensor) -> list[torch.Tensor]:
    """Row indices of each group of equal codes, for groups of size >= 2."""
    order = torch.argsort(codes, stable=True)
    counts = torch.bincount(codes)
    sizes = counts[counts > 0]
    groups = torch.split(order, sizes.tolist())
    return [g for g in groups if g.numel() >= 2]
