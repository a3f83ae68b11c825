r"""Neighbourhood counts of the Kraskov–Stögbauer–Grassberger (KSG) estimators, in one op.

For paired samples x (n × d_x) and y (n × d_y), with the max-norm in the joint space
z = (x, y) (Kraskov, Stögbauer & Grassberger 2004, "Estimating mutual information",
Phys. Rev. E 69, 066138), ``ksg_counts`` returns per point i:

* ``eps``: ε_i, the distance from z_i to its k-th nearest other z_j (the point itself is
  excluded by index; exact duplicates are neighbours at distance 0);
* ``n_x``, ``n_y``: marginal counts of other points, self excluded,

  - ``variant=1`` (estimator 1, eq. 8): :math:`n_x(i) = \#\{j \ne i : \|x_i - x_j\| <
    \varepsilon_i\}` — except where ε_i = 0, where it counts the exact copies,
    :math:`\#\{j \ne i : x_j = x_i\}` (the tie counts of Gao, Kannan, Oh & Viswanath 2017);
    i.e. ``dist <= below(ε_i)`` with below() the next float towards 0;
  - ``variant=2`` (estimator 2, eq. 9): :math:`n_x(i) = \#\{j \ne i : \|x_i - x_j\| \le
    \varepsilon_x(i)\}` with :math:`\varepsilon_x(i) = \max_{j \in kNN(i)} \|x_i - x_j\|`
    the largest marginal distance among the k joint neighbours (so n_x >= k). Where several
    points tie at the k-th joint distance, which of them count as neighbours is
    unspecified (only continuous data are in the regime of estimator 2).

  The same for y. The MI estimates are then
  :math:`\psi(k) + \psi(N) - \langle\psi(n_x+1) + \psi(n_y+1)\rangle` (1) and
  :math:`\psi(k) - 1/k + \psi(N) - \langle\psi(n_x) + \psi(n_y)\rangle` (2), in nats; see
  :mod:`dynalens.estimators.mi.ksg`.

Precision: distances are computed as in :mod:`dynalens.kernels.knn` (float32 for
float32/bf16/fp16 inputs, one rounding per coordinate, so every backend returns identical
counts; float64 for float64 inputs).

Backends. ``"torch"`` (CPU fallback), cost rule: when ``d_x + d_y <= JOINT_TREE_MAX_DIM``
(10) the joint kNN runs on scipy's KD-tree and the marginal counts by the rule of
:mod:`dynalens.kernels._knn_cpu`; above it a *fused* brute force (measured at n = 10k on
correlated Gaussians, trees then fused: 2+2 0.13 / 0.47 s, 4+4 0.41 / 0.71, 5+5 0.70 /
0.71, 6+6 0.90 / 0.68, 8+8 1.53 / 0.76): each block of rows gets its marginal L∞ tiles ``D_x``
(x_rows to x, :func:`~dynalens.kernels._knn_cpu.max_tiles`) and ``D_y``; the joint tile is
``max(D_x, D_y)`` (equal bit for bit to the joint distance), its k smallest give ε for those
rows, and the counts are read off the same ``D_x``, ``D_y`` before they are dropped — two
marginal distance passes instead of the four (joint kNN + two marginal count passes) of
kNN-then-count, so O(n² (d_x + d_y)) work and O(block · n) memory (cache-sized blocks on
CPU). ``"triton"`` composes the kNN kernel
(with indices) and the count kernel; ``"reference"`` builds the float64 distance matrices.

Example:
    >>> x = torch.tensor([0.0, 1.0, 3.0, 7.0])
    >>> y = torch.tensor([0.0, 2.5, 0.5, 4.0])
    >>> out = ksg_counts(x, y, 1)
    >>> out.eps.tolist(), out.n_x.tolist(), out.n_y.tolist()
    ([2.5, 2.0, 2.0, 4.0], [1, 1, 0, 0], [1, 1, 1, 2])
    >>> ksg_counts(x, y, 1, variant=2).n_x.tolist()
    [1, 2, 1, 1]
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from dynalens._validation import check_int
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.kernels import _knn_cpu
from dynalens.kernels._dispatch import (
    Backend,
    Work,
    check_same_device,
    choose_backend,
    compute_dtype,
)

__all__ = ["JOINT_TREE_MAX_DIM", "KSGCounts", "ksg_counts", "ksg_counts_reference", "work"]

#: Largest joint dimension for which the CPU fallback uses KD-trees (cost rule above).
JOINT_TREE_MAX_DIM = 10
VARIANTS = (1, 2)


class KSGCounts(NamedTuple):
    """Per-point output of :func:`ksg_counts`: eps (n,) in the compute dtype; n_x, n_y (n,)
    int64, self excluded."""

    eps: torch.Tensor
    n_x: torch.Tensor
    n_y: torch.Tensor


def work(n: int, dx: int, dy: int, k: int = 3, *, elem_bytes: int = 4) -> Work:
    """Work model of the fused pass: ~3 flops per pair and dimension (subtract, abs, max),
    ~2k per pair for the selection and 4 per pair for the joint max and the two counts."""
    return Work(
        bytes=float(elem_bytes * n * (dx + dy) + 20 * n),
        flops=3.0 * n * n * (dx + dy) + (2.0 * k + 4.0) * n * n,
    )


def _below(r: torch.Tensor) -> torch.Tensor:
    """Largest float below r (0 stays 0, i.e. 'exactly equal')."""
    return torch.where(r > 0, torch.nextafter(r, torch.zeros_like(r)), r)


def _check(x: Any, y: Any, k: Any, variant: Any) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    from dynalens.kernels.knn import _check_k, _check_x

    x, y = _check_x(x), _check_x(y)
    check_same_device(x=x, y=y)
    if x.shape[0] != y.shape[0]:
        raise InvalidInputError(
            f"x and y must be paired by row (same number of samples); got {x.shape[0]} and "
            f"{y.shape[0]} rows."
        )
    if variant not in VARIANTS or isinstance(variant, bool):
        raise InvalidParameterError(
            f"variant must be 1 (KSG estimator 1: counts strictly inside the joint k-NN "
            f"radius) or 2 (estimator 2: per-marginal radii); got {variant!r}."
        )
    k = _check_k(check_int("k", k, min=1), x.shape[0])
    return x, y, k, int(variant)


def _marginal_counts(
    dx: torch.Tensor,
    idx: torch.Tensor,
    eps: torch.Tensor,
    variant: int,
    buf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Counts of one block of rows from its marginal distance tile (self included)."""
    r = _below(eps) if variant == 1 else dx.gather(1, idx).amax(1)
    inside = torch.le(dx, r[:, None], out=buf) if buf is not None else dx <= r[:, None]
    return inside.sum(1, dtype=torch.int32).long()  # int32 sums measured ~1.4x faster


def ksg_counts_reference(x: Any, y: Any, k: int, *, variant: int = 1) -> KSGCounts:
    """Float64 reference: full distance matrices, ``topk`` of the joint one."""
    from dynalens.kernels.knn import _pairwise_reference

    x, y, k, variant = _check(x, y, k, variant)
    dx = _pairwise_reference(x, x, "max")
    dy = _pairwise_reference(y, y, "max")
    dz = torch.maximum(dx, dy).fill_diagonal_(math.inf)
    eps, idx = dz.topk(k, dim=1, largest=False, sorted=True)
    eps = eps[:, -1]
    nx = _marginal_counts(dx, idx, eps, variant) - 1
    ny = _marginal_counts(dy, idx, eps, variant) - 1
    return KSGCounts(eps, nx, ny)


def _fused_brute(x: torch.Tensor, y: torch.Tensor, k: int, variant: int) -> KSGCounts:
    n = x.shape[0]
    eps = torch.empty(n, dtype=x.dtype, device=x.device)
    nx = torch.empty(n, dtype=torch.long, device=x.device)
    ny = torch.empty(n, dtype=torch.long, device=x.device)
    R = _knn_cpu.linf_block(x)  # the same blocks for x and y (same n, same device)
    buf = torch.empty(R, n, dtype=torch.bool, device=x.device)
    dz_buf = torch.empty(R, n, dtype=x.dtype, device=x.device)
    for (s, e, dx), (_, _, dy) in zip(_knn_cpu.max_tiles(x), _knn_cpu.max_tiles(y)):
        dz = torch.maximum(dx, dy, out=dz_buf[: e - s])
        ar = torch.arange(e - s, device=x.device)
        dz[ar, ar + s] = math.inf
        top = dz.topk(k, dim=1, largest=False, sorted=True)
        eps[s:e] = top.values[:, -1]
        nx[s:e] = _marginal_counts(dx, top.indices, eps[s:e], variant, buf[: e - s])
        ny[s:e] = _marginal_counts(dy, top.indices, eps[s:e], variant, buf[: e - s])
    return KSGCounts(eps, nx - 1, ny - 1)


def _composed(x: torch.Tensor, y: torch.Tensor, k: int, variant: int, which: str) -> KSGCounts:
    """Joint kNN, marginal radii, then radius counts (KD-trees on CPU, kernels on CUDA)."""
    from dynalens.kernels.knn import knn, radius_counts

    z = torch.cat([x, y], dim=1)
    dist, idx = knn(z, k, metric="max", backend=which)  # type: ignore[arg-type]
    eps = dist[:, -1]
    if variant == 1:
        rx = ry = _below(eps)
    else:  # one rounding per coordinate: equal to the kernels' own distances
        rx = (x[:, None, :] - x[idx]).abs().amax(-1).amax(1)
        ry = (y[:, None, :] - y[idx]).abs().amax(-1).amax(1)
    nx = radius_counts(x, rx, metric="max", strict=False, backend=which)  # type: ignore[arg-type]
    ny = radius_counts(y, ry, metric="max", strict=False, backend=which)  # type: ignore[arg-type]
    return KSGCounts(eps, nx, ny)


def ksg_counts(x: Any, y: Any, k: int, *, variant: int = 1, backend: Backend = "auto") -> KSGCounts:
    """Joint k-NN radius and marginal counts of the KSG estimators (see module docstring).

    Args:
        x: (n, d_x) samples (or (n,)); torch tensor or numpy array.
        y: (n, d_y) samples paired with x by row.
        k: neighbours in the joint space, 1 <= k < n.
        variant: 1 or 2, the KSG estimator whose marginal counts to return.
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"``.

    Returns:
        :class:`KSGCounts` ``(eps, n_x, n_y)``, each (n,), on x's device.
    """
    x, y, k, variant = _check(x, y, k, variant)
    which = choose_backend(backend, x, y)
    if which == "reference":
        ref = ksg_counts_reference(x, y, k, variant=variant)
        return KSGCounts(ref.eps.to(compute_dtype(x, y)), ref.n_x, ref.n_y)
    dt = compute_dtype(x, y)
    x, y = x.to(dt).contiguous(), y.to(dt).contiguous()
    if which == "triton":
        return _composed(x, y, k, variant, "triton")
    use_trees = (
        x.shape[1] + y.shape[1] <= JOINT_TREE_MAX_DIM
        and _knn_cpu.tree_counts_apply(x, "max")
        and _knn_cpu.tree_counts_apply(y, "max")
    )
    from dynalens._threads import limit_threads

    # One torch thread on CPU: a torch thread pool spins under CPU contention. Measured at
    # n = 10k on the shared 2-core machine: d = 5 + 5 (trees; scipy still parallelises its
    # queries) 7.7 s with 2 torch threads vs 1.4 s with 1 (load 3-5); d = 25 + 25 (fused
    # brute force) 1.7 s with 2 threads at load 2, 23 s at load 3-4, 4.6 s with 1 at load 7.
    with limit_threads(1 if x.device.type == "cpu" else None):
        if use_trees:
            return _composed(x, y, k, variant, "torch")
        return _fused_brute(x, y, k, variant)
