r"""k-medoids (Euclidean) with the 'alternate' updates, and clustering homogeneity.

'alternate' (Park & Jun 2009; scikit-learn-extra's ``KMedoids(method="alternate")``):
assign each point to its nearest medoid, move each medoid to the member with the smallest
sum of distances to its cluster, repeat until the medoids stop changing or ``max_iter``.
Initialisation: ``"heuristic"`` (scikit-learn-extra's default: the ``n_clusters`` points
with the smallest distance sums; on data with repeated values it puts every medoid in the
densest mode), or ``"k-medoids++"`` (seeded; the first medoid uniform, each next one drawn
with probability proportional to the squared distance to the nearest chosen medoid, as
k-means++ of Arthur & Vassilvitskii 2007; uniform among unchosen points when all those
distances are 0). Each update is O(n²) time (one scatter-add of the distance matrix).

Homogeneity (Rosenberg & Hirschberg 2007; scikit-learn's ``homogeneity_score``):
:math:`h = 1 - H(C \mid K)/H(C)`, and 1 where the labels C are constant.
"""

from __future__ import annotations

import torch

__all__ = ["homogeneity", "kmedoids"]


def kmedoids(
    dist: torch.Tensor, n_clusters: int, *, init: str, max_iter: int = 300, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster labels (n,) and medoid indices (n_clusters,) of a distance matrix (n, n)."""
    n = dist.shape[0]
    if init == "heuristic":
        medoids = dist.sum(1).argsort(stable=True)[:n_clusters]
    else:
        medoids = _plus_plus(dist, n_clusters, torch.Generator().manual_seed(seed))
    cols = torch.arange(n_clusters)
    for _ in range(max_iter):
        labels = dist[:, medoids].argmin(1)
        sums = torch.zeros(n, n_clusters, dtype=dist.dtype).index_add_(1, labels, dist)
        cost = torch.where(labels[:, None] == cols, sums, torch.full_like(sums, float("inf")))
        best = cost.argmin(0)
        empty = torch.isinf(cost.min(0).values)
        new = torch.where(empty, medoids, best)
        if torch.equal(new, medoids):
            break
        medoids = new
    return dist[:, medoids].argmin(1), medoids


def _plus_plus(dist: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    n = dist.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=g))]
    nearest = dist[chosen[0]].clone()
    for _ in range(1, k):
        weight = nearest**2
        weight[chosen] = 0
        if float(weight.sum()) <= 0:
            weight = torch.ones(n, dtype=dist.dtype)
            weight[chosen] = 0
        pick = int(torch.multinomial(weight, 1, generator=g))
        chosen.append(pick)
        nearest = torch.minimum(nearest, dist[pick])
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
