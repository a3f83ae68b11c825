"""Exact k-nearest-neighbour distances and per-point radius counts (for KSG-type estimators).

Distances between rows of ``x`` (n × d):

* ``metric="max"`` (Chebyshev, L∞): ``dist(x_i, x_j) = max_k |x_ik − x_jk|``, the norm of the
  joint space of the Kraskov–Stögbauer–Grassberger estimator (Kraskov, Stögbauer &
  Grassberger 2004, "Estimating mutual information", Phys. Rev. E 69, 066138);
* ``metric="euclidean"``: ``dist = ‖x_i − x_j‖₂``.

Units are those of ``x``. A point is never its own neighbour (excluded **by index**), but
exact duplicates of it are neighbours at distance exactly 0.

Precision convention: distances are the exact ones rounded to the compute precision
(float32 for float32/bf16/fp16 inputs, float64 for float64). For ``"max"`` every backend
(KD-tree, brute force, Triton) computes exactly that — one rounding per coordinate — so all
return bit-identical distances and identical radius counts, including at ties such as
``radius = k-th distance`` (the KSG case). For ``"euclidean"`` the KD-tree path rounds the
float64 distance once while brute force and Triton sum squares in the compute precision, so
backends agree to a few ulps and counts at a radius within rounding of a distance may differ
*between* backends; within one backend, kNN distances and radius counts are consistent
(``radius_counts(x, knn[:, k-1], strict=True) <= k-1``).

Neighbour indices (:func:`knn`): ``indices[i, j]`` is a row whose distance to x_i is
``distances[i, j]`` (never i itself). Among rows at *equal* distance (exact ties, e.g.
duplicates) which one is returned is unspecified and may differ between backends; the
distances never do.

CPU fallback (:mod:`dynalens.kernels._knn_cpu`, with its measured cost rule):
``scipy.spatial.cKDTree`` kNN for d <= 8 (trees win 50–90× at d <= 2), brute force above
(scikit-learn's compiled pairwise engine for L∞ when installed, chunked torch otherwise: a
GEMM with exact re-ranking for L2); L∞ radius counts with scikit-learn's KD-tree
(``count_only``) for d <= 16 — its cost hardly depends on how many points the
balls hold — L2 counts with ``cKDTree`` for d <= 8, brute force otherwise.
Triton kernel: row tiles stream over column tiles with direct differences and keep the k
smallest (with their column indices) by k rounds of min-extraction (exact with ties).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dynalens._validation import check_bool, check_int, check_option
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.kernels import _knn_cpu
from dynalens.kernels._dispatch import (
    Backend,
    Work,
    as_tensor,
    choose_backend,
    compute_dtype,
    triton_module,
)

__all__ = [
    "knn",
    "knn_distances",
    "knn_distances_reference",
    "knn_reference",
    "radius_counts",
    "radius_counts_reference",
    "work",
]

METRICS = ("max", "euclidean")


def work(n: int, d: int, k: int = 1, *, metric: str = "max", elem_bytes: int = 4) -> Work:
    """Work model for all-pairs kNN / radius counts on n points (direct differences).

    Per pair and dimension: subtract, abs and max (L∞) or subtract and FMA (L2) → ~3 or 2
    flops; plus ~2k flops per pair for the selection epilogue. Bytes: read x once, write
    n·k outputs (a lower bound; tiles are re-read from cache).
    """
    per = 3.0 if metric == "max" else 2.0
    return Work(
        bytes=float(elem_bytes * n * d + 4 * n * k),
        flops=per * n * n * d + 2.0 * k * n * n,
    )


def _check_x(x: Any) -> torch.Tensor:
    x = as_tensor("x", x, ndim=(1, 2))
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise InvalidInputError(
            f"x must have at least 2 rows and 1 column; got shape {tuple(x.shape)}."
        )
    if not bool(torch.isfinite(x).all()):
        raise InvalidInputError(
            "x has non-finite values (nan or inf); drop or impute them before neighbour queries."
        )
    return x


def _pairwise_reference(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    x64, y64 = x.double(), y.double()
    rows = max(1, (1 << 22) // max(1, y.shape[0] * x.shape[1]))
    parts = []
    for s in range(0, x.shape[0], rows):
        diff = x64[s : s + rows, None, :] - y64[None, :, :]
        if metric == "max":
            parts.append(diff.abs().amax(-1))
        else:
            parts.append(diff.pow(2).sum(-1).sqrt())
    return torch.cat(parts)


def knn_reference(x: Any, k: int, *, metric: str = "max") -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 reference: the full distance matrix, diagonal masked, ``topk`` smallest;
    returns (distances, int64 indices)."""
    x = _check_x(x)
    dist = _pairwise_reference(x, x, metric)
    dist.fill_diagonal_(math.inf)
    out = dist.topk(k, dim=1, largest=False, sorted=True)
    return out.values, out.indices


def knn_distances_reference(x: Any, k: int, *, metric: str = "max") -> torch.Tensor:
    """Float64 reference distances (see :func:`knn_reference`)."""
    return knn_reference(x, k, metric=metric)[0]


def radius_counts_reference(
    x: Any, radius: Any, *, metric: str = "max", strict: bool = True
) -> torch.Tensor:
    """Float64 reference: count ``j != i`` with ``dist_ij < radius_i`` (``<=`` if not strict)."""
    x = _check_x(x)
    r = _check_radius(radius, x.shape[0], x.device).double()
    dist = _pairwise_reference(x, x, metric)
    inside = dist < r[:, None] if strict else dist <= r[:, None]
    inside.fill_diagonal_(False)
    return inside.sum(1)


def _check_radius(radius: Any, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(radius, (int, float)) and not isinstance(radius, bool):
        r = torch.full((n,), float(radius), dtype=torch.float64, device=device)
    else:
        r = as_tensor("radius", radius, ndim=(0, 1)).to(device)
        if r.ndim == 0:
            r = r.expand(n)
    if r.shape[0] != n:
        raise InvalidInputError(
            f"radius must be a number or have one entry per row of x ({n}); got shape "
            f"{tuple(r.shape)}."
        )
    if bool(torch.isnan(r).any()):
        raise InvalidInputError("radius has nan entries; pass finite radii (inf is allowed).")
    return r


# --------------------------------------------------------------------------- public API


def _check_k(k: Any, n: int) -> int:
    k = check_int("k", k, min=1)
    if k >= n:
        raise InvalidParameterError(
            f"k must be smaller than the number of rows of x ({n}), since a point is not its "
            f"own neighbour; got k={k}. Lower k or pass more samples."
        )
    return k


def knn(
    x: Any, k: int, *, metric: str = "max", backend: Backend = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest other rows of each row of ``x``: distances (ascending) and indices.

    Args:
        x: (n, d) samples (or (n,), read as d = 1); torch tensor or numpy array.
        k: number of neighbours, 1 <= k < n.
        metric: ``"max"`` (Chebyshev, for KSG) or ``"euclidean"``.
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``(distances, indices)``, both (n, k) on x's device. Distances: row i sorted
        ascending, float64 for float64 x, else float32; column k−1 is the k-th neighbour
        distance ε_i of KSG. Indices: int64, ``dist(x_i, x[indices[i, j]]) ==
        distances[i, j]`` and never i; which row is returned among exact ties is
        unspecified (backend dependent).

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0]])
        >>> d, i = knn(x, 1)
        >>> d.flatten().tolist(), i.flatten().tolist()
        ([1.0, 1.0, 2.0], [1, 0, 1])
    """
    metric = check_option("metric", metric, METRICS)
    x = _check_x(x)
    k = _check_k(k, x.shape[0])
    which = choose_backend(backend, x)
    if which == "reference":
        dist, idx = knn_reference(x, k, metric=metric)
        return dist.to(compute_dtype(x)), idx
    if which == "triton":
        return triton_module("knn").knn(x, k, metric)
    return _knn_cpu.knn(x, k, metric)


def knn_distances(
    x: Any, k: int, *, metric: str = "max", backend: Backend = "auto"
) -> torch.Tensor:
    """Distances from each row of ``x`` to its ``k`` nearest other rows, ascending: the
    first output of :func:`knn` (same arguments).

    Returns:
        (n, k) tensor, row i sorted ascending, on x's device; float64 for float64 x, else
        float32. Column k−1 is the k-th neighbour distance ε_i of KSG.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0]])
        >>> knn_distances(x, 1).flatten().tolist()
        [1.0, 1.0, 2.0]
    """
    return knn(x, k, metric=metric, backend=backend)[0]


def radius_counts(
    x: Any,
    radius: Any,
    *,
    metric: str = "max",
    strict: bool = True,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Number of other rows within a per-row radius: ``#{j != i : dist(x_i, x_j) < r_i}``.

    Args:
        x: (n, d) samples (or (n,)); torch tensor or numpy array.
        radius: a number or an (n,) array of radii (inf allowed); cast to the compute
            precision before comparing.
        metric: ``"max"`` or ``"euclidean"``.
        strict: count ``dist < r_i`` (KSG marginal counts) or, if False, ``dist <= r_i``.
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"``.

    Returns:
        (n,) int64 tensor on x's device.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0]])
        >>> radius_counts(x, 1.0, strict=False).tolist()
        [1, 1, 0]
    """
    metric = check_option("metric", metric, METRICS)
    strict = check_bool("strict", strict)
    x = _check_x(x)
    r = _check_radius(radius, x.shape[0], x.device)
    which = choose_backend(backend, x)
    if which == "reference":
        return radius_counts_reference(x, r, metric=metric, strict=strict)
    dt = compute_dtype(x)
    x, r = x.to(dt), r.to(dt)
    if which == "triton":
        return triton_module("knn").counts(x, r, metric, strict)
    return _knn_cpu.counts(x, r, metric, strict)
