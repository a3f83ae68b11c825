"""What the per-example engine measures: a rule per module, and one call awaiting its rule.

:func:`plan_modules` walks a model once at attach time and pairs each module that owns
trainable parameters with the rule of :mod:`dynalens.dynamics._rules` that turns its
captured inputs and output gradient into per-example norms; :class:`Call` is one forward
call of such a module, completed in backward by the gradient at its output and evaluated
lazily (once) when the first of its parameters' hooks asks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dynalens.dynamics._rules import FuncRule, Rule, rule_for, squared_norms
from dynalens.errors import InvalidParameterError, listing

__all__ = ["OPAQUE", "Call", "FuncRule", "PlanEntry", "Rule", "plan_modules"]

#: Modules whose forward uses child parameters without calling the children.
OPAQUE: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)

#: (module name, module, rule, [(local parameter name, parameter)])
PlanEntry = tuple[str, nn.Module, Rule, list[tuple[str, nn.Parameter]]]


class Call:
    """One forward call of a module, completed by the gradient at its output."""

    __slots__ = ("_per_example", "_sq", "g", "inputs", "kwargs", "module", "rule")

    def __init__(
        self,
        rule: Rule,
        module: nn.Module,
        inputs: tuple[Any, ...],
        g: torch.Tensor,
        kwargs: dict[str, Any] | None = None,
    ):
        self.rule, self.module, self.inputs, self.g = rule, module, inputs, g
        self.kwargs = kwargs
        self._sq: dict[str, torch.Tensor] | None = None
        self._per_example: dict[str, torch.Tensor] | None = None

    def sq(self, local: str) -> torch.Tensor:
        if self._sq is None:
            if self.kwargs:  # a replayed call with keywords: from its per-example gradients
                self._sq = squared_norms(self._grads())
            else:
                self._sq = self.rule.sq_norms(self.module, self.inputs, self.g)
        return self._sq[local]

    def per_example(self, local: str) -> torch.Tensor:
        return self._grads()[local]

    def _grads(self) -> dict[str, torch.Tensor]:
        if self._per_example is None:
            if self.kwargs:  # only the torch.func rule replays a call, and sees keywords
                assert isinstance(self.rule, FuncRule)
                self._per_example = self.rule.per_example(
                    self.module, self.inputs, self.g, self.kwargs
                )
            else:
                self._per_example = self.rule.per_example(self.module, self.inputs, self.g)
        return self._per_example


def plan_modules(model: nn.Module, units: Iterable[str], policy: str) -> list[PlanEntry]:
    """``(module name, module, rule, own trainable parameters)`` for every module measured.

    Opaque modules (``OPAQUE`` and the ``units`` named by the user) are one entry with all
    their parameters and the torch.func rule; modules without a rule raise, warn or fall
    back by ``policy``; batch-normalised ones are refused except under ``"warn"``.
    """
    units = set(units)
    plan: list[PlanEntry] = []
    unsupported: list[str] = []
    batchnorm: list[str] = []
    covered: set[str] = set()
    for mname, m in model.named_modules():
        if any(mname.startswith(c + ".") for c in covered):
            continue
        opaque = isinstance(m, OPAQUE) or mname in units
        own = [(n, p) for n, p in m.named_parameters(recurse=opaque) if p.requires_grad]
        if opaque:
            covered.add(mname)
        if not own:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            batchnorm.append(mname)
            continue
        if isinstance(m, nn.MultiheadAttention) and not m.batch_first:
            raise InvalidParameterError(
                f"module {mname!r} is nn.MultiheadAttention with batch_first=False; "
                "per-example gradients need the batch on dim 0. Build it with "
                "batch_first=True."
            )
        rule = None if opaque else rule_for(m)
        if rule is None:
            if mname in units or policy == "fallback":
                rule = FuncRule(recurse=opaque)
            else:
                unsupported.append(f"{mname} ({type(m).__name__})")
                continue
        plan.append((mname, m, rule, own))
    skipped = list(batchnorm) + unsupported
    if batchnorm and policy != "warn":
        raise InvalidParameterError(
            f"per-example gradients are undefined for batch-normalised modules "
            f"({listing(batchnorm)}): batch statistics couple the examples. Use "
            "GroupNorm/LayerNorm, or policy='warn' to skip them (their parameters are "
            "then left out of every statistic)."
        )
    if unsupported and policy == "raise":
        raise InvalidParameterError(
            f"no per-example gradient rule for {listing(unsupported)}; rules exist for "
            "Linear, Embedding, LayerNorm, RMSNorm, GroupNorm and Conv2d (groups=1). "
            "Pass policy='fallback' to use torch.func.vmap(grad) for these modules, or "
            "policy='warn' to leave their parameters out."
        )
    if skipped and policy == "warn":
        warnings.warn(
            f"per-example gradient norms leave out the parameters of {listing(skipped)}"
            " (no rule; policy='warn'). Statistics cover the other parameters only.",
            stacklevel=3,
        )
    return plan
