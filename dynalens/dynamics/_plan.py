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

from dynalens.dynamics._replay import FuncRule, ReplaySpec, time_major_transformer
from dynalens.dynamics._rules import Rule, rule_for, squared_norms
from dynalens.errors import InvalidParameterError, listing

__all__ = ["OPAQUE", "Call", "FuncRule", "PlanEntry", "Rule", "plan_modules"]

#: Modules whose forward uses child parameters without calling the children.
OPAQUE: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)

#: (module name, module, rule, [(local parameter name, parameter)])
PlanEntry = tuple[str, nn.Module, Rule, list[tuple[str, nn.Parameter]]]


class Call:
    """One forward call of a module, completed by the gradient at its output.

    For the torch.func rule ``g`` is the list of gradients of every output leaf of the
    call (None where none arrived) and ``spec`` its batch layout.
    """

    __slots__ = ("_per_example", "_sq", "g", "inputs", "module", "rule", "spec")

    def __init__(
        self,
        rule: Rule,
        module: nn.Module,
        inputs: tuple[Any, ...],
        g: Any,
        spec: ReplaySpec | None = None,
    ):
        self.rule, self.module, self.inputs, self.g = rule, module, inputs, g
        self.spec = spec
        self._sq: dict[str, torch.Tensor] | None = None
        self._per_example: dict[str, torch.Tensor] | None = None

    def sq(self, local: str) -> torch.Tensor:
        if self._sq is None:
            if self.spec is not None:  # a replayed call: from its per-example gradients
                self._sq = squared_norms(self._grads())
            else:
                self._sq = self.rule.sq_norms(self.module, self.inputs, self.g)
        return self._sq[local]

    def per_example(self, local: str) -> torch.Tensor:
        return self._grads()[local]

    def add_grad(self, k: int, grad: torch.Tensor) -> None:
        """The gradient of output ``k`` arrived (replayed calls): results computed before
        it are stale for the parameters whose hooks have not fired yet."""
        self.g[k] = grad
        self._sq = self._per_example = None

    def _grads(self) -> dict[str, torch.Tensor]:
        if self._per_example is None:
            if self.spec is not None:
                assert isinstance(self.rule, FuncRule)
                self._per_example = self.rule.per_example(
                    self.module, self.inputs, self.g, self.spec
                )
            else:
                self._per_example = self.rule.per_example(self.module, self.inputs, self.g)
        return self._per_example


def plan_modules(model: nn.Module, units: Iterable[str], policy: str) -> list[PlanEntry]:
    """``(module name, module, rule, own trainable parameters)`` for every module measured.

    Opaque modules (``OPAQUE`` and the ``units`` named by the user; ``""`` is the whole
    model) are one entry with all their parameters and the torch.func rule; modules without
    a rule raise, warn or fall back by ``policy``; BatchNorm in training mode (batch
    statistics) is refused except under ``"warn"``, in eval mode it has an exact rule.
    """
    units = set(units)
    plan: list[PlanEntry] = []
    unsupported: list[str] = []
    batchnorm: list[str] = []
    covered: set[str] = set()
    for mname, m in model.named_modules():
        if any(c == "" or mname.startswith(c + ".") for c in covered):
            continue  # inside an opaque unit ("" : the root covers every module)
        opaque = isinstance(m, OPAQUE) or mname in units or time_major_transformer(m)
        own = [(n, p) for n, p in m.named_parameters(recurse=opaque) if p.requires_grad]
        if opaque:
            covered.add(mname)
        if not own:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
            m.training or m.running_mean is None
        ):  # batch statistics: refused (eval BatchNorm is affine, its rule is exact)
            batchnorm.append(mname)
            continue
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
            f"per-example gradients are undefined for BatchNorm normalising with batch "
            f"statistics ({listing(batchnorm)}: training mode or track_running_stats=False): "
            "the statistics couple the examples. Call model.eval() before attaching (eval "
            "BatchNorm is an affine map, measured exactly), use GroupNorm/LayerNorm, or "
            "policy='warn' to skip them (their parameters are then left out of every "
            "statistic)."
        )
    if unsupported and policy == "raise":
        raise InvalidParameterError(
            f"no per-example gradient rule for {listing(unsupported)}; rules exist for "
            "Linear, transformers' Conv1D, Embedding, EmbeddingBag (sum/mean), LayerNorm, "
            "RMSNorm, GroupNorm, eval-mode BatchNorm and Conv2d (groups=1). "
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
