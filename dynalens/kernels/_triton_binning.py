"""Triton kernels of :mod:`dynalens.kernels.binning` (imported lazily; imports triton).

``bin_indices``: one pass over the (n × d) values (memory-bound: read n·d, write n·d), a
branch-free binary search over the interior edges (shared, or one row per column) with a
fixed number of steps. ``joint_counts``: one global ``atomic_add`` per sample into an int32
table (exact; cast to int64 afterwards).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynalens.errors import InvalidInputError

_BLOCK = 1024


@triton.jit
def _bin_kernel(
    x_ptr, inner_ptr, out_ptr, total, d, n_inner,
    PER_UNIT: tl.constexpr, STEPS: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    if PER_UNIT:
        base = (offs % d) * n_inner
    else:
        base = offs * 0
    lo = tl.zeros((BLOCK,), dtype=tl.int64)
    hi = tl.zeros((BLOCK,), dtype=tl.int64) + n_inner
    # invariant: inner[< lo] <= v < inner[>= hi]; the answer is lo once lo == hi
    for _ in tl.static_range(STEPS):
        active = lo < hi
        mid = (lo + hi) // 2
        e = tl.load(inner_ptr + base + mid, mask=mask & active, other=0.0).to(ACC)
        right = e <= v
        lo = tl.where(active & right, mid + 1, lo)
        hi = tl.where(active & (~right), mid, hi)
    tl.store(out_ptr + offs, lo, mask=mask)


@triton.jit
def _joint_kernel(a_ptr, b_ptr, out_ptr, total, nb, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    a = tl.load(a_ptr + offs, mask=mask, other=0)
    b = tl.load(b_ptr + offs, mask=mask, other=0)
    ones = tl.full((BLOCK,), 1, dtype=tl.int32)
    tl.atomic_add(out_ptr + a * nb + b, ones, mask=mask)


def bin_indices(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """(n, d) int64 clipped bin indices."""
    x = x.contiguous()
    n, d = x.shape
    inner = edges[..., 1:-1].contiguous()
    n_inner = inner.shape[-1]
    out = torch.empty(n, d, dtype=torch.long, device=x.device)
    if n_inner == 0:
        return out.zero_()
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    total = n * d
    _bin_kernel[(triton.cdiv(total, _BLOCK),)](
        x, inner, out, total, d, n_inner,
        PER_UNIT=inner.ndim == 2, STEPS=n_inner.bit_length(), ACC=acc, BLOCK=_BLOCK,
    )  # fmt: skip
    return out


def joint_counts(a: torch.Tensor, b: torch.Tensor, na: int, nb: int) -> torch.Tensor:
    """(na, nb) int64 contingency table with global atomics."""
    n = a.shape[0]
    if n >= 2**31:
        raise InvalidInputError(
            f"the Triton joint_counts kernel counts in int32 and takes < 2**31 samples; got {n}. "
            "Use backend='torch' or split the samples and add the tables."
        )
    out = torch.zeros(na * nb, dtype=torch.int32, device=a.device)
    if n:
        _joint_kernel[(triton.cdiv(n, _BLOCK),)](
            a.contiguous(), b.contiguous(), out, n, nb, BLOCK=_BLOCK
        )
    return out.long().view(na, nb)
