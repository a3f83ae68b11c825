r"""Multi-object concept images: several shapes per image, tunable spatial co-occurrence.

The setting of Furby et al. 2024 ("Can we Constrain Concept Bottleneck Models to Learn
Semantically Meaningful Input Features?", arXiv 2402.00912), whose three-card images have
several concepts per image at different places: when two concepts always appear
together, a concept predictor can read either object, so its saliency may fall on the
wrong one.

Concept j = "an object of kind j is in the image" (kinds from
:data:`~dynalens.concepts.data.objects.OBJECT_KINDS`). Sampling per image: each concept is
present with probability ``p_present``; for each co-occurrence pair (a, b) the presence
of b copies that of a with probability ``rho`` (otherwise it is drawn independently), so

.. math:: P(c_a = c_b) = \rho + (1 - \rho)\,(p^2 + (1 - p)^2),

``rho = 0`` is independence and ``rho = 1`` makes the pair inseparable from labels alone.
Every present concept gets its own cell of a ``grid`` × ``grid`` layout (a random
permutation of cells per image), so objects never overlap: one object of radius 0.35 cell
(centre jittered by up to cell/10), a random colour among red / green / blue (a nuisance:
the concept is the shape), on a dark background (0.05) with Gaussian pixel noise.

Masks (n, k, H, W) bool hold each present concept's object pixels. The task is a
:class:`~dynalens.concepts.data.factors.Rule` over the kinds' names (default: one term per
pair's first member, e.g. ``y = [circle] + [triangle]``). ``annotation="class"`` replaces
every row by its class's majority labels; ``concept_noise`` flips labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dynalens._validation import check_float, check_int, check_option
from dynalens.concepts.data.annotate import _class_majority
from dynalens.concepts.data.factors import ConceptData, Rule
from dynalens.concepts.data.objects import OBJECT_KINDS, object_masks
from dynalens.errors import InvalidParameterError, close_matches

__all__ = ["make_multi_shapes"]

_COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])


def make_multi_shapes(
    n: int,
    *,
    size: int = 32,
    grid: int = 2,
    kinds: Sequence[str] = ("circle", "square", "triangle", "cross"),
    pairs: Sequence[tuple[int, int]] = ((0, 1), (2, 3)),
    rho: float = 0.0,
    p_present: float = 0.5,
    annotation: str = "instance",
    concept_noise: float = 0.0,
    rule: Rule | None = None,
    pixel_noise: float = 0.05,
    seed: int = 0,
) -> ConceptData:
    """Render ``n`` images with several objects each; see the module docstring.

    Parameters
    ----------
    n : number of images.
    size : image side in pixels (divisible by ``grid``).
    grid : cells per side; at most ``grid**2`` concepts.
    kinds : the concepts' object kinds (names from ``OBJECT_KINDS``).
    pairs : co-occurring concept pairs (a, b), as column indices; disjoint.
    rho : co-occurrence strength in [0, 1] (probability that b copies a).
    p_present : probability that a concept is present.
    annotation : ``"instance"`` or ``"class"`` (class-majority labels).
    concept_noise : probability in [0, 0.5] of flipping each concept label.
    rule : the task rule over ``kinds`` (default one term per pair's first member).
    pixel_noise : standard deviation of the Gaussian pixel noise.
    seed : seed of everything random.

    Returns
    -------
    ConceptData
        ``c`` (n, k) the (annotated) labels, ``c_full`` the true presence, ``masks``
        (n, k, size, size), ``groups`` one singleton per concept (not exclusive).

    Examples
    --------
    >>> data = make_multi_shapes(100, rho=1.0, seed=0)
    >>> data.x.shape, data.masks.shape, bool((data.c[:, 0] == data.c[:, 1]).all())
    (torch.Size([100, 3, 32, 32]), torch.Size([100, 4, 32, 32]), True)
    """
    n = check_int("n", n, min=1)
    grid = check_int("grid", grid, min=1)
    size = check_int("size", size, min=4 * grid)
    if size % grid:
        raise InvalidParameterError(
            f"size={size} is not divisible by grid={grid}; pass a multiple, e.g. "
            f"size={grid * (size // grid)}."
        )
    kinds = tuple(kinds)
    for name in kinds:
        if name not in OBJECT_KINDS:
            raise InvalidParameterError(
                f"unknown object kind {name!r}{close_matches(name, OBJECT_KINDS)} Kinds: "
                f"{', '.join(OBJECT_KINDS)}."
            )
    k = len(kinds)
    if k == 0 or k > grid * grid or len(set(kinds)) != k:
        raise InvalidParameterError(
            f"kinds must be 1 to grid**2 = {grid * grid} distinct names (one cell each); "
            f"got {k}: {kinds}. Raise grid or pass fewer kinds."
        )
    pairs = tuple((int(a), int(b)) for a, b in pairs)
    used = [i for pair in pairs for i in pair]
    if any(not 0 <= i < k for i in used) or len(set(used)) != len(used):
        raise InvalidParameterError(
            f"pairs must be disjoint pairs of column indices in [0, {k}); got {pairs}."
        )
    rho = check_float("rho", rho, min=0.0, max=1.0)
    p_present = check_float("p_present", p_present, min=0.0, max=1.0)
    check_option("annotation", annotation, ("instance", "class"))
    concept_noise = check_float("concept_noise", concept_noise, min=0.0, max=0.5)
    pixel_noise = check_float("pixel_noise", pixel_noise, min=0.0)
    seed = check_int("seed", seed)
    if rule is None:
        terms = tuple((kinds[a],) for a, _ in pairs) or ((kinds[0],),)
        rule = Rule(terms, n_classes=len(terms) + 1)
    for name in rule.concepts():
        if name not in kinds:
            raise InvalidParameterError(
                f"the rule reads {name!r}, which is not among kinds {kinds}; pass a rule over "
                "the kinds' names."
            )

    g = torch.Generator().manual_seed(seed)
    present = torch.rand(n, k, generator=g) < p_present
    for a, b in pairs:
        copy = torch.rand(n, generator=g) < rho
        present[:, b] = torch.where(copy, present[:, a], present[:, b])
    cells = torch.rand(n, grid * grid, generator=g).argsort(1)[:, :k]  # (n, k) distinct
    cell = size / grid
    jitter = (torch.rand(n, k, 2, generator=g) * 2 - 1) * cell / 10
    cy = (cells // grid).float() * cell + cell / 2 + jitter[..., 0]
    cx = (cells % grid).float() * cell + cell / 2 + jitter[..., 1]
    kind_ids = torch.tensor([OBJECT_KINDS.index(name) for name in kinds]).expand(n, k)
    radius = torch.full((n * k,), 0.35 * cell)
    obj = object_masks(kind_ids.reshape(-1), cy.reshape(-1), cx.reshape(-1), radius, size)
    masks = obj.view(n, k, size, size) & present[:, :, None, None]
    colour = _COLOURS[torch.randint(3, (n, k), generator=g)]  # (n, k, 3)
    x = torch.full((n, 3, size, size), 0.05)
    for j in range(k):
        x = torch.where(masks[:, j, None], colour[:, j, :, None, None], x)
    x = x + pixel_noise * torch.randn(x.shape, generator=g)

    c_full = present.to(torch.float32)
    y = rule.apply(c_full, kinds)
    c = _class_majority(c_full, y, rule.n_classes) if annotation == "class" else c_full.clone()
    if concept_noise > 0:
        flip = torch.rand(c.shape, generator=g) < concept_noise
        c = torch.where(flip, 1 - c, c)
    return ConceptData(
        x=x,
        c=c,
        y=y,
        names=kinds,
        groups=tuple((j,) for j in range(k)),
        rule=rule,
        c_full=c_full,
        settings={
            "n": n, "size": size, "grid": grid, "kinds": kinds, "pairs": pairs, "rho": rho,
            "p_present": p_present, "annotation": annotation, "concept_noise": concept_noise,
            "pixel_noise": pixel_noise, "seed": seed,
        },
        masks=masks,
    )  # fmt: skip
