"""Triton kernels of :mod:`dynalens.kernels.ghost_norm` (imported lazily; imports triton).

Ghost form: program (i, j, b) forms the (BT × BT) blocks ``A_i A_jᵀ`` and ``G_i G_jᵀ`` of the two
Gram matrices of example b by ``tl.dot`` over feature chunks, multiplies them elementwise and
writes one partial sum; only blocks j >= i do work (off-diagonal blocks count twice), so the
T × T Gram matrices are never stored. Materialise form: program (o, i, b) forms a (BO × BI)
block of ``G_bᵀ A_b`` over time chunks and writes its sum of squares. Partials are summed by
torch in a fixed order (deterministic; no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynalens.kernels._dispatch import compute_dtype, next_pow2
from dynalens.kernels.ghost_norm import ghost_is_cheaper

#: ``tl.dot`` precision for float32 inputs (see _triton_gauss.DOT_PRECISION).
DOT_PRECISION = "ieee"


@triton.jit
def _gram_block(
    p_ptr, b, ti, tj, T, dim,
    BT: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr, ACTIVE,
):  # fmt: skip
    """(BT × BT) block ``P_b[ti] P_b[tj]ᵀ`` of example b's Gram matrix (0 when not ACTIVE)."""
    acc = tl.zeros((BT, BT), dtype=ACC)
    base = p_ptr + b.to(tl.int64) * T * dim
    stop = tl.where(ACTIVE, dim, 0)
    for k0 in range(0, stop, BK):
        kk = k0 + tl.arange(0, BK)
        kmask = kk < dim
        u = tl.load(
            base + ti[:, None] * dim + kk[None, :],
            mask=(ti[:, None] < T) & kmask[None, :],
            other=0.0,
        ).to(ACC)
        v = tl.load(
            base + tj[None, :] * dim + kk[:, None],
            mask=(tj[None, :] < T) & kmask[:, None],
            other=0.0,
        ).to(ACC)
        acc = tl.dot(u, v, acc, input_precision=PREC)
    return acc


@triton.jit
def _ghost_kernel(
    a_ptr, g_ptr, part_ptr, T, d_in, d_out,
    BT: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    j = tl.program_id(1)
    b = tl.program_id(2)
    nt = tl.num_programs(0)
    ti = i * BT + tl.arange(0, BT)
    tj = j * BT + tl.arange(0, BT)
    active = j >= i
    ga = _gram_block(a_ptr, b, ti, tj, T, d_in, BT, BK, ACC, PREC, active)
    gg = _gram_block(g_ptr, b, ti, tj, T, d_out, BT, BK, ACC, PREC, active)
    weight = tl.where(j > i, 2.0, tl.where(j == i, 1.0, 0.0))
    part = tl.sum(tl.sum(ga * gg, axis=1), axis=0) * weight
    tl.store(part_ptr + (b.to(tl.int64) * nt + i) * nt + j, part.to(ACC))


@triton.jit
def _materialise_kernel(
    a_ptr, g_ptr, part_ptr, T, d_in, d_out,
    BO: tl.constexpr, BI: tl.constexpr, BT: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    po = tl.program_id(0)
    pi = tl.program_id(1)
    b = tl.program_id(2)
    oo = po * BO + tl.arange(0, BO)
    ii = pi * BI + tl.arange(0, BI)
    w = tl.zeros((BO, BI), dtype=ACC)
    a_base = a_ptr + b.to(tl.int64) * T * d_in
    g_base = g_ptr + b.to(tl.int64) * T * d_out
    for t0 in range(0, T, BT):
        tt = t0 + tl.arange(0, BT)
        tmask = tt < T
        gt = tl.load(
            g_base + tt[None, :] * d_out + oo[:, None],
            mask=tmask[None, :] & (oo[:, None] < d_out),
            other=0.0,
        ).to(ACC)
        at = tl.load(
            a_base + tt[:, None] * d_in + ii[None, :],
            mask=tmask[:, None] & (ii[None, :] < d_in),
            other=0.0,
        ).to(ACC)
        w = tl.dot(gt, at, w, input_precision=PREC)
    part = tl.sum(tl.sum(w * w, axis=1), axis=0)
    npo = tl.num_programs(0)
    npi = tl.num_programs(1)
    tl.store(part_ptr + (b.to(tl.int64) * npo + po) * npi + pi, part.to(ACC))


def sq_norms(a: torch.Tensor, g: torch.Tensor, bias: bool) -> torch.Tensor:
    """(B,) squared weight-gradient norms (plus bias term) with the cheaper kernel."""
    dt = compute_dtype(a, g)
    if a.dtype != g.dtype:
        a, g = a.to(dt), g.to(dt)
    a, g = a.contiguous(), g.contiguous()
    B, T, d_in = a.shape
    d_out = g.shape[2]
    acc = tl.float64 if dt == torch.float64 else tl.float32
    if ghost_is_cheaper(T, d_in, d_out):
        bt = max(16, min(64, next_pow2(T)))
        bk = max(16, min(64, next_pow2(max(d_in, d_out))))
        nt = triton.cdiv(T, bt)
        part = torch.empty(B, nt, nt, dtype=dt, device=a.device)
        _ghost_kernel[(nt, nt, B)](
            a, g, part, T, d_in, d_out, BT=bt, BK=bk, ACC=acc, PREC=DOT_PRECISION
        )
    else:
        bo = max(16, min(64, next_pow2(d_out)))
        bi = max(16, min(64, next_pow2(d_in)))
        bt = max(16, min(64, next_pow2(T)))
        grid = (triton.cdiv(d_out, bo), triton.cdiv(d_in, bi), B)
        part = torch.empty(B, grid[0], grid[1], dtype=dt, device=a.device)
        _materialise_kernel[grid](
            a, g, part, T, d_in, d_out, BO=bo, BI=bi, BT=bt, ACC=acc, PREC=DOT_PRECISION
        )
    out = part.sum((1, 2))
    if bias:
        out = out + g.to(dt).sum(1).pow(2).sum(1)
    return out
