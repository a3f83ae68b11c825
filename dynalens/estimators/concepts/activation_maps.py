r"""Concept activation maps: where in the input a concept prediction comes from.

For a concept encoder :math:`g: x \mapsto z \in \mathbb{R}^k` (concept logits) and input
x (n, C, H, W), the map of concept j (one (H, W) map per image and concept):

- ``"gradient"`` (Simonyan et al. 2014): :math:`\max_{ch} |\partial z_j / \partial x_{ch}|`;
- ``"grad_x_input"`` (Shrikumar et al. 2016): :math:`\sum_{ch} x_{ch}\,\partial z_j /
  \partial x_{ch}`, signed; for a linear :math:`z_j = \langle w_j, x\rangle` the maps sum
  to :math:`z_j` (completeness);
- ``"gradcam"`` (Selvaraju et al. 2017, Grad-CAM) at a convolutional ``layer`` with
  activations A (n, d, h, w): :math:`\mathrm{ReLU}(\sum_{ch} \alpha_{ch} A_{ch})`,
  :math:`\alpha_{ch} = \frac{1}{hw}\sum_{uv} \partial z_j / \partial A_{ch,uv}`, upsampled
  bilinearly to (H, W) (``relu=False`` keeps the sign).

:func:`coam` is the Concept Activation Map of Aysel et al. 2025 ("Concept-Based
Explainable Artificial Intelligence: Metrics and Benchmarks", arXiv 2501.19271), as
reconstructed in the project guide (§3.9; the paper's text was not available to check):
with a CAV bank C (L, d) on feature maps E (n, d, h, w),
:math:`F_j = \frac1d \sum_{ch} C_{j,ch} E_{ch}`, upsampled to (H, W). For a concept that is
linear in the global-average-pooled features, :math:`z_j = \langle C_j, \mathrm{GAP}(E)
\rangle`, Grad-CAM before its ReLU equals :math:`d/(hw)` times the CoAM (tested).

Gradients are taken per concept with the model in evaluation mode and the model's own
parameters untouched; rows are independent, so a batch gives per-image maps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dynalens._validation import check_bool, check_int, check_option
from dynalens.errors import InvalidInputError, InvalidParameterError

__all__ = ["METHODS", "coam", "concept_activation_maps"]

METHODS = ("gradient", "grad_x_input", "gradcam")


def concept_activation_maps(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    method: str = "grad_x_input",
    concepts: Sequence[int] | None = None,
    layer: nn.Module | None = None,
    relu: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Maps (n, k', H, W) float32 of the concept logits ``model(x)`` (n, k).

    Parameters
    ----------
    model : callable mapping x (n, C, H, W) to concept logits (n, k), e.g. a CBM's encoder.
    x : images (n, C, H, W).
    method : ``"gradient"``, ``"grad_x_input"`` or ``"gradcam"`` (needs ``layer``).
    concepts : which columns of the logits (default all).
    layer : for Grad-CAM, the module whose output (n, d, h, w) is attributed.
    relu : Grad-CAM's final ReLU (False keeps negative evidence).
    batch_size : rows per forward / backward pass (default all at once).

    Examples
    --------
    >>> enc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 2))
    >>> concept_activation_maps(enc, torch.randn(5, 3, 8, 8)).shape
    torch.Size([5, 2, 8, 8])
    """
    method = check_option("method", method, METHODS)
    relu = check_bool("relu", relu)
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[0] == 0:
        raise InvalidInputError(
            f"x must be a non-empty image batch (n, C, H, W); got shape {tuple(x.shape)}. "
            "Add the channel axis with x[:, None] for grey images."
        )
    if method == "gradcam" and not isinstance(layer, nn.Module):
        raise InvalidParameterError(
            "method='gradcam' needs layer=<the conv module whose (n, d, h, w) output is "
            "attributed>, e.g. layer=model.features[-1]."
        )
    n = x.shape[0]
    size = n if batch_size is None else check_int("batch_size", batch_size, min=1)
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        parts = [
            _maps(model, x[s : s + size], method, concepts, layer, relu) for s in range(0, n, size)
        ]
    finally:
        if isinstance(model, nn.Module) and was_training:
            model.train()
    return torch.cat(parts)


def _maps(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    method: str,
    concepts: Sequence[int] | None,
    layer: nn.Module | None,
    relu: bool,
) -> torch.Tensor:
    captured: dict[str, torch.Tensor] = {}
    handle = None
    if method == "gradcam":
        assert layer is not None  # checked by the caller

        def keep(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            captured["a"] = out

        handle = layer.register_forward_hook(keep)
    xg = x.detach().clone().requires_grad_(method != "gradcam")
    try:
        with torch.enable_grad():
            z = model(xg)
    finally:
        if handle is not None:
            handle.remove()
    if z.ndim != 2 or z.shape[0] != x.shape[0]:
        raise InvalidInputError(
            f"model(x) must return concept logits (n, k) = ({x.shape[0]}, k); got shape "
            f"{tuple(z.shape)}. Pass the concept encoder, not the whole CBM."
        )
    cols = list(range(z.shape[1])) if concepts is None else [int(j) for j in concepts]
    bad = [j for j in cols if not 0 <= j < z.shape[1]]
    if bad:
        raise InvalidParameterError(
            f"concepts {bad} are out of range; the model has {z.shape[1]} concept logits."
        )
    target = captured.get("a") if method == "gradcam" else xg
    if target is None or target.ndim != 4:
        shape = None if target is None else tuple(target.shape)
        raise InvalidInputError(
            f"Grad-CAM's layer must output a feature map (n, d, h, w); got {shape}. Pick a "
            "convolutional layer that the forward pass runs."
        )
    out = []
    for i, j in enumerate(cols):
        (grad,) = torch.autograd.grad(z[:, j].sum(), target, retain_graph=i < len(cols) - 1)
        if method == "gradient":
            m = grad.abs().amax(1)
        elif method == "grad_x_input":
            m = (grad * xg).sum(1)
        else:
            alpha = grad.mean((2, 3), keepdim=True)
            m = _upsample((alpha * target).sum(1), x.shape[-2:])
            m = m.clamp_min(0) if relu else m
        out.append(m.detach().float())
    return torch.stack(out, 1)


def coam(features: Any, cavs: Any, size: tuple[int, int]) -> torch.Tensor:
    """Concept Activation Maps (n, L, H, W) of CAVs ``cavs`` (L, d) on feature maps
    ``features`` (n, d, h, w): :math:`F_j = \\frac1d \\sum_{ch} C_{j,ch} E_{ch}`, upsampled
    bilinearly to ``size`` = (H, W).

    Examples
    --------
    >>> coam(torch.ones(2, 4, 3, 3), torch.ones(5, 4), (6, 6)).shape
    torch.Size([2, 5, 6, 6])
    """
    e = torch.as_tensor(features, dtype=torch.float32)
    c = torch.as_tensor(cavs, dtype=torch.float32)
    if e.ndim != 4 or c.ndim != 2 or c.shape[1] != e.shape[1]:
        raise InvalidInputError(
            f"coam needs features (n, d, h, w) and cavs (L, d) with the same d; got "
            f"{tuple(e.shape)} and {tuple(c.shape)}. A CAV trained on another layer does not "
            "apply here."
        )
    maps = torch.einsum("ld,ndhw->nlhw", c, e) / e.shape[1]
    return _upsample(maps, tuple(size))


def _upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (n, h, w) or (n, L, h, w) maps to (H, W)."""
    squeeze = maps.ndim == 3
    m = maps[:, None] if squeeze else maps
    if tuple(m.shape[-2:]) != tuple(size):
        m = nn.functional.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
    return m[:, 0] if squeeze else m
