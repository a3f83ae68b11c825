"""Activations of, and gradients at, a named layer of any ``nn.Module`` (forward hooks
that are removed when the call ends, also on error)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dynalens.errors import InvalidInputError, SiteNotFoundError, close_matches, listing

__all__ = ["find_layer", "layer_activations", "layer_gradients"]


def find_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule named ``layer`` (a name of ``model.named_modules()``)."""
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        names = [n for n in modules if n]
        raise SiteNotFoundError(
            f"layer {layer!r} not found in {type(model).__name__}"
            f"{close_matches(layer, names) or '.'} "
            f"Layers: {listing(names)}."
        )
    return modules[layer]


def _capture(module: nn.Module, store: dict[str, torch.Tensor]) -> Any:
    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        if not torch.is_tensor(out):
            raise InvalidInputError(
                f"layer {type(_m).__name__} returns {type(out).__name__}, not a tensor; "
                "choose a layer whose output is one tensor."
            )
        store["out"] = out

    return module.register_forward_hook(hook)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def layer_activations(
    model: nn.Module, inputs: torch.Tensor, layer: str, *, batch_size: int = 512
) -> torch.Tensor:
    """Flattened outputs (n, d) float64 of ``layer`` for ``inputs`` (no gradients)."""
    module = find_layer(model, layer)
    store: dict[str, torch.Tensor] = {}
    parts = []
    handle = _capture(module, store)
    try:
        with torch.no_grad():
            for sl in _batches(len(inputs), batch_size):
                model(inputs[sl])
                parts.append(store.pop("out").reshape(sl.stop - sl.start, -1).double())
    finally:
        handle.remove()
    return torch.cat(parts)


def layer_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    objective: Callable[[torch.Tensor, slice], torch.Tensor],
    *,
    batch_size: int = 512,
) -> torch.Tensor:
    """Per-sample gradients (n, d) float64 of ``objective(outputs, rows)`` (one value per
    row) with respect to the flattened output of ``layer``. Rows must not interact
    (eval mode), so the gradient of the sum is each row's own gradient."""
    if model.training:
        raise InvalidInputError(
            f"{type(model).__name__} is in training mode; batch statistics (BatchNorm) and "
            "dropout would mix or randomise the rows' gradients. Call model.eval() first."
        )
    module = find_layer(model, layer)
    store: dict[str, torch.Tensor] = {}
    parts = []
    handle = _capture(module, store)
    try:
        for sl in _batches(len(inputs), batch_size):
            with torch.enable_grad():
                out = model(inputs[sl])
                act = store.pop("out")
                if not act.requires_grad:
                    raise InvalidInputError(
                        f"the output of layer {layer!r} does not require a gradient, so the "
                        "model's output cannot be differentiated with respect to it; choose "
                        "a layer after the first parameterised module or unfreeze it."
                    )
                (grad,) = torch.autograd.grad(objective(out, sl).sum(), act)
            parts.append(grad.reshape(sl.stop - sl.start, -1).double())
    finally:
        handle.remove()
    return torch.cat(parts)
