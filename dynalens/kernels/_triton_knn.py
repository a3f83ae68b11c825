"""Triton kernels of :mod:`dynalens.kernels.knn` (imported lazily; imports triton).

Distances use direct differences (a [BM, BN, BD] broadcast per dimension chunk), so exact
duplicates are at distance exactly 0 and L∞ distances equal the torch fallback's bit for bit.
The kNN kernel keeps, per row, an unsorted set of the k best distances and their column
indices (padded to a power of two with −inf, which are never replaced); each column tile
hands over its k smallest by k rounds of ``tl.min(..., return_indices=True)`` extraction —
exact with ties, cheap for the small k of KSG (3–10), and fast in the interpreter
(``tl.topk`` is ~30× slower there).
The count kernel compares the same distances with the per-row radius.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dynalens.errors import InvalidParameterError
from dynalens.kernels._dispatch import interpret_prune, next_pow2

#: Largest k of the Triton kNN kernel (the selection is unrolled k times).
MAX_K = 64

_CONFIGS = [
    triton.Config({"BM": 32, "BN": 64, "BD": 16}, num_warps=4),  # first: the interpreter's
    triton.Config({"BM": 32, "BN": 32, "BD": 4}, num_warps=4),
    triton.Config({"BM": 64, "BN": 32, "BD": 4}, num_warps=4),
    triton.Config({"BM": 64, "BN": 64, "BD": 2}, num_warps=8),
    triton.Config({"BM": 32, "BN": 64, "BD": 8}, num_warps=8),
]
_PRUNE = {"early_config_prune": interpret_prune}


@triton.jit
def _dist_tile(
    x_ptr, rows, cols, n, d,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    MAXNORM: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """L∞ distance or squared L2 distance of rows × cols, [BM, BN] in ACC."""
    acc = tl.zeros((BM, BN), dtype=ACC)
    rmask = rows < n
    cmask = cols < n
    for d0 in range(0, d, BD):
        dd = d0 + tl.arange(0, BD)
        dmask = dd < d
        xa = tl.load(
            x_ptr + rows[:, None] * d + dd[None, :],
            mask=rmask[:, None] & dmask[None, :],
            other=0.0,
        ).to(ACC)
        xb = tl.load(
            x_ptr + cols[:, None] * d + dd[None, :],
            mask=cmask[:, None] & dmask[None, :],
            other=0.0,
        ).to(ACC)
        diff = xa[:, None, :] - xb[None, :, :]
        if MAXNORM:
            acc = tl.maximum(acc, tl.max(tl.abs(diff), axis=2))
        else:
            acc += tl.sum(diff * diff, axis=2)
    return acc


@triton.jit
def _sqrt(v, ACC: tl.constexpr):
    """Correctly rounded square root (``tl.sqrt`` is approximate for fp32 on the GPU)."""
    if ACC == tl.float64:
        return tl.sqrt(v)
    else:
        return tl.sqrt_rn(v)


@triton.autotune(configs=_CONFIGS, key=["n", "d"], prune_configs_by=_PRUNE)
@triton.jit
def _knn_kernel(
    x_ptr, out_ptr, idx_ptr, n, d,
    K: tl.constexpr, KP: tl.constexpr, MAXNORM: tl.constexpr, ACC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    slots = tl.arange(0, KP)
    # unsorted k best per row; padding slots hold -inf so that they are never the max
    best = tl.where(slots[None, :] < K, float("inf"), float("-inf")) + tl.zeros((BM, KP), ACC)
    # column index of each slot (-1 while empty)
    bidx = tl.full((BM, KP), -1, dtype=tl.int32)
    for start in range(0, n, BN):
        cols = start + tl.arange(0, BN)
        dist = _dist_tile(x_ptr, rows, cols, n, d, BM, BN, BD, MAXNORM, ACC)
        drop = (cols[None, :] >= n) | (cols[None, :] == rows[:, None])
        dist = tl.where(drop, float("inf"), dist)
        lanes = tl.arange(0, BN)
        for _ in tl.static_range(K):
            mn, arg = tl.min(dist, axis=1, return_indices=True)
            worst, slot = tl.max(best, axis=1, return_indices=True)
            take = (mn < worst)[:, None] & (slots[None, :] == slot[:, None])
            best = tl.where(take, mn[:, None], best)
            bidx = tl.where(take, (start + arg)[:, None], bidx)
            dist = tl.where(lanes[None, :] == arg[:, None], float("inf"), dist)
    best = tl.where(slots[None, :] < K, best, float("inf"))
    rmask = rows < n
    for j in tl.static_range(K):
        mn, arg = tl.min(best, axis=1, return_indices=True)
        hit = slots[None, :] == arg[:, None]
        col = tl.sum(tl.where(hit, bidx, 0), axis=1)
        if not MAXNORM:
            mn = _sqrt(mn, ACC)
        tl.store(out_ptr + rows.to(tl.int64) * K + j, mn, mask=rmask)
        tl.store(idx_ptr + rows.to(tl.int64) * K + j, col.to(tl.int64), mask=rmask)
        best = tl.where(hit, float("inf"), best)


@triton.autotune(configs=_CONFIGS, key=["n", "d"], prune_configs_by=_PRUNE)
@triton.jit
def _count_kernel(
    x_ptr, r_ptr, out_ptr, n, d,
    STRICT: tl.constexpr, MAXNORM: tl.constexpr, ACC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < n
    r = tl.load(r_ptr + rows, mask=rmask, other=0.0)
    count = tl.zeros((BM,), dtype=tl.int32)
    for start in range(0, n, BN):
        cols = start + tl.arange(0, BN)
        dist = _dist_tile(x_ptr, rows, cols, n, d, BM, BN, BD, MAXNORM, ACC)
        if not MAXNORM:
            dist = _sqrt(dist, ACC)
        if STRICT:
            inside = dist < r[:, None]
        else:
            inside = dist <= r[:, None]
        keep = inside & (cols[None, :] < n) & (cols[None, :] != rows[:, None])
        count += tl.sum(keep.to(tl.int32), axis=1)
    tl.store(out_ptr + rows, count, mask=rmask)


def _acc(x: torch.Tensor):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def knn(x: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) ascending neighbour distances and int64 indices (streaming selection)."""
    if k > MAX_K:
        raise InvalidParameterError(
            f"the Triton kNN kernel supports k <= {MAX_K}; got k={k}. Use backend='torch'."
        )
    x = x.contiguous()
    n, d = x.shape
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty(n, k, dtype=dt, device=x.device)
    idx = torch.empty(n, k, dtype=torch.int64, device=x.device)

    def grid(meta):
        return (triton.cdiv(n, meta["BM"]),)

    _knn_kernel[grid](x, out, idx, n, d, K=k, KP=next_pow2(k), MAXNORM=metric == "max", ACC=_acc(x))
    return out, idx


def counts(x: torch.Tensor, r: torch.Tensor, metric: str, strict: bool) -> torch.Tensor:
    """(n,) int64 radius counts, self excluded by index."""
    x = x.contiguous()
    n, d = x.shape
    r = r.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    out = torch.empty(n, dtype=torch.int32, device=x.device)

    def grid(meta):
        return (triton.cdiv(n, meta["BM"]),)

    _count_kernel[grid](x, r, out, n, d, STRICT=strict, MAXNORM=metric == "max", ACC=_acc(x))
    return out.long()
