"""bin_indices / pattern_symbols / joint_counts: exact against numpy and the references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynalens.errors import InvalidInputError
from dynalens.kernels import binning
from dynalens.kernels.binning import bin_indices, joint_counts, pattern_symbols
from tests.kernels.conftest import BACKENDS


def _digitize(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """numpy ground truth of the documented convention: count interior edges <= v."""
    if edges.ndim == 1:
        return np.digitize(x, edges[1:-1], right=False)
    return np.stack([np.digitize(x[:, j], edges[j, 1:-1]) for j in range(x.shape[1])], 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("per_unit", [False, True])
@pytest.mark.parametrize("nb", [1, 5, 30])
def test_bin_indices_match_numpy(backend, dtype, per_unit, nb):
    gen = torch.Generator().manual_seed(nb)
    x = (torch.randn(203, 7, generator=gen) * 1.5).to(dtype)
    if per_unit:
        edges = torch.sort(torch.randn(7, nb + 1, generator=gen), 1).values
    else:
        edges = torch.linspace(-1.0, 1.0, nb + 1)
    x[0, :] = edges[..., 0]  # exactly on the first edge -> bin 0
    x[1, :] = edges[..., -1]  # exactly on the last edge -> bin nb-1 (closed on the right)
    x[2, :] = edges[..., nb // 2]  # an interior edge belongs to the bin on its right
    out = bin_indices(x, edges, backend=backend)
    assert out.dtype == torch.long and out.shape == (203, 7)
    dt = torch.float64 if dtype == torch.float64 else torch.float32
    expected = _digitize(x.to(dt).numpy(), edges.to(dt).numpy())
    assert np.array_equal(out.numpy(), expected)
    assert torch.equal(out, bin_indices(x, edges, backend="reference"))
    assert out.min() >= 0 and out.max() <= nb - 1
    assert (out[1] == nb - 1).all() and (out[0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_clipping_and_empty_bins(backend):
    edges = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    x = torch.tensor([-100.0, 0.5, 0.5, 3.5, 100.0, float("inf"), float("-inf")])
    out = bin_indices(x, edges, backend=backend)[:, 0]
    assert out.tolist() == [0, 0, 0, 3, 3, 3, 0]
    counts = torch.bincount(out, minlength=4)
    assert counts.tolist() == [4, 0, 0, 3]  # bins 1 and 2 are empty


def test_bin_errors():
    with pytest.raises(InvalidInputError, match="strictly increasing"):
        bin_indices(torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(InvalidInputError, match=r"shape \(d, nb \+ 1\)"):
        bin_indices(torch.zeros(3, 2), torch.zeros(3, 4).cumsum(1))
    with pytest.raises(InvalidInputError, match="nan"):
        bin_indices(torch.tensor([float("nan")]), torch.tensor([0.0, 1.0]))
    with pytest.raises(InvalidInputError, match="at least 2 values"):
        bin_indices(torch.zeros(3), torch.tensor([1.0]))


def _check_symbols(idx: torch.Tensor, ids: torch.Tensor) -> None:
    uniq, inv = torch.unique(idx, dim=0, return_inverse=True)
    assert ids.max().item() + 1 == len(uniq)
    # same partition as the exact lexicographic unique ...
    pairs = torch.unique(torch.stack([ids, inv], 1), dim=0)
    assert len(pairs) == len(uniq)
    # ... labelled in order of first appearance
    first = [ids.tolist().index(s) for s in range(len(uniq))]
    assert first == sorted(first)


@pytest.mark.parametrize(
    "shape,high", [((300, 4), 3), ((300, 40), 1000), ((200, 1), 50), ((150, 70), 2)]
)
def test_pattern_symbols_exact(shape, high):
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, high, shape, generator=gen)
    idx[5] = idx[100]
    ids = pattern_symbols(idx)
    assert ids[5] == ids[100]
    _check_symbols(idx, ids)


def test_pattern_symbols_resolves_hash_collisions(monkeypatch):
    # every row hashes to the same key: the verification must fall back to exact unique
    monkeypatch.setattr(
        binning, "_row_keys", lambda a: (torch.zeros(a.shape[0], dtype=torch.long), False)
    )
    idx = torch.randint(0, 4, (120, 6), generator=torch.Generator().manual_seed(2))
    _check_symbols(idx, pattern_symbols(idx))


def test_pattern_symbols_inputs():
    assert pattern_symbols(np.array([3, 1, 3, 2])).tolist() == [0, 1, 0, 2]
    assert pattern_symbols(torch.tensor([[-5, 2], [-5, 2], [7, -1]])).tolist() == [0, 0, 1]
    with pytest.raises(InvalidInputError, match="integer"):
        pattern_symbols(torch.zeros(3, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_joint_counts_match_histogram(backend):
    gen = torch.Generator().manual_seed(4)
    a = torch.randint(0, 11, (2001,), generator=gen)
    b = torch.randint(0, 6, (2001,), generator=gen)
    b[a == 3] = 0  # row 3 concentrated; column 5 is empty for it
    out = joint_counts(a, b, 12, 6, backend=backend)  # symbol 11 never occurs: empty row
    expected, _, _ = np.histogram2d(a.numpy(), b.numpy(), bins=[np.arange(13), np.arange(7)])
    assert out.dtype == torch.long and out.shape == (12, 6)
    assert np.array_equal(out.numpy(), expected.astype(np.int64))
    assert out[11].sum() == 0 and out.sum() == 2001
    assert torch.equal(out, joint_counts(a, b, 12, 6, backend="reference"))


def test_joint_counts_errors():
    a = torch.tensor([0, 1, 2])
    with pytest.raises(InvalidInputError, match=r"symbols in 0\.\.1"):
        joint_counts(a, a, 2, 3)
    with pytest.raises(InvalidInputError, match="paired"):
        joint_counts(a, a[:2], 3, 3)


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("where", ["a", "b"])
@pytest.mark.parametrize("value", [-1, 3, -(2**62), 2**62])
def test_joint_counts_refuses_every_out_of_range_symbol(backend: str, where: str, value: int):
    """Negative, just past the end, and values whose key a * nb + b would overflow int64."""
    good = torch.tensor([0, 1, 2, 1])
    bad = good.clone()
    bad[2] = value
    a, b = (bad, good) if where == "a" else (good, bad)
    with pytest.raises(InvalidInputError, match=rf"{where} must hold symbols in 0\.\.2"):
        joint_counts(a, b, 3, 3, backend=backend)
    with pytest.raises(InvalidInputError, match="integer"):
        joint_counts(a.float(), a, 3, 3)
