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

import math
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
    "Workspace",
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


class Workspace:
    """Reusable scratch tensors for the per-example norms of a hook engine.

    On a CPU a fresh multi-MiB tensor per call costs page faults and upsets the C
    allocator for the steps that follow (measured on the noise-scale hot path at d = 128,
    T = 64: a measured step 1.47-1.48x a plain one with a reused buffer for the
    materialised gradient, 1.53-1.68x with a fresh one). The engine keeps one workspace
    for all its layers (they run one after another in backward); it holds at most one
    chunk of intermediates (``_CHUNK_ELEMS`` per name) and is dropped at detach.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A contiguous tensor of ``shape`` with ``like``'s dtype and device (contents
        undefined), valid until the next ``get`` of the same name."""
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._bufs[name] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


def _torch_sq_norms(
    a: torch.Tensor, g: torch.Tensor, bias: bool, ws: Workspace | None = None
) -> torch.Tensor:
    B, T, d_in = a.shape
    d_out = g.shape[2]
    dt = compute_dtype(a, g)
    ghost = ghost_is_cheaper(T, d_in, d_out)
    per_example = 2 * T * T if ghost else d_in * d_out
    step = max(1, _CHUNK_ELEMS // max(per_example, 1))
    if step >= B:  # one chunk (the usual case): no output buffer, no copy
        if a.dtype != dt or g.dtype != dt:
            a, g = a.to(dt), g.to(dt)
        return _chunk_sq_norms(a, g, bias, ghost, ws)
    out = torch.empty(B, dtype=dt, device=a.device)
    for s in range(0, B, step):  # converted chunk by chunk: bounded extra memory
        ac, gc = a[s : s + step].to(dt), g[s : s + step].to(dt)
        out[s : s + step] = _chunk_sq_norms(ac, gc, bias, ghost, ws)
    return out


def _chunk_sq_norms(
    a: torch.Tensor, g: torch.Tensor, bias: bool, ghost: bool, ws: Workspace | None
) -> torch.Tensor:
    B, T, d_in = a.shape
    if T == 1:
        res = a[:, 0].pow(2).sum(1) * g[:, 0].pow(2).sum(1)
    elif ghost:
        ga = torch.bmm(a, a.mT, out=ws.get("gram_a", (B, T, T), a) if ws else None)
        gg = torch.bmm(g, g.mT, out=ws.get("gram_g", (B, T, T), g) if ws else None)
        res = (ga.mul_(gg)).sum((1, 2))
    else:
        w = torch.bmm(g.mT, a, out=ws.get("w", (B, g.shape[2], d_in), a) if ws else None)
        res = torch.linalg.vector_norm(w, dim=(1, 2)).square_()  # one pass, no pow_ write
    if bias:
        res = res + g.sum(1).pow(2).sum(1)
    return res


def layer_sq_norms(
    a: torch.Tensor, g: torch.Tensor, bias: bool, workspace: Workspace | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hot path of the per-example engine: weight and bias norms of one call, no checks.

    ``a`` (B, d_in) or (B, T, d_in) and ``g`` (B, d_out) or (B, T, d_out) are detached
    tensors on one device with matching leading axes (the engine's hooks guarantee it;
    :func:`linear_sq_norms` is the checked entry point). Returns ``(‖W_b‖², ‖β_b‖²)``
    (the second None without ``bias``) in the computation dtype. For 2-D inputs the
    weight norm is ``‖a‖²‖g‖²`` from two fused row reductions and the bias norm is the
    ``‖g‖²`` already computed; sequences take the Triton kernel on CUDA, else the torch
    fallback, whose intermediates go into ``workspace`` when given.
    """
    dt = compute_dtype(a, g)
    if a.ndim == 2:
        gn = torch.linalg.vector_norm(g, dim=1, dtype=dt).square_()
        an = torch.linalg.vector_norm(a, dim=1, dtype=dt).square_()
        return an.mul_(gn), (gn if bias else None)
    if a.is_cuda and choose_backend("auto", a, g) == "triton":
        w = triton_module("ghost_norm").sq_norms(a, g, False).to(dt)
    else:
        w = _torch_sq_norms(a, g, False, workspace)
    if not bias:
        return w, None
    return w, torch.linalg.vector_norm(g.sum(1, dtype=dt), dim=1).square_()


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
