r"""Synthetic concept images: one coloured shape per image, with per-concept pixel masks.

Factors as in :mod:`~dynalens.concepts.data.factors` (shape circle / square / triangle,
colour red / green / blue, size small / large, position top-left / top-right /
bottom-left / bottom-right; colour copies shape with probability ``rho``). Each image
(3, size, size) float32 is a dark grey background with Gaussian pixel noise and one
object centred in its quadrant (a jitter of up to ``size // 16`` pixels): radius
``size / 8`` (small) or ``size / 5`` (large); a circle, an axis-aligned square of half
side 0.85 r, or an upward triangle; filled with its colour at intensity 0.9.

``spurious`` in [0, 1]: with that probability a sample's background brightness encodes
its class (0.05 + 0.1 t / (T - 1)), otherwise it is drawn from the same levels at random:
a shortcut present in training data, absent with ``spurious=0`` (test data).

Masks (n, 12, H, W) bool: for each present concept, the object's pixels (one object, so
every present concept shares them; absent concepts have empty masks). The task, hidden
concepts and annotation follow the tabular variant (:func:`make_tabular_concepts`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dynalens._validation import check_float, check_int
from dynalens.concepts.data.annotate import annotate, check_annotation
from dynalens.concepts.data.factors import (
    DEFAULT_RULE,
    ConceptData,
    Rule,
    factors_to_concepts,
    sample_factors,
)
from dynalens.concepts.data.objects import object_masks

__all__ = ["make_shapes"]

_COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])


def make_shapes(
    n: int,
    *,
    size: int = 24,
    rho: float = 0.0,
    annotation: str = "instance",
    concept_noise: float = 0.0,
    label_noise: float = 0.0,
    hidden: Sequence[str] = (),
    spurious: float = 0.0,
    pixel_noise: float = 0.05,
    rule: Rule = DEFAULT_RULE,
    seed: int = 0,
) -> ConceptData:
    """Render ``n`` concept images with masks; see the module docstring.

    Examples
    --------
    >>> data = make_shapes(100, rho=0.5, seed=0)
    >>> data.x.shape, data.masks.shape
    (torch.Size([100, 3, 24, 24]), torch.Size([100, 12, 24, 24]))
    """
    n = check_int("n", n, min=1)
    size = check_int("size", size, min=12)
    rho = check_float("rho", rho, min=0.0, max=1.0)
    spurious = check_float("spurious", spurious, min=0.0, max=1.0)
    pixel_noise = check_float("pixel_noise", pixel_noise, min=0.0)
    seed = check_int("seed", seed)
    hidden, concept_noise, label_noise = check_annotation(
        rule, hidden, annotation, concept_noise, label_noise
    )
    g = torch.Generator().manual_seed(seed)
    factors = sample_factors(n, rho, g)
    c_full = factors_to_concepts(factors)
    shape, colour, big, position = factors.unbind(1)
    half = size / 2
    jitter = max(size // 16, 0)
    cy = (position // 2).float() * half + half / 2
    cx = (position % 2).float() * half + half / 2
    cy = cy + torch.randint(-jitter, jitter + 1, (n,), generator=g)
    cx = cx + torch.randint(-jitter, jitter + 1, (n,), generator=g)
    radius = torch.where(big == 1, size / 5.0, size / 8.0)
    obj = object_masks(shape, cy, cx, radius, size)

    y_clean = rule.apply(c_full)
    levels = 0.05 + 0.1 * torch.arange(rule.n_classes, dtype=torch.float32) / max(
        rule.n_classes - 1, 1
    )
    tied = torch.rand(n, generator=g) < spurious
    level = torch.where(
        tied, levels[y_clean], levels[torch.randint(rule.n_classes, (n,), generator=g)]
    )
    x = level[:, None, None, None].expand(n, 3, size, size).clone()
    x = torch.where(obj[:, None], _COLOURS[colour][:, :, None, None], x)
    x = x + pixel_noise * torch.randn(x.shape, generator=g)
    masks = obj[:, None] & c_full.bool()[:, :, None, None]

    c, y, names, groups = annotate(c_full, rule, hidden, annotation, concept_noise, label_noise, g)
    return ConceptData(
        x=x,
        c=c,
        y=y,
        names=names,
        groups=groups,
        rule=rule,
        c_full=c_full,
        hidden=hidden,
        settings={
            "n": n, "size": size, "rho": rho, "annotation": annotation,
            "concept_noise": concept_noise, "label_noise": label_noise,
            "spurious": spurious, "pixel_noise": pixel_noise, "seed": seed,
        },
        masks=masks,
    )  # fmt: skip
