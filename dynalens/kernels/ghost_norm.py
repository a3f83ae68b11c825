"""Per-example squared gradient norms of an ``nn.Linear`` layer, without per-example grads.

For example ``b`` with layer inputs ``A_b`` (T × d_in) and gradients of the (per-example
summed) loss w.r.t. the layer output ``G_b`` (T × d_out), the weight gradient is
``W_b = Σ_t g_t a_tᵀ = G_bᵀ A_b`` and

    ‖W_b‖_F² = Σ_{t,s} (a_t·a_s)(g_t·g_s) = ⟨A_b A_bᵀ, G_b G_bᵀ⟩_F        (ghost / Gram form)

(Goodfellow 2015, "Efficient per-example gradient computations", arXiv:1510.01799; Li et
al. 2022, arXiv:2110.05679; Bu et al. 2023, "mixed ghost clipping", arXiv:2210.00038). The
bias gradient is ``Σ_t g_t``; with ``bias=True`` its squared norm is added.

Cost per example: ghost ~ T²(d_in + d_out) multiply-adds, materialise-then-reduce
~ T·d_in·d_out. :func:`ghost_is_cheaper` picks the cheaper per call; the crossover is
``T (d_in + d_out) = d_in d_out``. For 2-D inputs (T = 1) the norm is ``‖a‖²‖g‖²``.
Units: squared gradient units (loss² / weight-unit²). No estimation bias: both forms are
exact up to floating-point rounding (float32 accumulation for float32/bf16/fp16 inputs).

Example:
    >>> a, g = torch.randn(4, 7, 5), torch.randn(4, 7, 3)
    >>> n = linear_sq_norms(a, g)
    >>> w = torch.einsum("bto,bti->boi", g, a)
    >>> torch.allclose(n, w.pow(2).sum((1, 2)), rtol=1e-4)
    True
"""

from __future__ import annotations

from typing import Any

import torch

from dynalens._validation import check_bool
from dynalens.errors import InvalidInputError
from dynalens.kernels._dispatch import (
    Backend,
    Work,
    as_tensor,
    check_same_device,
    choose_backend,
    compute_dtype,
    triton_module,
)

__all__ = [
    "ghost_is_cheaper",
    "layer_sq_norms",
    "linear_sq_norms",
    "linear_sq_norms_reference",
    "work",
]

#: Elements of intermediate per chunk in the torch fallback (64 MiB of float32).
_CHUNK_ELEMS = 1 << 24


def ghost_is_cheaper(T: int, d_in: int, d_out: int) -> bool:
    """True when the Gram (ghost) form costs less than materialising the gradient.

    Ghost ~ T²(d_in + d_out), materialise ~ T·d_in·d_out; ghost wins iff
    ``T (d_in + d_out) < d_in d_out`` (ties go to materialising).
    """
    return T * (d_in + d_out) < d_in * d_out


def work(B: int, T: int, d_in: int, d_out: int, *, elem_bytes: int = 4) -> Work:
    """Work model: read A and G once, write B floats; flops of the cheaper form."""
    if ghost_is_cheaper(T, d_in, d_out):
        flops = 2.0 * B * T * T * (d_in + d_out) + 2.0 * B * T * T
    else:
        flops = 2.0 * B * T * d_in * d_out + 2.0 * B * d_in * d_out
    return Work(bytes=float(elem_bytes * B * T * (d_in + d_out) + 4 * B), flops=flops)


def _check(a: Any, g: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a = as_tensor("a", a, ndim=(2, 3))
    g = as_tensor("g", g, ndim=(2, 3))
    check_same_device(a=a, g=g)
    if a.ndim != g.ndim or a.shape[:-1] != g.shape[:-1]:
        raise InvalidInputError(
            f"a and g must share the leading (batch[, time]) axes; got a {tuple(a.shape)} and "
            f"g {tuple(g.shape)}. Pass the layer's input and the gradient w.r.t. its output "
            "for the same examples, both (B, d) or both (B, T, d)."
        )
    if a.ndim == 2:
        a, g = a[:, None, :], g[:, None, :]
    return a, g


def linear_sq_norms_reference(a: Any, g: Any, *, bias: bool = False) -> torch.Tensor:
    """Float64 reference: materialise each ``W_b = G_bᵀ A_b`` and sum its squares."""
    a, g = _check(a, g)
    a64, g64 = a.double(), g.double()
    w = torch.einsum("bto,bti->boi", g64, a64)
    out = w.pow(2).sum((1, 2))
    if bias:
        out = out + g64.sum(1).pow(2).sum(1)
    return out


def _torch_sq_norms(a: torch.Tensor, g: torch.Tensor, bias: bool) -> torch.Tensor:
    B, T, d_in = a.shape
    d_out = g.shape[2]
    dt = compute_dtype(a, g)
    out = torch.empty(B, dtype=dt, device=a.device)
    ghost = ghost_is_cheaper(T, d_in, d_out)
    per_example = 2 * T * T if ghost else d_in * d_out
    step = max(1, _CHUNK_ELEMS // max(per_example, 1))
    for s in range(0, B, step):
        ac, gc = a[s : s + step].to(dt), g[s : s + step].to(dt)
        if T == 1:
            res = ac[:, 0].pow(2).sum(1) * gc[:, 0].pow(2).sum(1)
        elif ghost:
            ga = torch.bmm(ac, ac.transpose(1, 2))
            gg = torch.bmm(gc, gc.transpose(1, 2))
            res = (ga.mul_(gg)).sum((1, 2))
        else:
            w = torch.bmm(gc.transpose(1, 2), ac)  # one reduction pass over w (no pow_ write)
            res = torch.linalg.vector_norm(w.flatten(1), dim=1).square_()
        if bias:
            res = res + gc.sum(1).pow(2).sum(1)
        out[s : s + step] = res
    return out


def layer_sq_norms(
    a: torch.Tensor, g: torch.Tensor, bias: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hot path of the per-example engine: weight and bias norms of one call, no checks.

    ``a`` (B, d_in) or (B, T, d_in) and ``g`` (B, d_out) or (B, T, d_out) are detached
    tensors on one device with matching leading axes (the engine's hooks guarantee it;
    :func:`linear_sq_norms` is the checked entry point). Returns ``(‖W_b‖², ‖β_b‖²)``
    (the second None without ``bias``) in the computation dtype. For 2-D inputs the
    weight norm is ``‖a‖²‖g‖²`` from two fused row reductions and the bias norm is the
    ``‖g‖²`` already computed; sequences take the Triton kernel on CUDA, else the torch
    fallback.
    """
    dt = compute_dtype(a, g)
    if a.ndim == 2:
        gn = torch.linalg.vector_norm(g, dim=1, dtype=dt).square_()
        an = torch.linalg.vector_norm(a, dim=1, dtype=dt).square_()
        return an.mul_(gn), (gn if bias else None)
    if a.is_cuda and choose_backend("auto", a, g) == "triton":
        w = triton_module("ghost_norm").sq_norms(a, g, False).to(dt)
    else:
        w = _torch_sq_norms(a, g, False)
    if not bias:
        return w, None
    gs = g.sum(1, dtype=dt)
    return w, torch.linalg.vector_norm(gs, dim=1).square_()


def linear_sq_norms(
    a: Any, g: Any, *, bias: bool = False, backend: Backend = "auto"
) -> torch.Tensor:
    """Per-example squared Frobenius norm of an ``nn.Linear`` weight gradient.

    Args:
        a: (B, d_in) or (B, T, d_in) inputs of the layer (torch or numpy).
        g: (B, d_out) or (B, T, d_out) gradients of the per-example-summed loss w.r.t.
            the layer output (e.g. from a full backward hook).
        bias: add ``‖Σ_t g_t‖²``, the squared norm of the bias gradient.
        backend: ``"auto"``, ``"reference"``, ``"torch"`` or ``"triton"``; see
            :mod:`dynalens.kernels._dispatch`.

    Returns:
        (B,) tensor on the input's device: float64 for float64 inputs, else float32.
    """
    bias = check_bool("bias", bias)
    a, g = _check(a, g)
    which = choose_backend(backend, a, g)
    if which == "reference":
        return linear_sq_norms_reference(a, g, bias=bias).to(compute_dtype(a, g))
    if which == "triton":
        return triton_module("ghost_norm").sq_norms(a, g, bias)
    return _torch_sq_norms(a, g, bias).to(compute_dtype(a, g))
