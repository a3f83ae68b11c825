"""Gaussian-mixture log-densities shared by the ``kde`` and ``noisy`` estimators.

For centres c_1..c_n (the clean activations) and isotropic variance s2, the mixture
p(t) = (1/n) sum_j N(t; c_j, s2 I). All functions return natural-log quantities in float64
and call :func:`dynalens.kernels.gauss_lse.gauss_lse` for the O(n^2 d) work.
"""

from __future__ import annotations

import math

import torch

__all__ = ["group_index", "log_mixture", "log_mixture_loo", "normal_logconst"]

#: others' share of a leave-one-out sum below which log(total - self) loses precision
_CANCEL = 1e-9
_BLOCK = 256


def normal_logconst(d: int, var: float) -> float:
    """log of the N(.; c, var I) normaliser: -(d/2) log(2 pi var)."""
    return -0.5 * d * math.log(2.0 * math.pi * var)


def log_mixture(t: torch.Tensor, c: torch.Tensor, var: float) -> torch.Tensor:
    """log (1/m) sum_j N(t_i; c_j, var I) for every row of t (m = rows of c)."""
    from dynalens.kernels.gauss_lse import gauss_lse

    lse = gauss_lse(t, c, var=var).to(torch.float64)
    return lse - math.log(c.shape[0]) + normal_logconst(c.shape[1], var)


def log_mixture_loo(
    t: torch.Tensor, c: torch.Tensor, var: float, self_logit: torch.Tensor
) -> torch.Tensor:
    """log (1/(n-1)) sum_{j != i} N(t_i; c_j, var I), t and c paired by row.

    ``self_logit`` is -||t_i - c_i||^2 / (2 var), known exactly by the caller. The sum over
    j != i is the full sum minus the self term; rows where the others' share is below
    1e-9 (the subtraction would lose digits) are recomputed exactly block by block.
    """
    from dynalens.kernels.gauss_lse import gauss_lse

    n, d = c.shape
    full = gauss_lse(t, c, var=var).to(torch.float64)
    share = torch.exp(self_logit - full).clamp(max=1.0)
    out = full + torch.log1p(-share)
    bad = torch.nonzero(share > 1.0 - _CANCEL).flatten()
    for s in range(0, bad.numel(), _BLOCK):
        rows = bad[s : s + _BLOCK]
        mask = torch.ones(n, dtype=torch.bool, device=c.device)
        mask[rows] = False
        part = (
            gauss_lse(t[rows], c[mask], var=var).to(torch.float64)
            if bool(mask.any())
            else torch.full((rows.numel(),), -math.inf, dtype=torch.float64, device=c.device)
        )
        # within the block: at most 256 x 256 terms, evaluated directly without the diagonal
        diff = t[rows][:, None, :].double() - c[rows][None, :, :].double()
        logits = -(diff.pow(2).sum(-1)) / (2.0 * var)
        logits.fill_diagonal_(-math.inf)
        out[rows] = torch.logaddexp(part, torch.logsumexp(logits, dim=1))
    return out - math.log(n - 1) + normal_logconst(d, var)


def group_index(codes: torch.Tensor) -> list[torch.Tensor]:
    """Row indices of each group of equal codes, for groups of size >= 2."""
    order = torch.argsort(codes, stable=True)
    counts = torch.bincount(codes)
    sizes = counts[counts > 0]
    groups = torch.split(order, sizes.tolist())
    return [g for g in groups if g.numel() >= 2]
