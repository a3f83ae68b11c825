"""Gaussian-mixture log-densities shared by the ``kde`` and ``noisy`` estimators.

For centres c_1..c_n (the clean activations) and isotropic variance s2, the mixture
p(t) = (1/n) sum_j N(t; c_j, s2 I). All functions return natural-log quantities in float64
and call :func:`dynalens.kernels.gauss_lse.gauss_lse` for the O(n^2 d) work.

Resolution: gauss_lse evaluates the logits -||t - c_j||^2 / (2 var) through the expanded form
||t||^2 + ||c_j||^2 - 2 t.c_j around the mean of the centres, whose rounding error is about
2 u R^2 (1 + sqrt(d) / 8) / var nats (u the unit roundoff of the compute dtype, R the largest
distance of a point from the mean; measured 0.35-1.4 x 2 u R^2 / var for d = 1-50).
:func:`check_resolution` refuses a variance for which that error exceeds
:data:`LOGIT_TOL`: the mixture sums would then measure rounding, not the channel.
"""

from __future__ import annotations

import math

import torch

from dynalens.errors import EstimatorRegimeError

__all__ = [
    "LOGIT_TOL",
    "check_resolution",
    "group_index",
    "log_mixture",
    "log_mixture_loo",
    "logit_rounding",
    "normal_logconst",
    "with_own_term",
]

#: the largest rounding error (nats) accepted in one Gaussian-kernel logit
LOGIT_TOL = 0.01


def logit_rounding(c: torch.Tensor, var: float) -> float:
    """Predicted rounding error (nats) of one logit -||t - c_j||^2 / (2 var) in gauss_lse,
    for points t = c + N(0, var I) and centres c computed in c's dtype.

    An empirical model (the cross term's rounding grows like sqrt(d) in a blocked dot
    product): with sqrt(d) / 8 the measured error at d = 50 exceeded it by 8 % on one Xeon
    whose BLAS blocks differently from the machine it was fitted on, so the factor is
    sqrt(d) / 4 (tests/estimators/test_noisy_bounds.py keeps it within 20x of the
    measured error on both)."""
    d = c.shape[1]
    u = torch.finfo(c.dtype).eps / 2
    r2 = float((c - c.mean(0)).pow(2).sum(1).max()) + d * var
    return 2.0 * u * r2 * (1.0 + math.sqrt(d) / 4.0) / var


def check_resolution(c: torch.Tensor, var: float, method: str, limit_note: str = "") -> None:
    """Refuse a noise variance below what the arithmetic of the mixture sums resolves."""
    err = logit_rounding(c, var)
    if err <= LOGIT_TOL:
        return
    need = var * err / LOGIT_TOL
    raise EstimatorRegimeError(
        f"noise_var={var:.3g} is below the resolution of {str(c.dtype).replace('torch.', '')} "
        f"arithmetic for these activations (they spread "
        f"{float((c - c.mean(0)).pow(2).sum(1).max()) ** 0.5:.3g} from their mean): method "
        f"{method!r} evaluates ||t - c||^2 / (2 noise_var) with a rounding error of about "
        f"{err:.3g} nats, so the estimate would measure rounding, not the channel (it returned "
        f"3456 nats for noise_var=1e-20 on 200 samples, where I(X;T) <= log 200 = 5.3). Use "
        f"noise_var >= {need:.2g}, or rescale the activations.{limit_note}"
    )


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


def with_own_term(own: torch.Tensor, loo: torch.Tensor, n: int) -> torch.Tensor:
    """log (1/n) sum_j N(t_i; c_j, var I) from the own term log N(t_i; c_i, var I), computed
    exactly from the noise draw, and the leave-one-out mixture ``loo`` (1/(n-1) normalised):
    the own term never goes through the rounded ||t_i - c_i||^2."""
    if n == 1:
        return own
    return torch.logaddexp(own - math.log(n), loo + math.log1p(-1.0 / n))


def group_index(codes: torch.Tensor) -> list[torch.Tensor]:
    """Row indices of each group of equal codes, for groups of size >= 2."""
    order = torch.argsort(codes, stable=True)
    counts = torch.bincount(codes)
    sizes = counts[counts > 0]
    groups = torch.split(order, sizes.tolist())
    return [g for g in groups if g.numel() >= 2]
