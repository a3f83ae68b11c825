"""Triton kernels of :mod:`dynalens.kernels.gauss_lse` (imported lazily; imports triton).

Each program owns BM query rows and streams over BN-column tiles of y. Squared distances come
from the centred expanded form ``‖x̃_i‖² + ‖ỹ_j‖² − 2 x̃_i·ỹ_j`` (x̃ = x − c, ỹ = y − c with c the
mean of y, subtracted right after loading; norms are accumulated from the same tiles), clamped
at 0, with an exact 0 on the diagonal when y is x. The LSE keeps FlashAttention's online
(max, sum) pair in base 2; the Gram kernel writes ``exp2(−d² log2(e) / (2 var))`` per tile.
Inputs of any float dtype are converted to the accumulation dtype right after loading (bf16
arithmetic is not supported by the interpreter).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from dynalens.kernels._dispatch import compute_dtype, interpret_prune, next_pow2

#: ``tl.dot`` precision for float32 inputs. "ieee" is exact fp32 (FFMA) on the GPU; "tf32x3"
#: is close to fp32 and ~2.5× faster on H100; "tf32" is 4000× less precise (see kernels.md §6).
DOT_PRECISION = "ieee"

_CONFIGS = [
    triton.Config({"BM": 32, "BN": 32}, num_warps=4),  # first: the interpreter's (tests)
    triton.Config({"BM": 64, "BN": 64}, num_warps=4),
    triton.Config({"BM": 128, "BN": 64}, num_warps=4),
    triton.Config({"BM": 128, "BN": 128}, num_warps=8),
    triton.Config({"BM": 64, "BN": 128}, num_warps=4),
]
_PRUNE = {"early_config_prune": interpret_prune}


@triton.jit
def _sqdist_tile(
    x_ptr, y_ptr, c_ptr, rows, cols, n, m, d,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Clamped squared distances of centred rows × columns, [BM, BN] in ACC."""
    dot = tl.zeros((BM, BN), dtype=ACC)
    nx = tl.zeros((BM,), dtype=ACC)
    ny = tl.zeros((BN,), dtype=ACC)
    rmask = rows < n
    cmask = cols < m
    for d0 in range(0, d, BD):
        dd = d0 + tl.arange(0, BD)
        dmask = dd < d
        c = tl.load(c_ptr + dd, mask=dmask, other=0.0).to(ACC)
        xa = tl.load(
            x_ptr + rows[:, None] * d + dd[None, :],
            mask=rmask[:, None] & dmask[None, :],
            other=0.0,
        ).to(ACC)
        yb = tl.load(
            y_ptr + cols[:, None] * d + dd[None, :],
            mask=cmask[:, None] & dmask[None, :],
            other=0.0,
        ).to(ACC)
        xa = tl.where(dmask[None, :], xa - c[None, :], 0.0)
        yb = tl.where(dmask[None, :], yb - c[None, :], 0.0)
        nx += tl.sum(xa * xa, axis=1)
        ny += tl.sum(yb * yb, axis=1)
        dot = tl.dot(xa, tl.trans(yb), dot, input_precision=PREC)
    sq = nx[:, None] + ny[None, :] - 2.0 * dot
    return tl.maximum(sq, 0.0)


@triton.autotune(configs=_CONFIGS, key=["n", "m", "d"], prune_configs_by=_PRUNE)
@triton.jit
def _lse_kernel(
    x_ptr, y_ptr, c_ptr, out_ptr, n, m, d, neg_scale2,
    SAME: tl.constexpr, EXCL: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    m_i = tl.full((BM,), float("-inf"), dtype=ACC)
    l_i = tl.zeros((BM,), dtype=ACC)
    for start in range(0, m, BN):
        cols = start + tl.arange(0, BN)
        sq = _sqdist_tile(x_ptr, y_ptr, c_ptr, rows, cols, n, m, d, BM, BN, BD, ACC, PREC)
        is_self = rows[:, None] == cols[None, :]
        if SAME:
            sq = tl.where(is_self, 0.0, sq)
        s = sq * neg_scale2  # base-2 logits
        drop = cols[None, :] >= m
        if EXCL:
            drop = drop | is_self
        s = tl.where(drop, float("-inf"), s)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), axis=1)
        m_i = m_new
    out = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(out_ptr + rows, out.to(ACC), mask=rows < n)


@triton.autotune(configs=_CONFIGS, key=["n", "m", "d"], prune_configs_by=_PRUNE)
@triton.jit
def _gram_kernel(
    x_ptr, y_ptr, c_ptr, out_ptr, n, m, d, neg_scale2,
    SAME: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    sq = _sqdist_tile(x_ptr, y_ptr, c_ptr, rows, cols, n, m, d, BM, BN, BD, ACC, PREC)
    if SAME:
        sq = tl.where(rows[:, None] == cols[None, :], 0.0, sq)
    val = tl.exp2(sq * neg_scale2)
    offs = rows.to(tl.int64)[:, None] * m + cols[None, :]
    tl.store(out_ptr + offs, val.to(ACC), mask=(rows[:, None] < n) & (cols[None, :] < m))


def _prepare(x: torch.Tensor, y: torch.Tensor, same: bool):
    dt = compute_dtype(x, y)
    x = x.contiguous()
    y = x if same else y.contiguous()
    if y.dtype != x.dtype:  # mixed input dtypes: one pointer type per kernel argument
        x, y = x.to(dt), y.to(dt)
    c = y.to(dt).mean(0).contiguous()
    acc = tl.float64 if dt == torch.float64 else tl.float32
    bd = max(16, min(64, next_pow2(x.shape[1])))
    return x, y, c, dt, acc, bd


def lse(x: torch.Tensor, y: torch.Tensor, var: float, excl: bool, same: bool) -> torch.Tensor:
    """Row LSE of the Gaussian kernel (natural log) with the streaming kernel."""
    x, y, c, dt, acc, bd = _prepare(x, y, same)
    n, d = x.shape
    m = y.shape[0]
    out = torch.empty(n, dtype=dt, device=x.device)
    neg_scale2 = -math.log2(math.e) / (2.0 * var)

    def grid(meta):
        return (triton.cdiv(n, meta["BM"]),)

    _lse_kernel[grid](
        x, y, c, out, n, m, d, neg_scale2, SAME=same, EXCL=excl, BD=bd, ACC=acc,
        PREC=DOT_PRECISION,
    )  # fmt: skip
    return out


def gram(x: torch.Tensor, y: torch.Tensor, var: float, same: bool) -> torch.Tensor:
    """Gaussian Gram matrix, one program per (BM, BN) output tile."""
    x, y, c, dt, acc, bd = _prepare(x, y, same)
    n, d = x.shape
    m = y.shape[0]
    out = torch.empty(n, m, dtype=dt, device=x.device)
    neg_scale2 = -math.log2(math.e) / (2.0 * var)

    def grid(meta):
        return (triton.cdiv(n, meta["BM"]), triton.cdiv(m, meta["BN"]))

    _gram_kernel[grid](
        x, y, c, out, n, m, d, neg_scale2, SAME=same, BD=bd, ACC=acc, PREC=DOT_PRECISION
    )
    return out
