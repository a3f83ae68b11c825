"""Per-layer rules for per-example gradient norms (used by :mod:`dynalens.dynamics.per_example`).

A rule turns what the hooks saw for one forward call of a module -- its positional inputs
and ``g = d(loss)/d(output)`` -- into, for each of the module's own parameters,

* ``sq_norms``: the per-example squared Frobenius norm ``‖∂L/∂θ‖²`` of example ``b``'s
  contribution, shape ``[B]``, without materialising the per-example gradients where a
  closed form exists;
* ``per_example``: the per-example gradients themselves, ``[B, *θ.shape]`` (used only when
  one parameter is used by several calls in one backward pass: tied or reused weights,
  where ``‖Σ_u g_u‖² ≠ Σ_u ‖g_u‖²``).

Rules (``a``: layer input, ``g``: gradient at the layer output, ``t`` runs over all
non-batch, non-feature positions):

* Linear: ``W_b = Σ_t g_t a_tᵀ``; ``‖W_b‖² = ‖a‖²‖g‖²`` for 2-D inputs and the cheaper of
  ``Σ_{t,s}(a_t·a_s)(g_t·g_s)`` and materialise-then-reduce otherwise, by the cost rule
  ``T(d_in + d_out) < d_in d_out`` (Goodfellow 2015, arXiv:1510.01799; Li et al. 2022,
  arXiv:2110.05679; Bu et al. 2023, arXiv:2210.00038), delegated to
  :func:`dynalens.kernels.ghost_norm.linear_sq_norms`. Bias: ``‖Σ_t g_t‖²``.
* Embedding: the gradient of row ``v`` is ``Σ_{t: x_t = v} g_t``, so
  ``‖E_b‖² = Σ_v ‖Σ_{t: x_t=v} g_t‖²``, computed exactly in O(BTd) by a segment sum over
  (example, token) keys (equivalent to the token-equality-mask ghost form
  ``Σ_{t,s}[x_t = x_s](g_t·g_s)``, which costs O(BT²d)).
* LayerNorm / RMSNorm / GroupNorm: ``γ_b = Σ_t g_t ⊙ x̂_t`` and ``β_b = Σ_t g_t`` with
  ``x̂`` recomputed from the input (exact, O(BTd)).
* Conv2d (groups = 1, zero padding): ``W_b = G_b U_bᵀ`` with ``U_b = unfold(x_b)``, i.e. the
  Linear rule on the unfolded input with T = number of output positions.
* Fallback: ``torch.func.vmap(grad)`` of ``⟨module(x_b), g_b⟩`` w.r.t. the module's own
  parameters; any module whose examples are independent along dim 0, replayed with the
  arguments of the call (keyword arguments included; tensors whose first axis is the
  batch are split per example, anything else is passed whole).

Units: squared gradient of whatever loss was backpropagated; the engine rescales to
``‖∇l_i‖²``. All rules are exact up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dynalens.kernels.ghost_norm import Workspace, layer_sq_norms
from dynalens.probe.hooks import first_tensor

SqNorms = dict[str, torch.Tensor]


class Rule:
    """Base class: per-example squared norms and gradients of a module's own parameters.

    ``workspace``: scratch tensors shared by the rules of one engine (set by the engine;
    the Linear and Conv2d rules put their materialised gradients or Gram matrices there).
    """

    name = "rule"
    workspace: Workspace | None = None

    def sq_norms(self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor) -> SqNorms:
        """``{local_param_name: [B]}`` squared norms (default: from :meth:`per_example`)."""
        return squared_norms(self.per_example(module, inputs, g))

    def per_example(
        self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{local_param_name: [B, *shape]}`` per-example gradients."""
        raise NotImplementedError


def squared_norms(grads: dict[str, torch.Tensor]) -> SqNorms:
    """``{name: [B]}`` squared Frobenius norms of ``{name: [B, *shape]}`` gradients."""
    return {k: v.flatten(1).pow(2).sum(1) for k, v in grads.items()}


def _as_btd(x: torch.Tensor) -> torch.Tensor:
    """(B, ..., d) -> (B, T, d) with T the product of the middle axes (T = 1 for 2-D)."""
    if x.ndim == 1:
        return x[None, None, :]
    return x.reshape(x.shape[0], -1, x.shape[-1])


class LinearRule(Rule):
    name = "linear"

    def sq_norms(self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor) -> SqNorms:
        a, gg = inputs[0], g
        if torch.is_grad_enabled():  # inside backward only with create_graph=True
            a, gg = a.detach(), gg.detach()
        if a.ndim != 2 and a.ndim != 3:
            a, gg = _as_btd(a), _as_btd(gg)
        if a.ndim == 3 and a.shape[1] == 1:
            a, gg = a[:, 0], gg[:, 0]
        w, b = layer_sq_norms(a, gg, module.bias is not None, self.workspace)
        return {"weight": w} if b is None else {"weight": w, "bias": b}

    def per_example(
        self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        a, gg = _as_btd(inputs[0].detach()), _as_btd(g.detach())
        out = {"weight": torch.bmm(gg.transpose(1, 2), a)}
        if module.bias is not None:
            out["bias"] = gg.sum(1)
        return out


class EmbeddingRule(Rule):
    name = "embedding"

    @staticmethod
    def _flat(module: Any, inputs: tuple[Any, ...], g: torch.Tensor) -> tuple[Any, ...]:
        idx = inputs[0]
        B = idx.shape[0]
        idx = idx.reshape(B, -1)
        gg = g.detach().reshape(B, idx.shape[1], -1)
        if module.padding_idx is not None:
            keep = idx != module.padding_idx
            gg = gg * keep[..., None].to(gg.dtype)
        return idx, gg, B

    def sq_norms(self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor) -> SqNorms:
        idx, gg, B = self._flat(module, inputs, g)
        V, d = module.weight.shape
        example = torch.arange(B, device=idx.device)[:, None].expand_as(idx)
        keys = (example * V + idx).reshape(-1)
        uniq, inv = torch.unique(keys, return_inverse=True)
        sums = gg.new_zeros(uniq.numel(), d).index_add_(0, inv, gg.reshape(-1, d))
        per_key = sums.pow(2).sum(1)
        out = gg.new_zeros(B).index_add_(0, torch.div(uniq, V, rounding_mode="floor"), per_key)
        return {"weight": out}

    def per_example(
        self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        idx, gg, B = self._flat(module, inputs, g)
        V, d = module.weight.shape
        out = gg.new_zeros(B, V, d)
        out.scatter_add_(1, idx[..., None].expand(-1, -1, d), gg)
        return {"weight": out}


class _AffineNormRule(Rule):
    """Norm layers ``y = x̂ ⊙ γ + β``: per-example ``Σ_t g_t ⊙ x̂_t`` and ``Σ_t g_t``."""

    def xhat(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reduce_dims(self, module: Any, x: torch.Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    def per_example(
        self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        x = inputs[0].detach()
        gg = g.detach()
        dims = self.reduce_dims(module, x)
        out: dict[str, torch.Tensor] = {}
        if getattr(module, "weight", None) is not None:
            w = (
                (gg * self.xhat(module, x).to(gg.dtype)).sum(dims)
                if dims
                else gg * self.xhat(module, x).to(gg.dtype)
            )
            out["weight"] = w
        if getattr(module, "bias", None) is not None:
            out["bias"] = gg.sum(dims) if dims else gg
        return out


class LayerNormRule(_AffineNormRule):
    name = "layernorm"

    def reduce_dims(self, module: Any, x: torch.Tensor) -> tuple[int, ...]:
        k = len(module.normalized_shape)
        return tuple(range(1, x.ndim - k))

    def xhat(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps)


class RMSNormRule(LayerNormRule):
    name = "rmsnorm"

    def xhat(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, module.normalized_shape, None, module.eps)


class GroupNormRule(_AffineNormRule):
    name = "groupnorm"

    def reduce_dims(self, module: Any, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(range(2, x.ndim))

    def xhat(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, module.num_groups, None, None, module.eps)


class Conv2dRule(Rule):
    name = "conv2d"

    @staticmethod
    def _unfold(module: Any, inputs: tuple[Any, ...], g: torch.Tensor) -> tuple[Any, ...]:
        x = inputs[0].detach()
        if x.ndim == 3:
            x = x[None]
        u = F.unfold(
            x,
            module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,
            stride=module.stride,
        )
        gg = g.detach().reshape(g.shape[0], g.shape[-3], -1)
        return u.transpose(1, 2), gg.transpose(1, 2)  # (B, L, K), (B, L, C_out)

    def sq_norms(self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor) -> SqNorms:
        a, gg = self._unfold(module, inputs, g)
        w, b = layer_sq_norms(a, gg, module.bias is not None, self.workspace)
        return {"weight": w} if b is None else {"weight": w, "bias": b}

    def per_example(
        self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        a, gg = self._unfold(module, inputs, g)
        w = torch.bmm(gg.transpose(1, 2), a)
        out = {"weight": w.reshape(w.shape[0], *module.weight.shape)}
        if module.bias is not None:
            out["bias"] = gg.sum(1)
        return out


class FuncRule(Rule):
    """``torch.func.vmap(grad)`` over the examples; the module is replayed per example."""

    name = "torch.func"

    def __init__(self, recurse: bool = False) -> None:
        self.recurse = recurse

    def per_example(
        self,
        module: Any,
        inputs: tuple[Any, ...],
        g: torch.Tensor,
        kwargs: dict[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        from torch.func import functional_call, grad, vmap

        params = {
            n: p.detach()
            for n, p in module.named_parameters(recurse=self.recurse)
            if p.requires_grad
        }
        B = g.shape[0]
        names = list(kwargs or {})
        values = [kwargs[n] for n in names] if kwargs else []
        n_pos = len(inputs)
        allargs = (*inputs, *values)  # keywords ride along as extra positional args
        batched = [isinstance(x, torch.Tensor) and x.ndim > 0 and x.shape[0] == B for x in allargs]
        in_dims = tuple(0 if b else None for b in batched)
        args = tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in allargs)

        def inner(p: dict[str, torch.Tensor], g_b: torch.Tensor, *xs: Any) -> torch.Tensor:
            xs1 = tuple(x.unsqueeze(0) if b else x for x, b in zip(xs, batched))
            kw = dict(zip(names, xs1[n_pos:]))
            out = first_tensor(functional_call(module, p, xs1[:n_pos], kw))
            assert out is not None  # the hook only fires for tensor outputs
            return (out * g_b.unsqueeze(0)).sum()

        fn: Callable[..., dict[str, torch.Tensor]] = vmap(grad(inner), in_dims=(None, 0, *in_dims))
        return fn(params, g.detach(), *args)


def conv2d_supported(module: nn.Conv2d) -> bool:
    """Groups = 1, zero padding given as numbers (not 'same' / 'valid' strings)."""
    return (
        module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def rule_for(module: Any) -> Rule | None:
    """The closed-form rule for a module type, or None when only the fallback can do it."""
    if type(module) in (nn.Linear, nn.LazyLinear) or isinstance(module, nn.Linear):
        return LinearRule()
    if isinstance(module, nn.Embedding):
        return None if module.scale_grad_by_freq else EmbeddingRule()
    if isinstance(module, nn.LayerNorm):
        return LayerNormRule()
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
        return RMSNormRule()
    if isinstance(module, nn.GroupNorm):
        return GroupNormRule()
    if isinstance(module, nn.Conv2d) and conv2d_supported(module):
        return Conv2dRule()
    return None
