"""linear_sq_norms: kernel and fallback against the float64 reference and autograd."""

from __future__ import annotations

import pytest
import torch

from dynalens.errors import InvalidInputError
from dynalens.kernels.ghost_norm import ghost_is_cheaper, linear_sq_norms
from tests.kernels.conftest import BACKENDS, assert_close_to_reference

SHAPES = {
    "2d": ((6, 13), (6, 5)),
    "ghost": ((3, 7, 40), (3, 7, 33)),  # T(d_in+d_out) = 511 < 1320
    "materialise": ((3, 45, 6), (3, 45, 5)),  # 495 >= 30
    "balanced": ((2, 37, 20), (2, 37, 24)),
}


def _ref32(a: torch.Tensor, g: torch.Tensor, bias: bool) -> torch.Tensor:
    a3 = a.float() if a.ndim == 3 else a.float()[:, None]
    g3 = g.float() if g.ndim == 3 else g.float()[:, None]
    out = torch.einsum("bto,bti->boi", g3, a3).pow(2).sum((1, 2))
    return out + g3.sum(1).pow(2).sum(1) if bias else out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_reference(backend, shape, dtype, bias):
    gen = torch.Generator().manual_seed(1)
    sa, sg = SHAPES[shape]
    a = torch.randn(*sa, generator=gen).to(dtype)
    g = torch.randn(*sg, generator=gen).to(dtype)
    out = linear_sq_norms(a, g, bias=bias, backend=backend)
    assert out.shape == (sa[0],)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref64 = linear_sq_norms(a.double(), g.double(), bias=bias, backend="reference")
    if dtype == torch.float64:
        torch.testing.assert_close(out, ref64, rtol=1e-12, atol=0)
    else:
        # the Gram form sums T² signed terms: allow a rounding term relative to its size
        scale = (a.double().pow(2).sum((-1, -2) if a.ndim == 3 else -1)) * (
            g.double().pow(2).sum((-1, -2) if g.ndim == 3 else -1)
        )
        eps = torch.finfo(torch.float32).eps
        extra = (4 * max(sa[-1], sg[-1]) * eps * scale).max().item()
        assert_close_to_reference(out, ref64, _ref32(a, g, bias), extra=extra)


def test_matches_autograd_per_example_gradients():
    torch.manual_seed(0)
    layer = torch.nn.Linear(9, 4)
    x = torch.randn(5, 11, 9, dtype=torch.float64)
    layer = layer.double()
    captured = {}
    out = layer(x)
    out.register_hook(lambda grad: captured.setdefault("g", grad))
    loss_per_example = (out.tanh() ** 2).sum((1, 2))
    loss_per_example.sum().backward()
    expected = []
    for b in range(5):
        layer.zero_grad()
        (layer(x[b : b + 1]).tanh() ** 2).sum().backward()
        expected.append(layer.weight.grad.pow(2).sum() + layer.bias.grad.pow(2).sum())
    got = linear_sq_norms(x, captured["g"], bias=True)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-10, atol=0)


def test_cost_rule():
    assert ghost_is_cheaper(1, 10, 10)
    assert ghost_is_cheaper(7, 40, 33)
    assert not ghost_is_cheaper(45, 6, 5)
    # the crossover itself: T(d_in + d_out) == d_in d_out -> materialise
    assert not ghost_is_cheaper(2, 4, 4)
    assert ghost_is_cheaper(1, 4, 4)


def test_numpy_inputs_and_errors():
    a = torch.randn(3, 4).numpy()
    g = torch.randn(3, 2).numpy()
    out = linear_sq_norms(a, g)
    assert out.shape == (3,)
    with pytest.raises(InvalidInputError, match="share the leading"):
        linear_sq_norms(torch.randn(3, 5, 4), torch.randn(3, 4, 2))
    with pytest.raises(InvalidInputError, match="must be 2-D or 3-D"):
        linear_sq_norms(torch.randn(3), torch.randn(3))
