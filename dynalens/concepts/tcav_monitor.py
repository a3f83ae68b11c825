r"""TCAV as an instrument of the training loop: a metric for
:class:`~dynalens.concepts.monitor.ConceptMonitor` (Kim et al. 2018 scores over training).

:func:`tcav_metric` returns ``fn(model, x, c, y) -> float`` for the monitor (or for
:func:`~dynalens.concepts.monitor.concept_metrics_from_checkpoints`). At each scheduled
step, on the fixed probe set, it

1. reads the activations of ``layer`` for the probe rows with concept j present
   (``c[:, j] = 1``) and absent (``c[:, j] = 0``), and trains the CAV of concept j
   (:func:`~dynalens.estimators.concepts.cav.train_cav`, seeded split; the layer's
   representation moves during training, so the CAV is retrained at every step);
2. takes the directional derivatives :math:`S(x) = \nabla_a h(a(x)) \cdot v` over the
   probe rows of class ``target``, h = the target's task logit (``sign="logit_pos"``)
   or its cross-entropy (``"loss_neg"``)
   (:func:`~dynalens.estimators.concepts.tcav.directional_derivatives`);
3. returns the TCAV score, the share of S > 0 (resp. S < 0)
   (:func:`~dynalens.estimators.concepts.tcav.tcav_scores`).

The model must return ``(concept logits, task logits)``; the gradient is taken through
the task logits only, on a copy of the model without a Recorder's capture hooks: a
Recorder skips no-grad evaluation passes but records grad-enabled ones, so TCAV's
gradient passes on the live model would be taken for the next training batch.
``layer`` names a module of the model (``model.named_modules()``).
The significance test over random sets (:class:`~dynalens.estimators.concepts.TCAV`) is
not repeated at every step: it is for a final, fixed model.

Example
-------
>>> mon = ConceptMonitor(model, (x, c, y), {"tcav_red": tcav_metric("encoder.1", 3, 0)},
...                      every=10, recorder=rec).attach()  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dynalens._validation import check_int, check_option
from dynalens.errors import InvalidInputError

__all__ = ["tcav_metric"]


class _TaskLogits(nn.Module):
    """The task logits of a ``(concept logits, task logits)`` model, for the gradient."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[1]


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _unhooked_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without a Recorder's capture hooks; every other hook
    (weight norm, an active intervention) is kept."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for attr in _HOOKS:
            hooks = getattr(module, attr, None)
            if not hooks:
                continue
            ours = [k for k, fn in hooks.items() if _is_dynalens(fn)]
            for key in ours:
                del hooks[key]
    return twin


_RECORDER_MODULES = ("dynalens.probe.hooks", "dynalens.probe.recorder")


def _is_dynalens(fn: Any) -> bool:
    """Whether a hook is a Recorder's capture hook (interventions' hooks are kept)."""
    return getattr(fn, "__module__", None) in _RECORDER_MODULES


def tcav_metric(
    layer: str,
    concept: int,
    target: int,
    *,
    sign: str = "logit_pos",
    method: str = "logistic",
    seed: int = 0,
) -> Any:
    """A monitor metric: the TCAV score of concept index ``concept`` for class
    ``target`` at ``layer`` (module docstring). Returns ``fn(model, x, c, y) -> float``."""
    from dynalens.estimators.concepts._layers import layer_activations
    from dynalens.estimators.concepts.cav import train_cav
    from dynalens.estimators.concepts.tcav import SIGNS, directional_derivatives, tcav_scores

    sign = check_option("sign", sign, SIGNS)
    concept = check_int("concept", concept, min=0)
    target = check_int("target", target, min=0)
    seed = check_int("seed", seed)

    def tcav_score(model: nn.Module, x: Any, c: Any, y: Any) -> float:
        if concept >= c.shape[1]:
            raise InvalidInputError(
                f"tcav_metric: concept index {concept} but the probe set has {c.shape[1]} concepts."
            )
        wrapped = _TaskLogits(_unhooked_copy(model)).eval()
        name = f"model.{layer}"
        present = c[:, concept] > 0.5
        rows = y == target
        if not bool(rows.any()):
            raise InvalidInputError(
                f"tcav_metric: no probe row has class {target}; the TCAV score averages over "
                "the target class's inputs. Use a probe set that contains it."
            )
        pos = layer_activations(wrapped, x[present], name)
        neg = layer_activations(wrapped, x[~present], name)
        cav = train_cav(pos, neg, layer=name, name=f"concept {concept}", method=method,
                        seed=seed)  # fmt: skip
        s = directional_derivatives(wrapped, x[rows], name, [cav], target, sign=sign)
        return float(tcav_scores(s, sign)[0])

    tcav_score.__name__ = f"tcav_c{concept}_y{target}"
    return tcav_score
