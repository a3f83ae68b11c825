r"""k-medoids (Euclidean) with the 'alternate' updates, and clustering homogeneity.

'alternate' (Park & Jun 2009; scikit-learn-extra's ``KMedoids(method="alternate")``):
assign each point to its nearest medoid, move each medoid to the member with the smallest
sum of distances to its cluster, repeat until the medoids stop changing or ``max_iter``.
Initialisation: ``"heuristic"`` (scikit-learn-extra's default: the ``n_clusters`` points
with the smallest distance sums; on data with repeated values it puts every medoid in the
densest mode), or ``"k-medoids++"`` (seeded; the first medoid uniform, each next one drawn
with probability proportional to the squared distance to the nearest chosen medoid, as
k-means++ of Arthur & Vassilvitskii 2007; uniform among unchosen points when all those
distances are 0). ``start`` warm-starts k-medoids++ from given medoids (a grid of cluster
counts reuses the previous solution and draws only the new medoids). Each update is O(n²)
time and memory-light (a same-cluster mask, then a sort to find each cluster's minimum).
On a line (:func:`kmedoids_1d`) nearest-medoid clusters are intervals of the sorted
values, so the assignment is a binary search against the medoids' midpoints and every
within-cluster distance sum comes from prefix sums: O(n log n) per update, no (n, n)
matrix; from the same medoids the same assignment as :func:`kmedoids`, and a fixed point of
the same update (tested; the two medians of an even cluster tie exactly, and the two
versions may break that tie differently).

Homogeneity (Rosenberg & Hirschberg 2007; scikit-learn's ``homogeneity_score``):
:math:`h = 1 - H(C \mid K)/H(C)`, and 1 where the labels C are constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["homogeneity", "kmedoids", "kmedoids_1d"]


def kmedoids(
    dist: torch.Tensor,
    n_clusters: int,
    *,
    init: str,
    max_iter: int = 300,
    seed: int = 0,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster labels (n,) and medoid indices (n_clusters,) of a distance matrix (n, n)."""
    if init == "heuristic":
        medoids = dist.sum(1).argsort(stable=True)[:n_clusters]
    else:
        d = dist.numpy()
        medoids = _plus_plus(lambda i: d[i], d.shape[0], n_clusters,
                             np.random.default_rng(seed), start)  # fmt: skip
    for _ in range(max_iter):
        labels = dist[:, medoids].argmin(1)
        new = _update(dist, labels, medoids)
        if torch.equal(new, medoids):
            break
        medoids = new
    return dist[:, medoids].argmin(1), medoids


def _update(dist: torch.Tensor, labels: torch.Tensor, medoids: torch.Tensor) -> torch.Tensor:
    """Each cluster's member with the smallest within-cluster distance sum (the old
    medoid where a cluster is empty)."""
    return _update_from_costs((dist * (labels[:, None] == labels[None, :])).sum(1), labels,
                              medoids)  # fmt: skip


def _update_from_costs(
    cost: torch.Tensor, labels: torch.Tensor, medoids: torch.Tensor
) -> torch.Tensor:
    """Per cluster label l, the point of least cost among those labelled l (the old
    medoid ``medoids[l]`` where none is)."""
    order = cost.argsort(stable=True)
    by_label = labels[order].argsort(stable=True)
    sorted_labels = labels[order][by_label]
    first = torch.ones_like(sorted_labels, dtype=torch.bool)
    first[1:] = sorted_labels[1:] != sorted_labels[:-1]
    new = medoids.clone()
    new[sorted_labels[first]] = order[by_label][first]
    return new


def kmedoids_1d(
    x: torch.Tensor,
    n_clusters: int,
    *,
    init: str,
    max_iter: int = 300,
    seed: int = 0,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kmedoids` of scalars ``x`` (n,) with |x_i - x_j| distances, without the
    distance matrix. Returns labels (n,) and medoid indices into ``x``."""
    order = x.argsort(stable=True)
    xs = x[order].to(torch.float64)
    n = xs.shape[0]
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), xs.cumsum(0)])
    idx = torch.arange(n)
    if init == "heuristic":
        total = _interval_costs(xs, prefix, idx, torch.zeros(n, dtype=torch.int64),
                                torch.full((n,), n))  # fmt: skip
        medoids = total.argsort(stable=True)[:n_clusters]
    else:
        rank = torch.empty(n, dtype=torch.int64)
        rank[order] = idx
        warm = None if start is None else rank[start]
        xn = xs.numpy()
        medoids = _plus_plus(lambda i: np.abs(xn[None, :] - xn[i][:, None]), n, n_clusters,
                             np.random.default_rng(seed), warm)  # fmt: skip
    for _ in range(max_iter):
        labels, first = _assign_1d(xs, medoids)
        counts = torch.bincount(labels, minlength=len(first))
        ends = counts.cumsum(0)
        cost = _interval_costs(xs, prefix, idx, (ends - counts)[labels], ends[labels])
        new = medoids.clone()
        new[first] = _update_from_costs(cost, labels, medoids[first])
        if torch.equal(new, medoids):
            break
        medoids = new
    labels, first = _assign_1d(xs, medoids)
    out = torch.empty(n, dtype=torch.int64)
    out[order] = first[labels]
    return out, order[medoids]


def _assign_1d(xs: torch.Tensor, medoids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest medoid of each sorted value. Returns the rank (non-decreasing along xs) of
    its medoid's value among the distinct medoid values, and per rank the list position
    of the first medoid with that value (equal medoids: the first takes the points, as
    ``argmin`` does in :func:`kmedoids`)."""
    values = xs[medoids]
    uniq, inverse = torch.unique(values, sorted=True, return_inverse=True)
    pos = torch.arange(len(medoids))
    first = torch.full((len(uniq),), len(medoids), dtype=torch.int64)
    first = first.scatter_reduce(0, inverse, pos, reduce="amin")
    return torch.searchsorted((uniq[1:] + uniq[:-1]) / 2, xs, right=False), first


def _interval_costs(
    xs: torch.Tensor, prefix: torch.Tensor, i: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """Sum of |xs_i - xs_m| over m in [a_i, b_i) (sorted xs, prefix sums)."""
    left = xs * (i - a) - (prefix[i] - prefix[a])
    right = (prefix[b] - prefix[i + 1]) - xs * (b - i - 1)
    return left + right


def _plus_plus(
    row: Any, n: int, k: int, rng: np.random.Generator, start: torch.Tensor | None
) -> torch.Tensor:
    """k-medoids++ with ``row(idx)`` the distances (len(idx), n) of points idx to all."""
    chosen = [] if start is None else [int(i) for i in start[:k]]
    if not chosen:
        chosen.append(int(rng.integers(n)))
    nearest = row(np.asarray(chosen)).min(0)
    taken = np.zeros(n, dtype=bool)
    taken[chosen] = True
    while len(chosen) < k:
        weight = np.where(taken, 0.0, nearest**2)
        total = weight.sum()
        if total <= 0:
            weight = (~taken).astype(np.float64)
            total = weight.sum()
        pick = int(np.searchsorted(np.cumsum(weight), rng.random() * total, side="right"))
        pick = min(pick, n - 1)
        while taken[pick]:  # rounding at the end of the cumulative sum
            pick -= 1
        chosen.append(pick)
        taken[pick] = True
        nearest = np.minimum(nearest, row(np.asarray([pick]))[0])
    return torch.tensor(chosen)


def homogeneity(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """1 - H(C | K) / H(C) of integer ``labels`` C and ``clusters`` K (n,); 1 if C is
    constant (scikit-learn's ``homogeneity_score``)."""
    _, c = labels.unique(return_inverse=True)
    _, k = clusters.unique(return_inverse=True)
    nc, nk = int(c.max()) + 1, int(k.max()) + 1
    if nc == 1:
        return 1.0
    joint = torch.bincount(c * nk + k, minlength=nc * nk).reshape(nc, nk).to(torch.float64)
    n = joint.sum()
    pc = joint.sum(1) / n
    h_c = -(pc[pc > 0] * pc[pc > 0].log()).sum()
    pk = joint.sum(0)
    nz = joint > 0
    h_ck = -(joint[nz] / n * (joint / pk[None, :])[nz].log()).sum()
    return float(1 - h_ck / h_c)
