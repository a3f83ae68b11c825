"""knn / knn_distances / radius_counts: kernel, KD-tree and brute fallbacks against the
reference."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.kernels import _knn_cpu
from dynalens.kernels.knn import knn, knn_distances, radius_counts
from tests.kernels.conftest import BACKENDS, assert_close_to_reference

# "torch" follows the cost rule (KD-trees in low d, brute force above; scikit-learn for the
# L∞ counts); "torch-brute" forces the chunked-torch brute force at every d;
# "torch-tree" forces the KD-trees at every d; "torch-scipy" hides scikit-learn (cKDTree
# counts)
PATHS = [*BACKENDS, "torch-brute", "torch-tree", "torch-scipy"]


@pytest.fixture
def run(monkeypatch):
    def call(fn, *args, backend, **kwargs):
        with monkeypatch.context() as m:
            if backend == "torch-brute":
                m.setattr(_knn_cpu, "KNN_TREE_MAX_DIM", 0)
                m.setattr(_knn_cpu, "L2_TREE_MAX_DIM", 0)
                m.setattr(_knn_cpu, "COUNT_TREE_MAX_DIM", 0)
                m.setattr(_knn_cpu, "LINF_TILE_ELEMS", 700)  # ~8-row blocks, a ragged last one
            elif backend == "torch-tree":
                m.setattr(_knn_cpu, "KNN_TREE_MAX_DIM", 64)
                m.setattr(_knn_cpu, "L2_TREE_MAX_DIM", 64)
                m.setattr(_knn_cpu, "COUNT_TREE_MAX_DIM", 64)
                m.setattr(_knn_cpu, "COUNT_TREE_ALWAYS_DIM", 64)
            elif backend == "torch-scipy":
                m.setattr(_knn_cpu, "has", lambda module: module != "sklearn")
            backend = "torch" if backend.startswith("torch") else backend
            return fn(*args, backend=backend, **kwargs)

    return call


def _data(n: int, d: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    x[7] = x[3]  # exact duplicates
    x[50] = x[3]
    return x


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("metric", ["max", "euclidean"])
@pytest.mark.parametrize("d", [1, 3, 11])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_knn_matches_reference(run, backend, metric, d, dtype):
    x = _data(83, d).to(dtype)
    out = run(knn_distances, x, 5, metric=metric, backend=backend)
    assert out.shape == (83, 5) and out.dtype == torch.float32
    ref64 = knn_distances(x.double(), 5, metric=metric, backend="reference")
    assert (out[3, :2] == 0).all()  # the two duplicates of row 3
    assert (out[:, 1:] >= out[:, :-1]).all()
    if metric == "max":
        # one rounding per coordinate: bit-equal to the rounded float64 distance
        assert torch.equal(out, ref64.float())
    else:
        xf = x.float()
        d32 = (xf[:, None] - xf[None]).pow(2).sum(-1).sqrt().fill_diagonal_(float("inf"))
        ref32 = d32.topk(5, dim=1, largest=False).values
        eps = torch.finfo(torch.float32).eps
        assert_close_to_reference(out, ref64, ref32, extra=4 * (d + 2) * eps * ref64.max().item())


def _direct(x: torch.Tensor, idx: torch.Tensor, metric: str) -> torch.Tensor:
    """Distances from each row to the rows named by idx, in float64 from the given x."""
    x64 = x.double()
    diff = x64[:, None, :] - x64[idx]
    return diff.abs().amax(-1) if metric == "max" else diff.pow(2).sum(-1).sqrt()


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("metric", ["max", "euclidean"])
@pytest.mark.parametrize(("n", "d", "k"), [(83, 1, 5), (83, 3, 5), (70, 11, 7), (40, 2, 20)])
def test_knn_indices_name_the_neighbours(run, backend, metric, n, d, k):
    x = _data(n, d) if n > 50 else torch.randn(3, d)[torch.arange(n) % 3]
    dist, idx = run(knn, x, k, metric=metric, backend=backend)
    assert idx.dtype == torch.long and idx.shape == (n, k)
    rows = torch.arange(n)[:, None]
    assert not (idx == rows).any()  # never the point itself
    assert all(len(set(r)) == k for r in idx.tolist())  # k distinct rows
    # the named rows are at the returned distances (one rounding: exact for L∞)
    direct = _direct(x.float(), idx, metric)
    if metric == "max":
        assert torch.equal(dist, direct.float())
    else:
        torch.testing.assert_close(dist.double(), direct, rtol=1e-6, atol=1e-6)
    # and they are the nearest: distances equal the reference's
    ref = knn(x.double(), k, metric=metric, backend="reference")[0]
    torch.testing.assert_close(dist.double(), ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(dist, run(knn_distances, x, k, metric=metric, backend=backend))
    if n > 50:  # rows 3, 7 and 50 are copies: each one's two nearest are the other two
        assert set(idx[3, :2].tolist()) == {7, 50} and set(idx[7, :2].tolist()) == {3, 50}


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("metric", ["max", "euclidean"])
def test_float64_in_float64_out(run, backend, metric):
    x = _data(61, 4).double()
    out = run(knn_distances, x, 3, metric=metric, backend=backend)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, knn_distances(x, 3, metric=metric, backend="reference"))


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("d", [2, 10])
def test_k_larger_than_number_of_distinct_points(run, backend, d):
    base = torch.randn(3, d, generator=torch.Generator().manual_seed(3))
    x = base[torch.arange(40) % 3]
    out = run(knn_distances, x, 20, metric="max", backend=backend)
    ref = knn_distances(x.double(), 20, metric="max", backend="reference")
    assert torch.equal(out, ref.float())
    assert (out[:, :12] == 0).all() and (out[:, 13:] > 0).all()  # 13 copies of each point


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("metric", ["max", "euclidean"])
@pytest.mark.parametrize("d", [2, 9])
def test_radius_counts_off_ties(run, backend, metric, d):
    x = _data(77, d)
    r = knn_distances(x.double(), 4, metric=metric, backend="reference")[:, -1]
    for radius in (r * (1 - 1e-3), r * (1 + 1e-3)):
        for strict in (True, False):
            ref = radius_counts(
                x.double(), radius, metric=metric, strict=strict, backend="reference"
            )
            out = run(radius_counts, x, radius, metric=metric, strict=strict, backend=backend)
            assert out.dtype == torch.long
            assert torch.equal(out, ref)


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("metric", ["max", "euclidean"])
@pytest.mark.parametrize("d", [1, 3, 12])
def test_ksg_ties_are_consistent(run, backend, metric, d):
    # radius = own k-th distance: strict counts < k, non-strict counts >= k (same backend)
    x = _data(90, d)
    k = 4
    eps = run(knn_distances, x, k, metric=metric, backend=backend)[:, -1]
    below = run(radius_counts, x, eps, metric=metric, strict=True, backend=backend)
    upto = run(radius_counts, x, eps, metric=metric, strict=False, backend=backend)
    assert (below <= k - 1).all() and (upto >= k).all()
    if metric == "max":  # exact: equals the reference evaluated in float32
        xf = x.float()
        dist = (xf[:, None] - xf[None]).abs().amax(-1).fill_diagonal_(float("inf"))
        assert torch.equal(below, (dist < eps[:, None]).sum(1))
        assert torch.equal(upto, (dist <= eps[:, None]).sum(1))


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("d", [1, 2, 10])
def test_max_counts_at_neighbouring_floats_of_the_radius(run, backend, d):
    # regression for the KD-tree thresholds: radii one float32 ulp around actual distances
    x = _data(64, d)
    xf = x.float()
    dist = (xf[:, None] - xf[None]).abs().amax(-1).fill_diagonal_(float("inf"))
    eps = dist.topk(3, dim=1, largest=False).values[:, -1]
    for radius in (eps, torch.nextafter(eps, torch.tensor(0.0)),
                   torch.nextafter(eps, torch.tensor(float("inf")))):  # fmt: skip
        for strict in (True, False):
            out = run(radius_counts, x, radius, metric="max", strict=strict, backend=backend)
            expected = (dist < radius[:, None] if strict else dist <= radius[:, None]).sum(1)
            assert torch.equal(out, expected)


@pytest.mark.parametrize("backend", PATHS)
def test_integer_data_heavy_ties(run, backend):
    x = torch.randint(0, 3, (70, 3), generator=torch.Generator().manual_seed(5)).float()
    for metric in ("max", "euclidean"):
        ref = knn_distances(x.double(), 6, metric=metric, backend="reference")
        out = run(knn_distances, x, 6, metric=metric, backend=backend)
        torch.testing.assert_close(out, ref.float(), rtol=1e-7, atol=0)
        for strict in (True, False):
            for radius in (1.0, 0.0, 2.0):
                ref_c = radius_counts(x.double(), radius, metric=metric, strict=strict,
                                      backend="reference")  # fmt: skip
                out_c = run(radius_counts, x, radius, metric=metric, strict=strict,
                            backend=backend)  # fmt: skip
                assert torch.equal(out_c, ref_c), (metric, strict, radius)


@pytest.mark.parametrize(("d", "radius", "engine"), [
    (3, 2.0, "tree"),    # low dimension: the tree whatever the balls hold
    (8, 0.05, "tree"),   # few points inside: the tree
    (8, 2.0, "brute"),   # many points inside: the brute force
    (14, 0.05, "brute"), # above COUNT_TREE_MAX_DIM
])  # fmt: skip
def test_max_counts_engine_follows_the_cost_rule(monkeypatch, d, radius, engine):
    """L∞ counts pick the tree or the brute force by dimension and mean ball count (the
    rule in _knn_cpu's docstring); both give the reference's counts."""
    used = []
    for name in ("count_tree", "count_brute"):
        real = getattr(_knn_cpu, name)
        monkeypatch.setattr(
            _knn_cpu, name, lambda *a, real=real, name=name: used.append(name) or real(*a)
        )
    x = _data(300, d)
    r = torch.full((300,), radius)
    got = radius_counts(x, r, metric="max", backend="torch")
    assert used == [f"count_{engine}"]
    ref = radius_counts(x.double(), r.double(), metric="max", backend="reference")
    assert torch.equal(got, ref)


def test_parameters_change_output():
    x = _data(60, 3)
    assert not torch.equal(
        knn_distances(x, 2, metric="max"), knn_distances(x, 2, metric="euclidean")
    )
    r = knn_distances(x, 2)[:, -1]
    assert not torch.equal(radius_counts(x, r, strict=True), radius_counts(x, r, strict=False))
    assert (radius_counts(x, float("inf")) == 59).all()
    assert (radius_counts(x, 0.0, strict=True) == 0).all()


def test_errors_say_what_to_do():
    x = _data(60, 2)
    with pytest.raises(InvalidParameterError, match="k must be smaller than the number of rows"):
        knn_distances(x, 60)
    with pytest.raises(InvalidParameterError, match="k must be >= 1"):
        knn_distances(x, 0)
    with pytest.raises(InvalidParameterError, match="metric must be one of"):
        knn_distances(x, 2, metric="chebyshev")
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="non-finite"):
        knn_distances(bad, 2)
    with pytest.raises(InvalidInputError, match="one entry per row"):
        radius_counts(x, torch.ones(3))
    with pytest.raises(InvalidInputError, match="at least 2 rows"):
        knn_distances(x[:1], 1)


def test_importing_the_module_does_not_import_triton():
    code = (
        "import sys, dynalens, dynalens.kernels, dynalens.kernels.knn, "
        "dynalens.kernels.gauss_lse, dynalens.kernels.ghost_norm, dynalens.kernels.binning\n"
        "import torch\n"
        "dynalens.kernels.knn.knn_distances(torch.randn(20, 2), 3)\n"
        "dynalens.kernels.gauss_lse.gauss_lse(torch.randn(20, 2), var=1.0)\n"
        "assert 'triton' not in sys.modules, sorted(m for m in sys.modules if 'triton' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_single_threaded_counts_keep_the_tree_up_to_8_dims():
    """Regression: with one torch thread (the KSG tree path, or a loaded machine) the brute
    force L-inf counts were chosen from 5 dims on, at twice their 2-thread cost; KSG at
    n = 10k, d = 5 + 5 took 1.1 s instead of 0.6 s."""
    from dynalens._threads import limit_threads

    with limit_threads(1):
        assert _knn_cpu._always_tree_dim() == _knn_cpu.SINGLE_THREAD_TREE_DIM == 8
    if torch.get_num_threads() > 1:
        assert _knn_cpu._always_tree_dim() == _knn_cpu.COUNT_TREE_ALWAYS_DIM
