"""gauss_lse / gaussian_gram: kernel and fallback against the float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.kernels.gauss_lse import gauss_lse, gaussian_gram
from tests.kernels.conftest import BACKENDS, assert_close_to_reference


def _points(n: int, d: int, offset: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + offset


def _lse32(x: torch.Tensor, y: torch.Tensor, var: float, excl: bool) -> torch.Tensor:
    """The reference formula (direct differences) evaluated in float32."""
    x, y = x.float(), y.float()
    logits = (x[:, None, :] - y[None]).pow(2).sum(-1) / (-2.0 * var)
    if excl:
        logits.fill_diagonal_(-math.inf)
    return torch.logsumexp(logits, 1)


def _expanded_extra(x: torch.Tensor, var: float, lse: torch.Tensor) -> float:
    """Documented extra error of the centred expanded form: ~(2d+8)·eps·max‖x−c‖²/(2 var)."""
    xc = x.double() - x.double().mean(0)
    eps = torch.finfo(torch.float32).eps
    return (2 * x.shape[1] + 8) * eps * xc.pow(2).sum(1).max().item() / (2 * var) + 4 * eps * (
        lse.abs().max().item()
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("var", [1e-3, 0.7, 1e6])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_lse_matches_reference(backend, dtype, var, exclude_self):
    x = _points(67, 5).to(dtype)
    ref64 = gauss_lse(x.double(), var=var, exclude_self=exclude_self, backend="reference")
    out = gauss_lse(x, var=var, exclude_self=exclude_self, backend=backend)
    assert out.dtype == torch.float32 and out.shape == (67,)
    ref32 = _lse32(x, x, var, exclude_self)
    assert_close_to_reference(out, ref64, ref32, extra=_expanded_extra(x, var, ref64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("var", [1e-4, 0.7])
def test_paired_exclude_self_matches_reference(backend, dtype, var):
    # t_i = c_i + small noise: with var = 1e-4 the pair's own term is ~e^-0.1 while every
    # other term is below e^-1000 — the cancellation regime of "full sum minus self"
    c = _points(67, 5, seed=3)
    t = c + 0.01 * _points(67, 5, seed=4)
    c, t = c.to(dtype), t.to(dtype)
    ref64 = gauss_lse(t.double(), c.double(), var=var, exclude_self=True, backend="reference")
    out = gauss_lse(t, c, var=var, exclude_self=True, backend=backend)
    assert out.dtype == dtype and out.shape == (67,)
    if dtype == torch.float64:
        torch.testing.assert_close(out, ref64, rtol=1e-12, atol=1e-9)
    else:
        ref32 = _lse32(t, c, var, True)
        extra = _expanded_extra(torch.cat([t, c]), var, ref64)
        assert_close_to_reference(out, ref64, ref32, extra=extra)
    if var == 1e-4:
        full = gauss_lse(t.double(), c.double(), var=var, backend=backend)
        own = -(t.double() - c.double()).pow(2).sum(1) / (2 * var)
        torch.testing.assert_close(full, own, rtol=0, atol=1e-9)  # the others vanish
        # the others' share of the full sum is < e^-40 ~ 4e-18, below float64 resolution:
        # "log(full - own)" would be -inf or noise; dropping j = i by index is exact
        assert (ref64 - full < -40).all()
    # the pairs (x_i, x_i) of y = x are the self terms of y=None
    same = gauss_lse(c, var=var, exclude_self=True, backend=backend)
    paired = gauss_lse(c, c.clone(), var=var, exclude_self=True, backend=backend)
    torch.testing.assert_close(paired, same)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lse_float64_in_float64_out(backend):
    x, y = _points(41, 3).double(), _points(29, 3, seed=1).double()
    out = gauss_lse(x, y, var=0.3, backend=backend)
    assert out.dtype == torch.float64
    ref = gauss_lse(x, y, var=0.3, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lse_cross_set_and_gram(backend):
    x, y = _points(53, 7), _points(38, 7, seed=1)
    for var in (0.05, 2.0):
        ref64 = gauss_lse(x.double(), y.double(), var=var, backend="reference")
        out = gauss_lse(x, y, var=var, backend=backend)
        assert_close_to_reference(
            out,
            ref64,
            _lse32(x, y, var, False),
            extra=_expanded_extra(torch.cat([x, y]), var, ref64),
        )
        k = gaussian_gram(x, y, var=var, backend=backend)
        k64 = gaussian_gram(x.double(), y.double(), var=var, backend="reference")
        k32 = torch.exp((x[:, None] - y[None]).pow(2).sum(-1) / (-2 * var))
        assert k.shape == (53, 38)
        # Gram entries: exp amplifies the distance error by the logit (<= 1 in value)
        assert_close_to_reference(k, k64, k32, extra=_expanded_extra(torch.cat([x, y]), var, k64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_far_from_origin_data_is_centred(backend):
    # regression: uncentred expanded distances are off by O(1) in the LSE at offset 1e4
    base = _points(45, 6)
    x = base + 1e4
    ref = gauss_lse(base.double(), var=0.5, backend="reference")
    out = gauss_lse(x, var=0.5, backend=backend)
    # x itself is rounded to fp32 at 1e4 (ulp 1e-3): compare with the reference of that x
    ref_x = gauss_lse(x.double(), var=0.5, backend="reference")
    assert (out.double() - ref_x).abs().max() < 1e-3
    assert (ref_x - ref).abs().max() < 0.1  # the rounding of x itself, not the kernel


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_term_is_exact_with_tiny_bandwidth(backend):
    # points far apart relative to sigma: only the self term survives, LSE = log 1 = 0
    x = _points(33, 4) * 10 + 200.0
    out = gauss_lse(x, var=1e-4, backend=backend)
    assert out.abs().max() == 0.0
    k = gaussian_gram(x, var=1e-4, backend=backend)
    assert torch.equal(k.diagonal(), torch.ones(33))
    # leaving the self term out: every other point is > 5 sigma away -> very negative
    excl = gauss_lse(x, var=1e-4, exclude_self=True, backend=backend)
    assert (excl < -1e3).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_form_duplicates(backend):
    x = torch.full((19, 3), 2.5)
    out = gauss_lse(x, var=1e-6, backend=backend)
    torch.testing.assert_close(out, torch.full((19,), math.log(19)))
    out = gauss_lse(x, var=1e-6, exclude_self=True, backend=backend)
    torch.testing.assert_close(out, torch.full((19,), math.log(18)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_bandwidth_tends_to_log_m(backend):
    x, y = _points(25, 3), _points(31, 3, seed=2)
    out = gauss_lse(x, y, var=1e12, backend=backend)
    torch.testing.assert_close(out, torch.full((25,), math.log(31)))


def test_scale_invariance_and_parameters_matter():
    x = _points(30, 4).double()
    a = gauss_lse(x, var=0.8)
    torch.testing.assert_close(gauss_lse(3 * x, var=9 * 0.8), a)
    assert not torch.allclose(gauss_lse(x, var=0.4), a)
    assert not torch.allclose(gauss_lse(x, var=0.8, exclude_self=True), a)
    assert (gauss_lse(x, var=0.8, exclude_self=True) < a).all()
    y = x.flip(0)
    assert (gauss_lse(x, y, var=0.8, exclude_self=True) < gauss_lse(x, y, var=0.8)).all()


def test_numpy_and_1d_inputs():
    x = np.linspace(0, 1, 9)
    out = gauss_lse(x, var=0.1)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (9,)
    torch.testing.assert_close(out, gauss_lse(x[:, None], var=0.1, backend="reference"))


def test_errors_say_what_to_do():
    x = _points(5, 2)
    with pytest.raises(InvalidParameterError, match="y needs as many rows as x"):
        gauss_lse(x, x[:4], var=1.0, exclude_self=True)
    with pytest.raises(InvalidParameterError, match="var must be > 0"):
        gauss_lse(x, var=0.0)
    with pytest.raises(InvalidInputError, match="same number of columns"):
        gauss_lse(x, _points(5, 3), var=1.0)
    with pytest.raises(InvalidInputError, match="at least 2 rows"):
        gauss_lse(x[:1], var=1.0, exclude_self=True)
    with pytest.raises(InvalidParameterError, match="backend must be one of"):
        gaussian_gram(x, var=1.0, backend="cuda")
