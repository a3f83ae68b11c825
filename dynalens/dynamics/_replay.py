"""The fallback rule: a module call replayed per example, and where the examples are in it.

The torch.func fallback (:class:`FuncRule`) replays one forward call
of a module per example and backpropagates, for each example ``b``, the gradients that
reached *every* output of the call (an LSTM's ``output`` and ``h_n``, nn.MultiheadAttention's
attention weights) through the replay:

    ∇θ l_b = ∇θ Σ_k ⟨y_k(x_b; θ), g_{k,b}⟩                     (exact: the chain rule)

so it must know, for every tensor argument and output of the call, on which axis the
examples are (or that it is shared by all examples, such as a ``(T, T)`` causal mask).
:func:`replay_spec` answers from the module's declared layout where it is known (recurrent
layers, attention, transformer layers, EmbeddingBag: ``batch_first`` honoured; ``h_n`` has
the batch on axis 1) and otherwise from shapes, refusing with an error where the shapes
cannot tell (an argument whose first axis has the batch size when the batch size also
equals another axis of the input, e.g. a ``(T, T)`` mask with ``T == B``). It also refuses a
replay that would differ from the call (dropout active in training mode draws new masks).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from dynalens.dynamics._rules import Rule
from dynalens.errors import InvalidInputError

__all__ = ["FuncRule", "ReplaySpec", "replay_spec"]


@dataclass
class ReplaySpec:
    """The batch layout of one call.

    Attributes:
        batch: B, examples in the call.
        in_axes: per tensor leaf of the arguments: the batch axis, or None
            (shared by all examples, or not a tensor).
        out_axes: per leaf of ``tree_flatten(output)``: the batch axis, or None (no batch
            axis: refused if gradient reaches it).
        call: the arguments by name (leaves in ``tree_flatten(list(call.values.values()))``
            order, the order of ``in_axes``).
        loop: replay example by example with autograd (modules torch.func cannot vmap).
    """

    batch: int
    in_axes: list[int | None]
    out_axes: list[int | None]
    call: Bound
    loop: bool = False


_SIGNATURES: dict[type, inspect.Signature | None] = {}


def bind(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Bound:
    """The call's arguments by name (positional ones named ``arg0``... without a signature)."""
    cls = type(module)
    if cls not in _SIGNATURES:
        try:
            _SIGNATURES[cls] = inspect.signature(module.forward)
        except (TypeError, ValueError):
            _SIGNATURES[cls] = None
    sig = _SIGNATURES[cls]
    if sig is not None:
        try:
            return Bound(dict(sig.bind(*args, **kwargs).arguments), sig, len(args))
        except TypeError:
            pass
    return Bound({**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}, None, len(args))


@dataclass
class Bound:
    """A call's arguments by name, and how to call again with new values."""

    values: dict[str, Any]
    signature: inspect.Signature | None
    n_positional: int

    def call_args(self, values: list[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` of the call with the argument values replaced (same order)."""
        named = dict(zip(self.values, values))
        if self.signature is not None:
            ba = inspect.BoundArguments(self.signature, named)
            return ba.args, ba.kwargs
        items = list(named.values())
        return tuple(items[: self.n_positional]), dict(list(named.items())[self.n_positional :])


_TRANSFORMERS = (
    nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder, nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)  # fmt: skip


def _time_axis(module: nn.Module) -> int:
    bf = getattr(module, "batch_first", None)
    if bf is None:  # transformer layers and containers: as their attention
        attn = next((m for m in module.modules() if isinstance(m, nn.MultiheadAttention)), None)
        bf = getattr(attn, "batch_first", False)
    return 0 if bf else 1


def time_major_transformer(module: nn.Module) -> bool:
    """An nn.Transformer* module with ``batch_first=False``: its Linear and LayerNorm
    children see ``(T, B, d)``, which their closed-form rules would split along time, so
    the engine measures the whole module as one replayed unit (batch on axis 1)."""
    return isinstance(module, _TRANSFORMERS) and _time_axis(module) == 1


def _known_layout(module: nn.Module) -> tuple[dict[str, int | None], list[int | None]] | None:
    """``({argument: batch axis}, [batch axis of output leaf k])`` for modules with a
    documented layout (PyTorch's shape conventions), else None."""
    t = _time_axis(module)
    if isinstance(module, nn.RNNBase):  # (output, h_n) or (output, (h_n, c_n)): h on axis 1
        return {"input": t, "hx": 1}, [t, 1, 1]
    if isinstance(module, nn.MultiheadAttention):  # attention weights are (N, [H,] L, S)
        return {"query": t, "key": t, "value": t, "key_padding_mask": 0, "attn_mask": None}, [t, 0]
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
        return {"src": t, "src_mask": None, "mask": None, "src_key_padding_mask": 0}, [t]
    if isinstance(module, nn.Transformer):
        axes0: dict[str, int | None] = {"src": t, "tgt": t, "src_key_padding_mask": 0}
        axes0.update(tgt_key_padding_mask=0, memory_key_padding_mask=0)
        return axes0, [t]  # the (T, T)/(T, S) masks are shared (None)
    if isinstance(module, (nn.TransformerDecoderLayer, nn.TransformerDecoder)):
        axes: dict[str, int | None] = {"tgt": t, "memory": t, "tgt_mask": None}
        axes.update(memory_mask=None, tgt_key_padding_mask=0, memory_key_padding_mask=0)
        return axes, [t]
    if isinstance(module, nn.EmbeddingBag):
        return {"input": 0, "per_sample_weights": 0}, [0]
    return None


def _dropout_active(module: nn.Module) -> list[str]:
    """Names of the parts of ``module`` that draw random masks in this call."""
    out = []
    for name, m in module.named_modules():
        if not m.training:
            continue
        p = 0.0
        if isinstance(m, nn.modules.dropout._DropoutNd):
            p = m.p
        elif isinstance(m, nn.MultiheadAttention):
            p = m.dropout
        elif isinstance(m, nn.RNNBase) and m.num_layers > 1:
            p = m.dropout
        if p > 0:
            out.append(name or type(m).__name__)
    return out


def _refuse(mname: str, what: str, fix: str) -> InvalidInputError:
    return InvalidInputError(
        f"per-example gradients of {mname}: {what}; the torch.func fallback cannot split this "
        f"call per example. {fix}"
    )


def _check_known_args(module: nn.Module, mname: str, bound: dict[str, Any]) -> None:
    first = next(iter(bound.values()), None)
    if isinstance(module, nn.RNNBase) and not isinstance(first, torch.Tensor):
        raise _refuse(
            mname, f"its input is a {type(first).__name__}", "Pass a padded (batched) tensor "
            "instead of a PackedSequence."
        )  # fmt: skip
    if isinstance(module, nn.EmbeddingBag) and bound.get("offsets") is not None:
        raise _refuse(
            mname, "it was called with offsets (ragged bags) in mode='max'",
            "Use mode='sum' or 'mean' (exact closed-form rule) or 2-D input without offsets.",
        )  # fmt: skip
    if isinstance(first, torch.Tensor) and first.ndim < (2 if isinstance(module, nn.EmbeddingBag)
                                                         else 3):  # fmt: skip
        raise _refuse(
            mname, f"its input of shape {tuple(first.shape)} has no batch axis (unbatched call)",
            "Call it with a batch of examples.",
        )  # fmt: skip
    for key in ("attn_mask", "src_mask", "mask", "tgt_mask", "memory_mask"):
        m = bound.get(key)
        if isinstance(m, torch.Tensor) and m.ndim == 3:
            raise _refuse(
                mname, f"{key} has shape {tuple(m.shape)} (one mask per example and head, "
                "batch and heads mixed on axis 0)", "Pass a 2-D (L, S) mask and per-example "
                "padding as key_padding_mask.",
            )  # fmt: skip


def _generic_axes(mname: str, bound: dict[str, Any], batch: int) -> dict[str, int | None]:
    """Arguments whose first axis has the batch size are split along it; refused where the
    batch size also equals another axis of the first such argument (ambiguous)."""
    axes: dict[str, int | None] = {}
    ref: tuple[str, torch.Tensor] | None = None
    for name, value in bound.items():
        leaves = [x for x in tree_flatten(value)[0] if isinstance(x, torch.Tensor) and x.ndim]
        hits = [x for x in leaves if x.shape[0] == batch]
        if not hits:
            axes[name] = None
            continue
        if ref is None:
            ref = (name, hits[0])
        elif batch > 1 and batch in ref[1].shape[1:]:
            raise _refuse(
                mname, f"argument {name!r} of shape {tuple(hits[0].shape)} may hold one row "
                f"per example or be shared: the batch size {batch} also equals another axis "
                f"of {ref[0]!r} {tuple(ref[1].shape)}", "Use a batch size that differs from "
                "the other axes (sequence length), or give the module a closed-form rule.",
            )  # fmt: skip
        axes[name] = 0
    if ref is None:
        raise _refuse(
            mname, f"no argument has the batch size {batch} on its first axis",
            "Call the module on a batch whose first axis is the examples.",
        )  # fmt: skip
    return axes


def replay_spec(
    module: nn.Module, mname: str, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> ReplaySpec:
    """The batch layout of one call of ``module`` (see the module docstring); raises
    :class:`InvalidInputError` where the replay could not be exact."""
    where = f"module {mname!r} ({type(module).__name__})"
    random = _dropout_active(module)
    if random:
        raise InvalidInputError(
            f"per-example gradients of {where}: dropout is active in training mode "
            f"({', '.join(random)}), and the torch.func fallback replays the call, which "
            "would draw new masks (wrong gradients). Set the dropout of this module to 0 or "
            "call model.eval() while measuring."
        )
    call = bind(module, args, kwargs)
    bound = call.values
    out_leaves = tree_flatten(output)[0]
    known = _known_layout(module)
    if known is not None:
        arg_axes, out_list = known
        _check_known_args(module, where, bound)
        axes = {n: arg_axes.get(n) for n in bound}
        out_axes = [out_list[min(i, len(out_list) - 1)] for i in range(len(out_leaves))]
        first = out_leaves[0]
        batch = int(first.shape[out_axes[0] or 0])
    else:
        first = next((x for x in out_leaves if isinstance(x, torch.Tensor)), None)
        if first is None or first.ndim == 0:
            raise _refuse(where, "its output has no batch axis", "Give it a batched output.")
        batch = int(first.shape[0])
        axes = _generic_axes(where, bound, batch)
        out_axes = [
            0 if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == batch else None
            for x in out_leaves
        ]
    in_axes: list[int | None] = []
    for name, value in bound.items():
        ax = axes.get(name)
        for leaf in tree_flatten(value)[0]:
            in_axes.append(ax if isinstance(leaf, torch.Tensor) and leaf.ndim else None)
    loop = isinstance(module, nn.RNNBase)  # fused RNN kernels do not vmap on CPU
    return ReplaySpec(batch, in_axes, out_axes, call, loop)


class FuncRule(Rule):
    """``torch.func.vmap(grad)`` over the examples; the module is replayed per example.

    For example ``b`` the replay backpropagates ``Σ_k ⟨y_k(x_b; θ), g_{k,b}⟩`` over every
    output ``y_k`` of the call that received a gradient ``g_k``, with each argument and
    output split along its batch axis (:func:`dynalens.dynamics._replay.replay_spec`).
    Recurrent layers (whose fused kernels torch.func cannot vmap) are replayed by a loop
    over the examples, one ``torch.autograd.grad`` each.
    """

    name = "torch.func"

    def __init__(self, recurse: bool = False) -> None:
        self.recurse = recurse

    def per_example(  # type: ignore[override]
        self,
        module: Any,
        inputs: tuple[Any, ...],
        g: list[torch.Tensor | None],
        spec: ReplaySpec,
    ) -> dict[str, torch.Tensor]:
        params = {
            n: p.detach()
            for n, p in module.named_parameters(recurse=self.recurse)
            if p.requires_grad
        }
        leaves, tree = tree_flatten(list(spec.call.values.values()))
        leaves = [x.detach() if isinstance(x, torch.Tensor) else x for x in leaves]
        used = [k for k, gk in enumerate(g) if gk is not None]
        grads = [g[k].detach() for k in used]  # type: ignore[union-attr]
        g_axes = [spec.out_axes[k] for k in used]
        if spec.loop:
            return self._loop(module, params, leaves, tree, spec, used, grads, g_axes)
        from torch.func import functional_call, grad, vmap

        axes = spec.in_axes

        def inner(p: dict[str, torch.Tensor], gs: list[torch.Tensor], *xs: Any) -> torch.Tensor:
            xs1 = [x if a is None else x.unsqueeze(a) for x, a in zip(xs, axes)]
            args, kw = spec.call.call_args(tree_unflatten(xs1, tree))
            outs = tree_flatten(functional_call(module, p, args, kw))[0]
            total = outs[used[0]].new_zeros(())
            for k, gk, a in zip(used, gs, g_axes):
                total = total + (outs[k] * gk.unsqueeze(a or 0)).sum()
            return total

        fn: Callable[..., dict[str, torch.Tensor]] = vmap(
            grad(inner), in_dims=(None, list(g_axes), *axes)
        )
        return fn(params, grads, *leaves)

    @staticmethod
    def _loop(
        module: Any, params: dict[str, torch.Tensor], leaves: list[Any], tree: Any,
        spec: ReplaySpec, used: list[int], grads: list[torch.Tensor], g_axes: list[Any],
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        from torch.func import functional_call

        p_req = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        rows: dict[str, list[torch.Tensor]] = {n: [] for n in params}
        for b in range(spec.batch):
            xs = [x if a is None else x.narrow(a, b, 1) for x, a in zip(leaves, spec.in_axes)]
            args, kw = spec.call.call_args(tree_unflatten(xs, tree))
            with torch.enable_grad():
                outs = tree_flatten(functional_call(module, p_req, args, kw))[0]
                got = torch.autograd.grad(
                    [outs[k] for k in used],
                    list(p_req.values()),
                    grad_outputs=[gk.narrow(a, b, 1) for gk, a in zip(grads, g_axes)],
                    allow_unused=True,
                )
            for (n, p), gp in zip(p_req.items(), got):
                rows[n].append(torch.zeros_like(p) if gp is None else gp)
        return {n: torch.stack(v) for n, v in rows.items()}
