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
* transformers' ``Conv1D`` (GPT-2): a Linear with the weight transposed; same norms.
* EmbeddingBag (sum / mean): ``‖E_b‖² = ‖g_b‖² Σ_v (Σ_{t∈b, x_t=v} c_t)²`` with ``c_t`` the
  entry's weight (per-sample weight, 1, or 1/|bag|).
* BatchNorm with running statistics (eval mode): an affine map, the LayerNorm rule with
  ``x̂`` from the running mean and variance; refused at the call in training mode.
* Fallback: ``torch.func.vmap(grad)`` of ``Σ_k ⟨y_k(x_b), g_{k,b}⟩`` over every output
  ``y_k`` that received a gradient, w.r.t. the module's own parameters, the call replayed
  per example with its arguments split along their batch axes
  (:mod:`dynalens.dynamics._replay`: declared for recurrent, attention and transformer
  layers, else from shapes, refused where ambiguous); recurrent layers by a loop of
  ``torch.autograd.grad`` per example (their fused kernels do not vmap).

Units: squared gradient of whatever loss was backpropagated; the engine rescales to
``‖∇l_i‖²``. All rules are exact up to rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dynalens.kernels.ghost_norm import Workspace, layer_sq_norms

SqNorms = dict[str, torch.Tensor]


class Rule:
    """Base class: per-example squared norms and gradients of a module's own parameters.

    ``workspace``: scratch tensors shared by the rules of one engine (set by the engine;
    the Linear and Conv2d rules put their materialised gradients or Gram matrices there).
    """

    name = "rule"
    workspace: Workspace | None = None
    #: the rule reads keyword arguments of the call (its hook is registered with_kwargs)
    keywords = False

    def positional(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple:
        """The call's inputs as the positional tuple :meth:`sq_norms` reads."""
        return args

    def check(self, module: Any, mname: str) -> None:
        """Refuse (raise) a call this rule cannot measure exactly; run at forward time."""

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


class TransposedLinearRule(LinearRule):
    """Hugging Face's ``Conv1D`` (GPT-2): ``y = x W + b`` with ``W`` of shape (d_in, d_out),
    a Linear with a transposed weight; the norms are those of the Linear rule."""

    name = "conv1d_hf"

    def per_example(
        self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        out = super().per_example(module, inputs, g)
        out["weight"] = out["weight"].transpose(1, 2)
        return out


class EmbeddingRule(Rule):
    name = "embedding"

    @staticmethod
    def _flat(module: Any, inputs: tuple[Any, ...], g: torch.Tensor) -> tuple[Any, ...]:
        idx = inputs[0]
        B = g.shape[0]
        if idx.shape[0] == 1 and B > 1:  # broadcast (1, T) indices, output expanded by the hook
            idx = idx.expand(B, *idx.shape[1:])
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


class EmbeddingBagRule(Rule):
    """``nn.EmbeddingBag`` in mode ``"sum"`` / ``"mean"``: bag ``b`` is
    ``Σ_{t∈b} c_t E[x_t]`` (``c_t``: ``per_sample_weights``, 1, or ``1/|b|`` over the
    non-padding entries), so row ``v`` of its gradient is ``(Σ_{t∈b, x_t=v} c_t) g_b`` and
    ``‖E_b‖² = ‖g_b‖² Σ_v (Σ_{t∈b, x_t=v} c_t)²`` (exact, O(N d) for N indices)."""

    name = "embeddingbag"
    keywords = True

    def positional(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple:
        names = ("input", "offsets", "per_sample_weights")
        vals = list(args) + [None] * (3 - len(args))
        for k, v in kwargs.items():
            vals[names.index(k)] = v
        return tuple(vals)

    @staticmethod
    def _weights(module: Any, inputs: tuple[Any, ...], B: int) -> tuple[torch.Tensor, ...]:
        """Flat ``(bag, index, c)`` of every entry of the call."""
        idx, offsets, psw = inputs[0], inputs[1], inputs[2]
        if idx.ndim == 2:
            bag = torch.arange(B, device=idx.device)[:, None].expand_as(idx).reshape(-1)
            idx = idx.reshape(-1)
            psw = None if psw is None else psw.reshape(-1)
        else:
            starts = offsets[:-1] if module.include_last_offset else offsets
            pos = torch.arange(idx.numel(), device=idx.device)
            bag = torch.searchsorted(starts, pos, right=True) - 1
        c = torch.ones(idx.shape, dtype=torch.float64, device=idx.device)
        if psw is not None:
            c = psw.detach().to(torch.float64)
        if module.padding_idx is not None:
            c = c * (idx != module.padding_idx)
        if module.mode == "mean":
            count = torch.zeros(B, dtype=torch.float64, device=idx.device)
            count.index_add_(0, bag, (c != 0).to(torch.float64))
            c = c / count.clamp(min=1)[bag]
        return bag, idx, c

    def sq_norms(self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor) -> SqNorms:
        gg = g.detach()
        B, V = gg.shape[0], module.weight.shape[0]
        bag, idx, c = self._weights(module, inputs, B)
        uniq, inv = torch.unique(bag * V + idx, return_inverse=True)
        per_key = c.new_zeros(uniq.numel()).index_add_(0, inv, c).pow(2)
        mult = c.new_zeros(B).index_add_(0, torch.div(uniq, V, rounding_mode="floor"), per_key)
        return {"weight": gg.pow(2).sum(1) * mult.to(gg.dtype)}

    def per_example(
        self, module: Any, inputs: tuple[Any, ...], g: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        gg = g.detach()
        B, V = gg.shape[0], module.weight.shape[0]
        bag, idx, c = self._weights(module, inputs, B)
        coef = gg.new_zeros(B * V).index_add_(0, bag * V + idx, c.to(gg.dtype))
        return {"weight": coef.reshape(B, V, 1) * gg[:, None, :]}


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


class BatchNormEvalRule(_AffineNormRule):
    """BatchNorm normalising with its running statistics (eval mode): an affine map per
    channel, ``x̂ = (x − μ_run)/√(σ²_run + ε)``, so ``γ_b = Σ_t g_t ⊙ x̂_t`` and
    ``β_b = Σ_t g_t`` as for LayerNorm (exact). In training mode (or without running
    statistics) the batch statistics couple the examples and the call is refused."""

    name = "batchnorm_eval"

    def check(self, module: Any, mname: str) -> None:
        if module.training or module.running_mean is None:
            from dynalens.errors import InvalidInputError

            raise InvalidInputError(
                f"per-example gradients are undefined for {mname!r} "
                f"({type(module).__name__}) normalising with batch statistics (training "
                "mode, or track_running_stats=False): the statistics couple the examples. "
                "Call model.eval() (BatchNorm with running statistics is an affine map, "
                "measured exactly), use GroupNorm/LayerNorm, or attach with policy='warn' "
                "while it is in training mode to leave it out."
            )

    def reduce_dims(self, module: Any, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(range(2, x.ndim))

    def xhat(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = module.running_mean.reshape(shape)
        var = module.running_var.reshape(shape)
        return (x - mean) / torch.sqrt(var + module.eps)


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


def is_hf_conv1d(module: Any) -> bool:
    """transformers' ``Conv1D`` (GPT-2, GPT): weight (nx, nf), ``y = x W + b``; recognised
    without importing transformers."""
    w = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(w, torch.Tensor)
        and tuple(w.shape) == (getattr(module, "nx", None), getattr(module, "nf", None))
    )


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
    if is_hf_conv1d(module):
        return TransposedLinearRule()
    if isinstance(module, nn.EmbeddingBag):
        return EmbeddingBagRule() if module.mode in ("sum", "mean") else None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return BatchNormEvalRule()
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
