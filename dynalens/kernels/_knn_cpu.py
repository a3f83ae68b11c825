"""CPU engines of :mod:`dynalens.kernels.knn` (the ``backend="torch"`` fallback).

kNN (distances and indices, self excluded by index):

* ``d <= KNN_TREE_MAX_DIM`` (16) for L∞, ``d <= L2_TREE_MAX_DIM`` (8) for L2:
  ``scipy.spatial.cKDTree.query(workers=-1)`` (L∞ at n = 10k on KSG joint spaces of
  correlated Gaussians, tree / per-coordinate brute force: 0.21 / 0.48 s at d = 10,
  0.28 / 0.46 at 12, 0.58 / 0.55 at 16; independent Gaussians 0.64 / 0.71 at 16; at
  d = 32 the tree is 2–3× slower, kernels guide §3; for L2 the GEMM brute force wins
  earlier);
* above: brute force in chunked torch — for L∞ the per-coordinate engine below, for L2 a
  centred GEMM with exact re-ranking of ``k + 4`` candidates.

L∞ distance tiles on CPU (:func:`max_tiles`): ``torch.cdist(p=inf)`` reduces each pair's
coordinates with a horizontal vector reduction; instead each tile of rows is built one
coordinate at a time over all columns — broadcast subtraction, ``abs_`` and ``maximum`` into
two reused cache-sized buffers (``LINF_TILE_ELEMS``), so the work is three vectorised passes
per coordinate over data in L2 cache. The same values bit for bit (one rounding per
subtraction). Measured at n = 10k, d = 32, k = 3, 2 threads: 0.85 s for the kNN against
1.40 s for ``cdist`` + ``topk`` and 1.45 s for scikit-learn's brute engine (``chebyshev``);
tile rows 8 / 16 / 24 / 32 / 48 at n = 10k: 1.32 / 0.98 / 0.87 / 0.85 / 0.88 s (small
tiles pay the ~10 µs per torch call; large ones leave L2). On other devices ``cdist``
tiles (a GPU would pay a kernel launch per coordinate).

Radius counts, cost rule. Seconds for scikit-learn's ``KDTree(metric="chebyshev")
.query_radius(count_only=True)`` / the blocked brute force (2 threads, per-coordinate
tiles), n = 10 000 Gaussian points:

====  ==================================  ===========================
d     KSG marginal radii (~200 inside)    own k = 3 radii (~3 inside)
====  ==================================  ===========================
2     0.05 / 0.15                         --
3     0.11 / 0.31                         --
4     0.20 / 0.24                         0.05 / 0.20
5     0.28 / 0.23                         --
6     0.34 / 0.24                         0.11 / 0.29
8     0.57 / 0.28                         0.16 / 0.29
10    --                                  0.30 / 0.36
12    --                                  0.51 / 0.51
16    --                                  1.34 / 0.51
====  ==================================  ===========================

The tree's cost grows with the dimension and with the number of points inside the balls;
the brute force's does neither much. Rule for L∞ counts: the scikit-learn tree up to
``COUNT_TREE_ALWAYS_DIM`` (4) dimensions; up to ``COUNT_TREE_MAX_DIM`` (12) when the mean
count inside the balls, estimated exactly on ``_COUNT_SAMPLE`` evenly spaced rows, is at
most ``COUNT_TREE_MAX_INSIDE`` (32); brute force otherwise. scipy's
``cKDTree.query_ball_point(return_length=True)`` walks every point inside the ball (2-5x
slower than scikit-learn's node counts at KSG radii); without scikit-learn, L∞ counts use
``cKDTree`` up to 8 dimensions. L2 counts use ``cKDTree`` for ``d <= L2_TREE_MAX_DIM``
(8). The L2 brute force compares expanded (GEMM) squared distances with a band of ± twice
their rounding bound around r² and re-checks only the entries of rows with something in
the band, exactly.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator

import numpy as np
import torch

from dynalens.kernels._dispatch import compute_dtype

#: Largest dimension for which the L∞ kNN uses scipy's KD-tree.
KNN_TREE_MAX_DIM = 16
#: Largest dimension for which the L2 kNN and L2 radius counts use scipy's KD-tree.
L2_TREE_MAX_DIM = 8
#: Largest dimension for which L∞ radius counts use scikit-learn's KD-tree (cost rule above)
#: when the balls hold few points; up to COUNT_TREE_ALWAYS_DIM whatever they hold.
COUNT_TREE_MAX_DIM = 12
COUNT_TREE_ALWAYS_DIM = 4
#: with one torch thread the brute force is ~2x slower than in the table (2 threads), so
#: the tree wins at KSG marginal radii up to 8 dimensions (0.57 s vs ~0.56 s at d = 8)
SINGLE_THREAD_TREE_DIM = 8
#: Mean number of points inside the balls up to which the tree wins above ALWAYS_DIM.
COUNT_TREE_MAX_INSIDE = 32
#: Query rows on which that mean is counted (exactly, by brute force).
_COUNT_SAMPLE = 128
#: Elements of one L∞ distance tile off the CPU (``cdist`` tiles, 16 MiB of float32).
TILE_ELEMS = 1 << 22
#: Elements of one L∞ tile of the per-coordinate CPU engine: two float32 buffers of 1 MiB
#: stay in L2 cache (module docstring; ~26 rows at n = 10k).
LINF_TILE_ELEMS = 1 << 18
#: Elements of one tile of the L2 (GEMM) brute force, written into one reused buffer:
#: 4 MiB of float32 (~100 rows at n = 10k). Measured at n = 10k, d = 32, 2 threads: a
#: fresh 16 MiB tile per block spent more in first-touch page faults than in the GEMM
#: (addmm 100-430 ms in total vs 42 ms into a reused buffer).
GEMM_TILE_ELEMS = 1 << 20
#: Extra candidates re-ranked exactly in the Euclidean GEMM path (rows whose k-th exact
#: distance is not certified against the last candidate are redone exactly).
_EXTRA = 4


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def row_block(n: int, elems: int = TILE_ELEMS) -> int:
    return max(8, min(n, elems // max(1, n)))


def shifted_sq_tile(
    xc: torch.Tensor, sq: torch.Tensor, s: int, e: int, out: torch.Tensor
) -> torch.Tensor:
    """``‖x_j‖² − 2 x_i·x_j`` for rows s:e of centred x, into ``out[: e - s]``: the squared
    distance less the per-row constant ``‖x_i‖²`` (same order within a row)."""
    return torch.addmm(sq[None, :], xc[s:e], xc.T, alpha=-2.0, out=out[: e - s])


def linf_block(x: torch.Tensor) -> int:
    """Rows per tile of :func:`max_tiles` for x (n × d) on its device."""
    elems = LINF_TILE_ELEMS if x.device.type == "cpu" else TILE_ELEMS
    return row_block(x.shape[0], elems)


def max_tiles(x: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Row blocks ``(s, e, D)`` of the L∞ distance matrix of x to itself,
    ``D_ij = max_k |x_(s+i)k − x_jk|`` (one rounding per coordinate), ``linf_block(x)`` rows
    each. On CPU D is a reused buffer, valid until the next block: use it, don't keep it."""
    n = x.shape[0]
    R = linf_block(x)
    if x.device.type != "cpu" or x.shape[1] == 0:
        for s in range(0, n, R):
            e = min(n, s + R)
            yield s, e, torch.cdist(x[s:e], x, p=math.inf)
        return
    xt = x.T.contiguous()  # one coordinate per row: each pass reads contiguous columns
    out = torch.empty(R, n, dtype=x.dtype)
    tmp = torch.empty(R, n, dtype=x.dtype)
    for s in range(0, n, R):
        e = min(n, s + R)
        o, t = out[: e - s], tmp[: e - s]
        torch.sub(xt[0, s:e, None], xt[0, None, :], out=o).abs_()
        for k in range(1, xt.shape[0]):
            torch.sub(xt[k, s:e, None], xt[k, None, :], out=t).abs_()
            torch.maximum(o, t, out=o)
        yield s, e, o


def _drop_self(dist: np.ndarray, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """From a (n, k+1) query of the points themselves, drop the column holding i (or, when
    i is not among them because of > k exact duplicates, the last column)."""
    n = idx.shape[0]
    k = idx.shape[1] - 1
    if (idx[:, 0] == np.arange(n)).all():  # the usual case: each point first in its list
        d0 = np.ascontiguousarray(dist[:, 1:])
        i0 = np.ascontiguousarray(idx[:, 1:]).astype(np.int64, copy=False)
        return torch.from_numpy(d0), torch.from_numpy(i0)
    self_mask = idx == np.arange(n)[:, None]
    self_mask[~self_mask.any(1), -1] = True
    keep = ~self_mask
    d = np.ascontiguousarray(dist[keep].reshape(n, k))
    i = np.ascontiguousarray(idx[keep].reshape(n, k)).astype(np.int64, copy=False)
    return torch.from_numpy(d), torch.from_numpy(i)


# --------------------------------------------------------------------------- kNN


def _knn_tree(x: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.spatial import cKDTree

    pts = x.numpy().astype(np.float64, copy=False)
    p = math.inf if metric == "max" else 2.0
    dist, idx = cKDTree(pts).query(pts, k=k + 1, p=p, workers=-1)
    # float64 distances of float32 points, rounded once: for L∞ equal to the direct value
    d, i = _drop_self(dist, idx)
    return d.to(x.dtype), i


def _knn_brute_max(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    out = torch.empty(n, k, dtype=x.dtype, device=x.device)
    idx = torch.empty(n, k, dtype=torch.long, device=x.device)
    for s, e, tile in max_tiles(x):
        ar = torch.arange(e - s, device=x.device)
        tile[ar, ar + s] = math.inf
        torch.topk(tile, k, dim=1, largest=False, sorted=True, out=(out[s:e], idx[s:e]))
    return out, idx


def direct_sq(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return (x[i] - x[j]).pow_(2).sum(-1)


def expanded_tol(xc: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """Per-row bound on the error of the expanded squared distance (rounding analysis)."""
    eps = torch.finfo(xc.dtype).eps
    return (2 * xc.shape[1] + 8) * eps * (sq + sq.max())


def _knn_brute_euclid(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    xc = x - x.mean(0)
    sq = xc.pow(2).sum(1)
    tol = expanded_tol(xc, sq)
    m = min(n - 1, k + _EXTRA)
    out = torch.empty(n, k, dtype=x.dtype, device=x.device)
    idx = torch.empty(n, k, dtype=torch.long, device=x.device)
    R = row_block(n, GEMM_TILE_ELEMS)
    buf = torch.empty(R, n, dtype=x.dtype, device=x.device)
    for s in range(0, n, R):
        e = min(n, s + R)
        tile = shifted_sq_tile(xc, sq, s, e, buf)
        ar = torch.arange(e - s, device=x.device)
        tile[ar, ar + s] = math.inf
        cand = tile.topk(m, dim=1, largest=False, sorted=True)
        rows = torch.arange(s, e, device=x.device)
        exact = direct_sq(xc, rows[:, None], cand.indices)
        best, pos = exact.topk(k, dim=1, largest=False, sorted=True)
        bidx = cand.indices.gather(1, pos)
        if m < n - 1:
            # certified when no non-candidate can beat the k-th exact distance: every
            # non-candidate's expanded value is >= the last candidate's, and each is within
            # tol of its exact squared distance
            last = cand.values[:, -1] + sq[s:e]
            bad = best[:, -1] > last - 2 * tol[s:e]
            for r in torch.nonzero(bad).flatten().tolist():
                i = s + r
                dist = direct_sq(xc, torch.full((n,), i, device=x.device), torch.arange(n))
                dist[i] = math.inf
                best[r], bidx[r] = dist.topk(k, largest=False, sorted=True)
        out[s:e], idx[s:e] = best, bidx
    return out.sqrt_(), idx


def knn(x: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) ascending distances and int64 indices, self excluded by index."""
    x = x.to(compute_dtype(x))
    limit = KNN_TREE_MAX_DIM if metric == "max" else L2_TREE_MAX_DIM
    if x.device.type == "cpu" and x.shape[1] <= limit and has("scipy"):
        return _knn_tree(x, k, metric)
    if metric == "max":
        return _knn_brute_max(x, k)
    return _knn_brute_euclid(x, k)


# --------------------------------------------------------------------------- radius counts


def count_brute(x: torch.Tensor, r: torch.Tensor, metric: str, strict: bool) -> torch.Tensor:
    n = x.shape[0]
    counts = torch.empty(n, dtype=torch.long, device=x.device)
    if metric == "max":
        for s, e, tile in max_tiles(x):
            rr = r[s:e, None]
            counts[s:e] = (tile < rr if strict else tile <= rr).sum(1)
    else:
        # expanded squared distances without the per-row term: t_ij = ‖x_j‖² − 2 x_i·x_j,
        # compared with (r_i² ∓ 2 tol_i) − ‖x_i‖²; a row's count is certain when no entry
        # falls in the band around r_i², and only such rows are re-checked exactly
        xc = x - x.mean(0)
        sq = xc.pow(2).sum(1)
        tol = expanded_tol(xc, sq)
        r2 = r * r
        R = row_block(n, GEMM_TILE_ELEMS)
        buf = torch.empty(R, n, dtype=torch.bool, device=x.device)
        tiles = torch.empty(R, n, dtype=x.dtype, device=x.device)
        for s in range(0, n, R):
            e = min(n, s + R)
            tile = shifted_sq_tile(xc, sq, s, e, tiles)
            ar = torch.arange(e - s, device=x.device)
            tile[ar, ar + s] = -sq[s:e]  # the point itself: exactly 0 after the shift
            lo = (r2[s:e] - 2 * tol[s:e] - sq[s:e])[:, None]
            hi = (r2[s:e] + 2 * tol[s:e] - sq[s:e])[:, None]
            b = buf[: e - s]
            c = torch.lt(tile, lo, out=b).sum(1, dtype=torch.int32).long()
            c_hi = torch.le(tile, hi, out=b).sum(1, dtype=torch.int32).long()
            rows = torch.nonzero(c_hi > c).flatten()
            if rows.numel():
                sub = tile[rows]
                amb = torch.nonzero((sub >= lo[rows]) & (sub <= hi[rows]))
                local, j = rows[amb[:, 0]], amb[:, 1]
                dist = direct_sq(xc, local + s, j).sqrt_()
                ok = dist < r[local + s] if strict else dist <= r[local + s]
                c.index_add_(0, local, ok.long())
            counts[s:e] = c
    # the point itself (distance 0) was counted when 0 < r (strict) or 0 <= r
    self_in = (r > 0) if strict else (r >= 0)
    return counts - self_in.long()


def thresholds(r: torch.Tensor, strict: bool) -> np.ndarray:
    """Float64 thresholds t with ``round(d) < r  <=>  d <= t`` (``<=`` if not strict).

    The KD-tree paths compare float64 distances d, which the kNN paths round once to the
    compute precision; rounding is monotone, so comparing round(d) with r is comparing d
    with the rounding boundary next to r; at an exact midpoint round-half-even decides.
    """
    if r.dtype == torch.float64:
        rad = r.numpy()
        return np.nextafter(rad, -np.inf) if strict else rad.copy()
    r32 = r.numpy().astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        other = np.nextafter(r32, np.float32(-np.inf if strict else np.inf))
        low, high = (other, r32) if strict else (r32, other)
        mid = (low.astype(np.float64) + high.astype(np.float64)) / 2
    # values at the midpoint round to the neighbour with an even last bit
    low_even = (low.view(np.int32) & 1) == 0
    t = np.where(low_even, mid, np.nextafter(mid, -np.inf))
    t = np.where(np.isinf(r32), r32.astype(np.float64), t)
    if strict:
        t = np.where(r32 <= 0, -1.0, t)
    return t


def _sklearn_counts(pts: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``#{j : max-dist(p_i, p_j) <= t_i}`` (self included) with scikit-learn's KDTree.

    One thread: splitting the queries over a thread pool measured no faster (0.25 vs
    0.26 s at d = 5, slower at d = 12; two concurrent queries took 1.5x the time of two
    sequential ones, i.e. the GIL is not released in practice)."""
    from sklearn.neighbors import KDTree

    return np.asarray(KDTree(pts, metric="chebyshev").query_radius(pts, t, count_only=True))


def count_tree(x: torch.Tensor, r: torch.Tensor, metric: str, strict: bool) -> torch.Tensor:
    """Counts with a KD-tree; thresholds make them agree exactly with the rounded distances
    of the kNN paths. Assumes the tree applies (see :func:`tree_counts_apply`)."""
    n = x.shape[0]
    pts = x.numpy().astype(np.float64, copy=False)
    t = thresholds(r, strict)
    counts = np.zeros(n, dtype=np.int64)
    pos = t >= 0
    if pos.any():
        if metric == "max" and has("sklearn"):
            # a negative threshold counts nothing (distances are >= 0)
            counts = _sklearn_counts(pts, t).astype(np.int64, copy=False)
        else:
            from scipy.spatial import cKDTree

            p = math.inf if metric == "max" else 2.0
            counts[pos] = cKDTree(pts).query_ball_point(
                pts[pos], t[pos], p=p, workers=-1, return_length=True
            )
    self_in = (r > 0) if strict else (r >= 0)
    return torch.from_numpy(counts) - self_in.long()


def _always_tree_dim() -> int:
    """COUNT_TREE_ALWAYS_DIM with a torch thread pool; SINGLE_THREAD_TREE_DIM when torch
    runs on one thread (the brute force then takes twice the table's time, the
    scikit-learn tree does not change)."""
    return COUNT_TREE_ALWAYS_DIM if torch.get_num_threads() > 1 else SINGLE_THREAD_TREE_DIM


def tree_counts_apply(x: torch.Tensor, metric: str) -> bool:
    """The cost rule of the module docstring."""
    if x.device.type != "cpu":
        return False
    d = x.shape[1]
    if metric == "max" and has("sklearn"):
        return d <= COUNT_TREE_MAX_DIM
    return d <= L2_TREE_MAX_DIM and has("scipy")


def _mean_inside(x: torch.Tensor, r: torch.Tensor) -> float:
    """Mean L∞ count inside the balls (self included) over evenly spaced query rows."""
    n = x.shape[0]
    rows = torch.linspace(0, n - 1, min(n, _COUNT_SAMPLE), device=x.device).long()
    inside = torch.cdist(x[rows], x, p=math.inf) <= r[rows, None]
    return float(inside.sum()) / len(rows)


def counts(x: torch.Tensor, r: torch.Tensor, metric: str, strict: bool) -> torch.Tensor:
    """(n,) int64 radius counts, self excluded by index (x, r in the compute dtype)."""
    if tree_counts_apply(x, metric) and (
        metric != "max"
        or not has("sklearn")
        or x.shape[1] <= _always_tree_dim()
        or _mean_inside(x, r) <= COUNT_TREE_MAX_INSIDE
    ):
        return count_tree(x, r, metric, strict)
    return count_brute(x, r, metric, strict)
