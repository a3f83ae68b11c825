"""Forward hooks of :class:`~dynalens.dynamics.per_example.PerExampleGradNorms`.

* :func:`forward_hook`: a module with a closed-form rule; a tensor hook on its output hands
  the rule ``g = ∂L/∂(output)`` (its norms are computed at once when the call is the
  module's only one in the pass, else queued for the parameter hooks).
* :func:`replay_hook`: a module measured by the torch.func replay; every output that
  requires grad gets a tensor hook, and the call's batch layout is read (and refused where
  it cannot be exact) at the forward, where the user called the model.
* :func:`batch_hook` and :func:`expand_hook`: the pass's batch size, and the expanded view
  of an embedding called with broadcast ``(1, T)`` indices.
* :func:`missed_message`: why a parameter got gradients but no per-example norms.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from dynalens.dynamics._plan import Call, FuncRule, Rule
from dynalens.dynamics._replay import replay_spec
from dynalens.errors import InvalidInputError, listing
from dynalens.probe.hooks import first_tensor

if TYPE_CHECKING:
    from dynalens.dynamics.per_example import PerExampleGradNorms


def forward_hook(
    engine: PerExampleGradNorms,
    rule: Rule,
    entries: list[tuple[str, int]],
    slot: int,
    early: bool,
    mname: str,
) -> Callable[..., None]:
    """The forward hook of module slot ``slot`` (``mname``) measured by ``rule``;
    ``entries``: its ``(local parameter name, parameter id)``; ``early``: its norms may be
    computed as soon as its output gradient arrives (closed form, own parameters)."""
    calls = engine._calls
    if isinstance(rule, FuncRule):
        return replay_hook(engine, rule, entries, slot, mname)
    keywords = rule.keywords

    def fwd(
        mod: nn.Module, args: tuple[Any, ...], out: Any, kwargs: dict[str, Any] | None = None
    ) -> None:
        if not engine.active or engine._busy:  # _busy: a fallback rule replays a forward
            return
        t = out if isinstance(out, torch.Tensor) else first_tensor(out)
        if t is None or not t.requires_grad:
            return
        rule.check(mod, mname)
        if keywords:
            args = rule.positional(mod, args, kwargs or {})
        calls[slot] += 1
        if t._is_view():  # an in-place op on it later would drop the hook: note it
            engine._log.views[slot] = (mname, weakref.ref(t), t._version)

        def on_grad(grad: torch.Tensor) -> None:
            log = engine._log
            if early and calls[slot] == 1 and not torch.is_grad_enabled():
                sqs = rule.sq_norms(mod, args, grad)  # one call: its norms right away
                for local, pid in entries:
                    log.ready[pid] = sqs[local]
                return
            call = Call(rule, mod, args, grad)
            pending = log.pending
            for local, pid in entries:
                pending[pid].append((call, local))

        t.register_hook(on_grad)

    return fwd


def replay_hook(
    engine: PerExampleGradNorms,
    rule: FuncRule,
    entries: list[tuple[str, int]],
    slot: int,
    mname: str,
) -> Callable[..., None]:
    """Forward hook of a module measured by the torch.func replay: every output that
    requires grad gets a tensor hook; the call is queued when the first gradient comes
    and re-evaluated if another output's gradient comes after it was evaluated."""
    calls = engine._calls

    def fwd(
        mod: nn.Module, args: tuple[Any, ...], out: Any, kwargs: dict[str, Any] | None = None
    ) -> None:
        if not engine.active or engine._busy:
            return
        leaves = tree_flatten(out)[0]
        outs = [
            (k, t) for k, t in enumerate(leaves)
            if isinstance(t, torch.Tensor) and t.requires_grad
        ]  # fmt: skip
        if not outs:
            return
        spec = replay_spec(mod, mname, args, kwargs or {}, out)  # refuses what it cannot
        calls[slot] += 1
        call = Call(rule, mod, args, [None] * len(leaves), spec)
        queued = [False]

        def hook_for(k: int) -> Callable[[torch.Tensor], None]:
            def on_grad(grad: torch.Tensor) -> None:
                if spec.out_axes[k] is None:
                    raise InvalidInputError(
                        f"per-example gradients of module {mname!r}: gradient reached "
                        f"its output {k} of shape {tuple(grad.shape)}, which has no "
                        f"axis of the batch size {spec.batch}; the fallback cannot split "
                        "it per example. Give the module a batched output."
                    )
                call.add_grad(k, grad)
                if not queued[0]:
                    queued[0] = True
                    pending = engine._log.pending
                    for local, pid in entries:
                        pending[pid].append((call, local))

            return on_grad

        for k, t in outs:
            t.register_hook(hook_for(k))

    return fwd


def batch_hook(engine: PerExampleGradNorms) -> Callable[..., None]:
    """Forward pre-hook on the model: the pass's batch size B is the first axis of the
    first tensor the model is called with (positional, else keyword)."""

    def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        t = first_tensor(args)
        if t is None:
            t = first_tensor(kwargs)
        engine._pass_batch = int(t.shape[0]) if t is not None and t.ndim else None

    return pre


def expand_hook(engine: PerExampleGradNorms) -> Callable[..., torch.Tensor | None]:
    """An embedding called with broadcast ``(1, T)`` indices (GPT-2's and BERT's
    position embeddings) returns ``(1, T, d)``, broadcast against the batch by its
    consumer, so the gradient reaching it is already summed over the examples. The
    hook hands the consumer the same values as an expanded ``(B, T, d)`` view instead
    (what broadcasting computes anyway), so the gradient arrives per example."""

    def view(mod: nn.Module, args: tuple[Any, ...], out: Any) -> torch.Tensor | None:
        B = engine._pass_batch
        if not engine.active or engine._busy or B is None or B <= 1:
            return None
        idx = args[0] if args else None
        if (
            isinstance(out, torch.Tensor) and isinstance(idx, torch.Tensor)
            and idx.ndim >= 2 and idx.shape[0] == 1 and out.shape[0] == 1
            and out.requires_grad
        ):  # fmt: skip
            return out.expand(B, *out.shape[1:])
        return None

    return view


def missed_message(missed: set[str], inplace: dict[str, tuple[str, bool | None]]) -> str:
    """Why parameters got gradients but no per-example norms: the output of their module
    was a view modified in place (its gradient hook dropped), or their module was not
    called (a parent used the parameters directly)."""
    if inplace:
        mods = sorted({m for m, _ in inplace.values()})
        sure = any(v for _, v in inplace.values())
        return (
            f"parameters {listing(inplace)} received gradients, but the gradient at the "
            f"output of {listing(repr(m) for m in mods)} never arrived: that output is a view "
            "(e.g. a Linear on a 3-D input reshapes its result) and it "
            + ("was" if sure else "was probably")
            + " modified in place after the module returned (e.g. `h += x` or "
            "`h.add_(x)`), which replaces its autograd history and drops the hook dynalens "
            "put on it. Write the update out of place (`h = h + x`)."
        )
    return (
        f"parameters {listing(missed)} received gradients, but no forward call of the "
        "module that owns them was captured (a parent module used them without calling "
        "the child, as nn.MultiheadAttention does with out_proj). Name that parent in "
        "units=[...] so it is measured as one unit."
    )
