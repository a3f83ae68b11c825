r"""Concept Alignment Score (CAS; Espinosa Zarlenga et al. 2022, "Concept Embedding Models",
NeurIPS, §4 and appendix; reference ``cem/metrics/cas.py: concept_alignment_score``).

For concept j with representation :math:`r_j` (a column of soft concepts, a concept
embedding slice (n, m), or any latent), cluster :math:`r_j` by k-medoids for each number of
clusters :math:`n_c` on a grid and score how well the clusters separate the concept:

.. math:: h_j(n_c) = \mathrm{homogeneity}(c_j, \mathrm{KMedoids}_{n_c}(r_j)), \qquad
          \mathrm{CAS}_j = \frac{\int h_j\, dn_c}{\int 1\, dn_c} \text{ (trapezoid)},

:math:`\mathrm{CAS} = \frac1k \sum_j \mathrm{CAS}_j`; the task alignment uses y instead of
:math:`c_j` (``details["task"]``). A representation that separates the concept's values
scores 1 at every :math:`n_c`; one unrelated to the concept scores what clustering noise
gives, which grows with :math:`n_c` (many small clusters are homogeneous by chance), so it
is reported next to a **permutation null** (the same clusters scored against permuted
labels, ``details["null"]``).

Reference quirks, reproduced with ``compat="cem"``: the grid ``linspace(2, n, n_grid)``
ends at :math:`n_c = n`, where every cluster is one point and homogeneity is 1 (biasing the
score up), and the 'heuristic' initialisation puts every medoid in the densest mode of
repeated values (so even :math:`r_j = c_j` is not scored 1). Defaults: the grid ends at
n/2, k-medoids++ initialisation (seeded; each cluster count on the grid starts from the
previous count's medoids and draws only the new ones), own torch k-medoids (no
scikit-learn-extra, which does not install beside numpy 2); scalar representations use
the O(n log n) line version. Memory is O(n²) otherwise: the score is computed on
``n_subsamples`` seeded subsamples of at most ``max_samples`` rows; ``value`` is their mean
and ``interval`` the 2.5-97.5 % quantiles of the subsample values (the seed spread).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynalens._validation import check_int, check_option
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import as_binary_labels, as_class_labels, as_matrix
from dynalens.estimators.concepts._kmedoids import homogeneity, kmedoids, kmedoids_1d
from dynalens.estimators.concepts._result import ConceptResult, seed_spread

__all__ = ["ConceptAlignment", "concept_alignment_score"]


class ConceptAlignment:
    """Concept Alignment Score with own k-medoids.

    Parameters
    ----------
    n_grid : int
        Number of cluster counts on the grid (reference ``step``).
    compat : {None, "cem"}
        ``"cem"``: grid to n and 'heuristic' initialisation (module docstring).
    max_samples : int
        Rows per subsample (the O(n²) distance matrix).
    n_subsamples : int
        Seeded subsamples; their spread is the interval.
    max_iter : int
        k-medoids iterations.
    seed : int
        Seed of the subsamples, the initialisation and the permutation null.
    """

    def __init__(
        self,
        *,
        n_grid: int = 10,
        compat: str | None = None,
        max_samples: int = 1000,
        n_subsamples: int = 5,
        max_iter: int = 300,
        seed: int = 0,
    ) -> None:
        self.n_grid = n_grid
        self.compat = compat
        self.max_samples = max_samples
        self.n_subsamples = n_subsamples
        self.max_iter = max_iter
        self.seed = seed

    def estimate(self, representation: Any, c_true: Any, y: Any = None) -> ConceptResult:
        """CAS of ``representation`` against concepts ``c_true`` (n, k) (and labels y).

        ``representation``: (n, k) soft concepts (column j for concept j), (n, k, m) concept
        embeddings, or a list of k arrays (n, m_j)."""
        n_grid = check_int("n_grid", self.n_grid, min=2)
        compat = check_option("compat", "none" if self.compat is None else self.compat,
                              ("none", "cem"))  # fmt: skip
        max_samples = check_int("max_samples", self.max_samples, min=4)
        n_sub = check_int("n_subsamples", self.n_subsamples, min=1)
        max_iter = check_int("max_iter", self.max_iter, min=1)
        seed = check_int("seed", self.seed)
        c = as_binary_labels("c_true", c_true)
        n, k = c.shape
        reps = _representations(representation, n, k)
        labels = None if y is None else as_class_labels("y", y, n=n)
        m = min(n, max_samples)
        top = m if compat == "cem" else m // 2
        grid = np.unique(np.linspace(2, max(top, 2), n_grid).astype(int))
        init = "heuristic" if compat == "cem" else "k-medoids++"
        per_sub, task_sub, null_sub = [], [], []
        for s in range(n_sub):
            g = torch.Generator().manual_seed(seed + s)
            rows = torch.randperm(n, generator=g)[:m] if m < n else torch.arange(n)
            scores = torch.empty(k, dtype=torch.float64)
            task, null = [], []
            for j in range(k):
                r = reps[j][rows]
                scalar = r.shape[1] == 1  # on a line: O(n log n), no distance matrix
                data = r[:, 0] if scalar else torch.cdist(r, r)
                cluster = kmedoids_1d if scalar else kmedoids
                perm = c[rows, j][torch.randperm(m, generator=g)]
                hc, hy, h0 = [], [], []
                medoids = None
                for nc in grid:
                    clusters, medoids = cluster(data, int(nc), init=init, max_iter=max_iter,
                                                seed=seed + s, start=medoids)  # fmt: skip
                    hc.append(homogeneity(c[rows, j].long(), clusters))
                    h0.append(homogeneity(perm.long(), clusters))
                    if labels is not None:
                        hy.append(homogeneity(labels[rows], clusters))
                scores[j] = _area(hc, grid)
                null.append(_area(h0, grid))
                if labels is not None:
                    task.append(_area(hy, grid))
            per_sub.append(scores)
            null_sub.append(float(np.mean(null)))
            if labels is not None:
                task_sub.append(float(np.mean(task)))
        values = [float(v.mean()) for v in per_sub]
        q = np.quantile(values, [0.025, 0.975]) if n_sub > 1 else None
        return ConceptResult(
            value=float(np.mean(values)),
            metric="cas",
            per_concept=torch.stack(per_sub).mean(0),
            interval=None if q is None else (float(q[0]), float(q[1])),
            seed_spread=seed_spread(values) if n_sub > 1 else {},
            n=m,
            params={"n_grid": n_grid, "compat": self.compat, "max_samples": max_samples,
                    "n_subsamples": n_sub, "max_iter": max_iter, "seed": seed, "init": init},
            details={"grid": grid.tolist(), "null": float(np.mean(null_sub)),
                     "null_spread": seed_spread(null_sub) if n_sub > 1 else {},
                     "task": float(np.mean(task_sub)) if task_sub else float("nan")},
        )  # fmt: skip


def _area(h: Sequence[float], grid: np.ndarray) -> float:
    """Trapezoid of h over the grid divided by the grid's length (1 for a single point)."""
    if len(grid) == 1:
        return float(h[0])
    return float(np.trapezoid(h, grid) / (grid[-1] - grid[0]))


def _representations(representation: Any, n: int, k: int) -> list[torch.Tensor]:
    if isinstance(representation, (list, tuple)):
        reps = [as_matrix(f"representation[{j}]", r, n=n) for j, r in enumerate(representation)]
    else:
        t = torch.as_tensor(np.asarray(representation) if not torch.is_tensor(representation)
                            else representation).detach().to("cpu", torch.float64)  # fmt: skip
        if t.ndim == 3:
            as_matrix("representation", t.reshape(t.shape[0], -1), n=n)
            reps = [t[:, j] for j in range(t.shape[1])]
        else:
            mat = as_matrix("representation", t, n=n)
            reps = [mat[:, j : j + 1] for j in range(mat.shape[1])]
    if len(reps) != k:
        raise InvalidInputError(
            f"CAS needs one representation per concept: got {len(reps)} for {k} concepts. "
            "Pass (n, k) soft concepts, (n, k, m) embeddings, or a list of k (n, m) arrays."
        )
    return reps


def concept_alignment_score(
    representation: Any, c_true: Any, y: Any = None, **kwargs: Any
) -> ConceptResult:
    """Functional form of :class:`ConceptAlignment`.

    Examples
    --------
    >>> c = (torch.rand(200, 2, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    >>> concept_alignment_score(c, c, n_subsamples=1).value
    1.0
    """
    return ConceptAlignment(**kwargs).estimate(representation, c_true, y)
