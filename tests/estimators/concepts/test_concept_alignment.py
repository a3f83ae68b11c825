"""CAS and its k-medoids: homogeneity equals scikit-learn's, k-medoids recovers separated
blobs and is a fixed point of its update, perfectly clustered concepts score 1, noise
scores like the permutation null, the cem quirks (grid to n, heuristic init) show."""

from __future__ import annotations

import pytest
import torch

from dynalens.concepts import soft_concepts
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts import concept_alignment_score
from dynalens.estimators.concepts._kmedoids import homogeneity, kmedoids, kmedoids_1d


def test_homogeneity_equals_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for classes, clusters in ((2, 3), (4, 7), (3, 1)):  # (slow part: importing sklearn)
        a = torch.randint(classes, (300,), generator=g)
        b = torch.randint(clusters, (300,), generator=g)
        expected = metrics.homogeneity_score(a.numpy(), b.numpy())
        assert homogeneity(a, b) == pytest.approx(expected, abs=1e-12)
    assert homogeneity(torch.zeros(5, dtype=torch.long), torch.arange(5)) == 1.0


def test_kmedoids_recovers_blobs_and_is_a_fixed_point() -> None:
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.randint(3, (150,), generator=g)
    x = centres[truth] + 0.5 * torch.randn(150, 2, generator=g)
    dist = torch.cdist(x, x).double()
    for init in ("k-medoids++", "heuristic"):
        labels, medoids = kmedoids(dist, 3, init=init, seed=0)
        assert homogeneity(truth, labels) == pytest.approx(1.0)
        for c, m in enumerate(medoids):  # each medoid minimises its cluster's distance sum
            members = (labels == c).nonzero().flatten()
            sums = dist[members][:, members].sum(1)
            assert int(members[sums.argmin()]) == int(m)


def test_perfect_representation_scores_one() -> None:
    g = torch.Generator().manual_seed(2)
    c = (torch.rand(200, 3, generator=g) < 0.3).double()
    res = concept_alignment_score(c, c, n_subsamples=3, max_samples=100, n_grid=5)
    assert res.value == pytest.approx(1.0) and res.interval == pytest.approx((1.0, 1.0))
    emb = torch.stack([c * 3 + 0.1 * torch.randn(200, 3, generator=g) for _ in range(2)], -1)
    assert concept_alignment_score(emb, c, n_subsamples=1, n_grid=5).value == pytest.approx(1.0)


def test_noise_scores_like_the_permutation_null() -> None:
    g = torch.Generator().manual_seed(3)
    c = (torch.rand(300, 2, generator=g) < 0.5).double()
    noise = torch.randn(300, 2, generator=g)
    res = concept_alignment_score(noise, c, n_subsamples=4, max_samples=150)
    spread = res.seed_spread["sd"] + res.details["null_spread"]["sd"]
    assert abs(res.value - res.details["null"]) < 3 * spread + 0.02
    pure = soft_concepts(c, signal=2.0, noise=1.0, seed=0)
    aligned = concept_alignment_score(pure, c, n_subsamples=4, max_samples=150)
    assert aligned.interval[0] > res.interval[1]  # signal beats noise


def test_task_alignment_and_cem_quirks() -> None:
    g = torch.Generator().manual_seed(4)
    c = (torch.rand(200, 1, generator=g) < 0.2).double()
    y = c[:, 0].long()
    res = concept_alignment_score(c, c, y, n_subsamples=1)
    assert res.details["task"] == pytest.approx(1.0)
    # heuristic init starts every medoid in the majority mode: a perfect r = c is not 1
    quirk = concept_alignment_score(c, c, n_subsamples=1, compat="cem", n_grid=2)
    assert quirk.details["grid"] == [2, 200] and quirk.value < 1.0


def test_bad_input() -> None:
    c = torch.zeros(10, 2)
    c[::2] = 1
    with pytest.raises(InvalidInputError, match="one representation per concept"):
        concept_alignment_score(torch.zeros(10, 3), c)
    with pytest.raises(InvalidInputError, match="binary"):
        concept_alignment_score(c, c + 0.5)


def test_kmedoids_on_a_line_is_a_fixed_point_of_the_matrix_version() -> None:
    """On a line an even cluster has two medians of exactly equal cost, so the two
    implementations may break ties differently and reach different local optima; what
    must hold: the same assignment from the same medoids, and a fixed point of the
    alternate update (nearest-medoid labels, each medoid its cluster's minimiser)."""
    g = torch.Generator().manual_seed(5)
    x = torch.cat([torch.randn(60, generator=g), 4 + torch.randn(40, generator=g)]).double()
    dist = torch.cdist(x[:, None], x[:, None])
    for nc in (2, 5, 11):
        start = torch.randperm(100, generator=g)[:nc]
        ref, _ = kmedoids(dist, nc, init="k-medoids++", start=start, max_iter=0)
        fast, _ = kmedoids_1d(x, nc, init="k-medoids++", start=start, max_iter=0)
        assert torch.equal(ref, fast)
    for init in ("k-medoids++", "heuristic"):
        for nc in (2, 5, 11):
            labels, medoids = kmedoids_1d(x, nc, init=init, seed=1)
            assert torch.equal(labels, dist[:, medoids].argmin(1))
            for c, m in enumerate(medoids):
                members = (labels == c).nonzero().flatten()
                sums = dist[members][:, members].sum(1)
                assert float(sums.min()) == pytest.approx(float(dist[m, members].sum()))
