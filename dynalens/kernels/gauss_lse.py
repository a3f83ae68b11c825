"""Gaussian-kernel row log-sum-exp and Gram matrix (KDE entropies, matrix Rényi entropy, HSIC).

    gauss_lse(x, y)_i   = log Σ_j exp(−‖x_i − y_j‖² / (2 var))          (nats, un-normalised)
    gaussian_gram(x, y)_ij =     exp(−‖x_i − y_j‖² / (2 var))

``var`` is the kernel variance σ² in squared units of x. ``y=None`` means ``y = x``; then the
self-distance is exactly 0 (not the rounded expanded form). ``exclude_self=True`` drops the
``j = i`` term: with ``y=None`` the leave-one-out KDE; with a ``y`` of as many rows as x, the
pairs (x_i, y_i) — ``log Σ_{j≠i} exp(−‖x_i − y_j‖² / (2 var))``, e.g. the leave-one-out
mixture ``log (1/(n−1)) Σ_{j≠i} N(t_i; c_j, σ²)`` of the known-channel MI upper bound
(Poole et al. 2019), where t_i = c_i + noise. The term is dropped by index, never
subtracted, so the result stays exact when it would dominate the sum (small var).

The normalising constant ``−log m − (d/2) log(2π var)`` of a
Gaussian KDE is *not* included: callers add it (e.g. the KDE mutual-information upper bound
``I ≤ −(1/n) Σ_i (LSE_i − log n)`` of Kolchinsky & Tracey 2017, "Estimating mixture entropy
with pairwise distances", Entropy 19:361; used by Saxe et al. 2018, ICLR).

Numerics: points are centred by the mean of y before the expanded form
``‖x‖² + ‖y‖² − 2 x·y`` is used, because its float32 absolute error is ~eps·‖x − c‖²
(the error of the LSE is about eps·‖x − c‖² / (2 var)); squared distances are clamped at 0.
The Triton kernel streams over column tiles with an online max and sum (FlashAttention-style,
Dao et al. 2022, arXiv:2205.14135) in base 2 and never forms the n × m matrix. The Gram matrix
(Rényi α-entropy of Giraldo, Rao & Príncipe 2015, IEEE TIT; HSIC/CKA of Gretton et al. 2005 and
Kornblith et al. 2019) is materialised by construction.

Example:
    >>> x = torch.zeros(3, 2)
    >>> gauss_lse(x, var=1.0)                  # three points at distance 0: log 3
    tensor([1.0986, 1.0986, 1.0986])
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dynalens._validation import check_bool, check_float
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.kernels._dispatch import (
    Backend,
    Work,
    as_tensor,
    check_same_device,
    choose_backend,
    compute_dtype,
    triton_module,
)

__all__ = [
    "gauss_lse",
    "gauss_lse_reference",
    "gaussian_gram",
    "gaussian_gram_reference",
    "work",
]

#: Elements of one (rows × m) tile in the torch fallback.
_TILE_ELEMS = 1 << 20


def work(n: int, m: int, d: int, *, elem_bytes: int = 4, gram: bool = False) -> Work:
    """Work model: 2nmd dot flops + ~4nm elementwise, nm exps; bytes read (n+m)d, write n
    (or nm for the Gram matrix)."""
    out = n * m if gram else n
    return Work(
        bytes=float(elem_bytes * (n + m) * d + 4 * out),
        flops=2.0 * n * m * d + 4.0 * n * m,
        exps=float(n * m),
    )


def _check(
    x: Any, y: Any, var: Any, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor, float, bool]:
    var = check_float("var", var, min=0.0, min_inclusive=False)
    exclude_self = check_bool("exclude_self", exclude_self)
    x = as_tensor("x", x, ndim=(1, 2))
    x = x[:, None] if x.ndim == 1 else x
    same = y is None
    if same:
        y = x
    else:
        y = as_tensor("y", y, ndim=(1, 2))
        y = y[:, None] if y.ndim == 1 else y
        check_same_device(x=x, y=y)
        if y.shape[1] != x.shape[1]:
            raise InvalidInputError(
                f"x and y must have the same number of columns; got x {tuple(x.shape)} and "
                f"y {tuple(y.shape)}."
            )
        if exclude_self and y.shape[0] != x.shape[0]:
            raise InvalidParameterError(
                "exclude_self=True with y drops the pairs (x_i, y_i), so y needs as many rows "
                f"as x; got x {tuple(x.shape)} and y {tuple(y.shape)}. Pass y=None for the "
                "leave-one-out sum over x itself, or exclude_self=False."
            )
    if x.shape[0] == 0 or y.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidInputError(
            f"x and y must be non-empty; got x {tuple(x.shape)} and y {tuple(y.shape)}."
        )
    if exclude_self and x.shape[0] < 2:
        raise InvalidInputError("exclude_self=True needs at least 2 rows of x; got 1.")
    return x, y, var, same


def _sqdist_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x64, y64 = x.double(), y.double()
    rows = max(1, (1 << 22) // max(1, y.shape[0] * x.shape[1]))
    return torch.cat(
        [
            (x64[s : s + rows, None, :] - y64[None]).pow(2).sum(-1)
            for s in range(0, x.shape[0], rows)
        ]
    )


def gauss_lse_reference(
    x: Any, y: Any = None, *, var: float, exclude_self: bool = False
) -> torch.Tensor:
    """Float64 reference: direct differences, the full matrix, ``torch.logsumexp``."""
    x, y, var, _same = _check(x, y, var, exclude_self)
    logits = _sqdist_reference(x, y) / (-2.0 * var)
    if exclude_self:
        logits.fill_diagonal_(-math.inf)
    return torch.logsumexp(logits, dim=1)


def gaussian_gram_reference(x: Any, y: Any = None, *, var: float) -> torch.Tensor:
    """Float64 reference: ``exp(−‖x_i − y_j‖² / (2 var))`` from direct differences."""
    x, y, var, _same = _check(x, y, var)
    return torch.exp(_sqdist_reference(x, y) / (-2.0 * var))


def _centred(
    x: torch.Tensor, y: torch.Tensor, same: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dt = compute_dtype(x, y)
    x, y = x.to(dt), y.to(dt)
    c = y.mean(0)
    xc = x - c
    yc = xc if same else y - c
    nx = xc.pow(2).sum(1)
    ny = nx if same else yc.pow(2).sum(1)
    return xc, yc, nx, ny


def _logit_tile(
    xc: torch.Tensor,
    yc: torch.Tensor,
    nx: torch.Tensor,
    ny: torch.Tensor,
    scale: float,
    s: int,
    e: int,
    same: bool,
) -> torch.Tensor:
    """``−‖x_i − y_j‖² / (2 var)`` for rows s:e: one GEMM with a bias row, clamped to <= 0."""
    tile = torch.addmm(ny[None, :], xc[s:e], yc.T, beta=scale, alpha=-2.0 * scale)
    tile.add_(nx[s:e, None], alpha=scale).clamp_(max=0.0)
    if same:
        ar = torch.arange(e - s, device=xc.device)
        tile[ar, ar + s] = 0.0
    return tile


def _rows_per_tile(m: int) -> int:
    return max(1, _TILE_ELEMS // max(1, m))


def _lse_torch(x: torch.Tensor, y: torch.Tensor, var: float, excl: bool, same: bool):
    xc, yc, nx, ny = _centred(x, y, same)
    scale = -0.5 / var
    n = xc.shape[0]
    out = torch.empty(n, dtype=xc.dtype, device=xc.device)
    R = _rows_per_tile(yc.shape[0])
    for s in range(0, n, R):
        e = min(n, s + R)
        tile = _logit_tile(xc, yc, nx, ny, scale, s, e, same)
        if excl:
            ar = torch.arange(e - s, device=xc.device)
            tile[ar, ar + s] = -math.inf
        mx = tile.amax(1, keepdim=True)
        out[s:e] = tile.sub_(mx).exp_().sum(1).log_().add_(mx[:, 0])
    return out


def _gram_torch(x: torch.Tensor, y: torch.Tensor, var: float, same: bool) -> torch.Tensor:
    xc, yc, nx, ny = _centred(x, y, same)
    scale = -0.5 / var
    n, m = xc.shape[0], yc.shape[0]
    out = torch.empty(n, m, dtype=xc.dtype, device=xc.device)
    R = _rows_per_tile(m)
    for s in range(0, n, R):
        e = min(n, s + R)
        out[s:e] = _logit_tile(xc, yc, nx, ny, scale, s, e, same).exp_()
    return out


def gauss_lse(
    x: Any,
    y: Any = None,
    *,
    var: float,
    exclude_self: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Row log-sum-exp of the Gaussian kernel, ``log Σ_j exp(−‖x_i − y_j‖² / (2 var))``.

    Args:
        x: (n, d) query points (or (n,)); torch tensor or numpy array.
        y: (m, d) reference points, or None for ``y = x``.
        var: kernel variance σ² > 0, in squared units of x.
        exclude_self: drop the ``j = i`` term (``y=None``, or y with n rows paired with
            x by row; needs n >= 2).
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"``.

    Returns:
        (n,) tensor in nats on x's device; float64 if any input is float64, else float32.
    """
    x, y, var, same = _check(x, y, var, exclude_self)
    which = choose_backend(backend, x, y)
    dt = compute_dtype(x, y)
    if which == "reference":
        yy = None if same else y
        return gauss_lse_reference(x, yy, var=var, exclude_self=exclude_self).to(dt)
    if which == "triton":
        return triton_module("gauss").lse(x, y, var, exclude_self, same)
    return _lse_torch(x, y, var, exclude_self, same)


def gaussian_gram(x: Any, y: Any = None, *, var: float, backend: Backend = "auto") -> torch.Tensor:
    """Gaussian Gram matrix ``K_ij = exp(−‖x_i − y_j‖² / (2 var))``; exact 1 on the diagonal
    when ``y=None``.

    Args:
        x: (n, d) points (or (n,)).
        y: (m, d) points, or None for ``y = x``.
        var: kernel variance σ² > 0.
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"``.

    Returns:
        (n, m) tensor on x's device; float64 if any input is float64, else float32.
    """
    x, y, var, same = _check(x, y, var)
    which = choose_backend(backend, x, y)
    dt = compute_dtype(x, y)
    if which == "reference":
        return gaussian_gram_reference(x, None if same else y, var=var).to(dt)
    if which == "triton":
        return triton_module("gauss").gram(x, y, var, same)
    return _gram_torch(x, y, var, same)
