"""ksg_counts: KD-tree route, fused brute force and Triton against the float64 reference and
against the definition (kNN indices, then counts)."""

from __future__ import annotations

import pytest
import torch

from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.kernels import _knn_cpu
from dynalens.kernels import ksg_counts as kc
from dynalens.kernels.knn import knn, radius_counts
from dynalens.kernels.ksg_counts import ksg_counts
from tests.kernels.conftest import BACKENDS

# "torch" follows the cost rule (trees for d_x + d_y <= 16 here); "torch-fused" forces the
# fused brute force; "torch-scipy" hides scikit-learn (cKDTree / brute counts)
PATHS = [*BACKENDS, "torch-fused", "torch-scipy"]


@pytest.fixture
def run(monkeypatch):
    def call(*args, backend, **kwargs):
        with monkeypatch.context() as m:
            if backend == "torch-fused":
                m.setattr(kc, "JOINT_TREE_MAX_DIM", 0)
                m.setattr(_knn_cpu, "LINF_TILE_ELEMS", 1500)  # ~15-row blocks, a ragged last one
            elif backend == "torch-scipy":
                m.setattr(_knn_cpu, "has", lambda module: module != "sklearn")
            backend = "torch" if backend.startswith("torch") else backend
            return ksg_counts(*args, backend=backend, **kwargs)

    return call


def _pair(n: int, dx: int, dy: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g)
    y = 0.6 * x[:, :1] + torch.randn(n, dy, generator=g)
    x[9], y[9] = x[4], y[4]  # an exact duplicate in the joint space (eps = 0 for k = 1)
    x[20] = x[4]  # and a marginal one
    return x, y


def _definition(x: torch.Tensor, y: torch.Tensor, k: int, variant: int):
    """The counts spelled out from knn + radius_counts on the reference backend."""
    z = torch.cat([x, y], 1)
    dist, idx = knn(z, k, backend="reference")
    eps = dist[:, -1]
    if variant == 1:
        below = torch.where(eps > 0, torch.nextafter(eps, torch.zeros_like(eps)), eps)
        rx = ry = below
    else:
        rx = (x[:, None].double() - x[idx].double()).abs().amax(-1).amax(1)
        ry = (y[:, None].double() - y[idx].double()).abs().amax(-1).amax(1)
    nx = radius_counts(x, rx, strict=False, backend="reference")
    ny = radius_counts(y, ry, strict=False, backend="reference")
    return eps, nx, ny


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize(("dx", "dy", "k"), [(1, 1, 1), (1, 1, 4), (3, 2, 3), (9, 11, 4)])
def test_matches_reference_float64(run, backend, variant, dx, dy, k):
    x, y = _pair(97, dx, dy)
    x, y = x.double(), y.double()
    ref = ksg_counts(x, y, k, variant=variant, backend="reference")
    out = run(x, y, k, variant=variant, backend=backend)
    assert out.eps.dtype == torch.float64 and out.n_x.dtype == torch.long
    assert torch.equal(out.eps, ref.eps)
    assert torch.equal(out.n_x, ref.n_x) and torch.equal(out.n_y, ref.n_y)
    # the reference is the definition
    eps, nx, ny = _definition(x, y, k, variant)
    assert torch.equal(ref.eps, eps) and torch.equal(ref.n_x, nx) and torch.equal(ref.n_y, ny)


@pytest.mark.parametrize("backend", PATHS)
@pytest.mark.parametrize("variant", [1, 2])
def test_float32_paths_agree_exactly(run, backend, variant):
    # L∞ distances have one rounding per coordinate in every backend: identical counts
    x, y = _pair(88, 4, 3, seed=1)
    want = run(x, y, 3, variant=variant, backend="torch-fused")
    out = run(x, y, 3, variant=variant, backend=backend)
    assert out.eps.dtype == torch.float32
    assert torch.equal(out.eps, want.eps)
    assert torch.equal(out.n_x, want.n_x) and torch.equal(out.n_y, want.n_y)


@pytest.mark.parametrize("backend", PATHS)
def test_ties_and_ground_truth(run, backend):
    x, y = _pair(60, 2, 2)
    out = run(x, y, 1, backend=backend)
    assert out.eps[4] == 0 and out.eps[9] == 0  # the joint copies
    # at eps = 0 the counts are the exact copies: x_4 = x_9 = x_20, y_4 = y_9
    assert out.n_x[4] == 2 and out.n_y[4] == 1
    for variant in (1, 2):
        res = run(x, y, 3, variant=variant, backend=backend)
        if variant == 2:  # the k neighbours themselves are inside the marginal radii
            assert (res.n_x >= 3).all() and (res.n_y >= 3).all()
        else:  # strictly inside the joint radius: fewer than k in the joint space
            assert (res.n_x >= 0).all()


@pytest.mark.parametrize("backend", PATHS)
def test_integer_data_heavy_ties_variant_1(run, backend):
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 3, (70, 2), generator=g).double()
    y = torch.randint(0, 2, (70, 1), generator=g).double()
    ref = ksg_counts(x, y, 4, backend="reference")
    out = run(x, y, 4, backend=backend)
    assert torch.equal(out.n_x, ref.n_x) and torch.equal(out.n_y, ref.n_y)


def test_parameters_change_output():
    x, y = _pair(80, 2, 2)
    a = ksg_counts(x, y, 3)
    assert not torch.equal(a.n_x, ksg_counts(x, y, 3, variant=2).n_x)
    assert not torch.equal(a.eps, ksg_counts(x, y, 5).eps)


def test_errors_say_what_to_do():
    x, y = _pair(30, 2, 1)
    with pytest.raises(InvalidParameterError, match="variant must be 1"):
        ksg_counts(x, y, 3, variant=3)
    with pytest.raises(InvalidInputError, match="paired by row"):
        ksg_counts(x, y[:20], 3)
    with pytest.raises(InvalidParameterError, match="k must be smaller"):
        ksg_counts(x, y, 30)
