"""scikit-learn's digits (1 797 8×8 images, bundled, no download) with class-level concepts.

Each concept is a function of the digit class (Koh et al.'s class-level annotation at its
extreme): the concept vector of an image is its class's row of :data:`DIGIT_CONCEPTS`, so
concept labels carry no information beyond the class, a ready demo of the class-level
pitfall (leakage and interventions collapse onto class identity). The table is a
judgement of how the digits are usually written, chosen so that every class has its own
concept vector (the concepts determine the class):

=================  ===================
concept            digits
=================  ===================
closed_loop        0, 6, 8, 9
vertical_stroke    1, 4, 7
horizontal_bar     2, 4, 5, 7
diagonal_stroke    2, 7
open_bowl          2, 3, 5
loop_at_top        8, 9
loop_at_bottom     6, 8
two_loops          8
=================  ===================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dynalens._optional import require
from dynalens._validation import check_float, check_int

__all__ = ["DIGIT_CONCEPTS", "DigitConcepts", "concept_table", "load_digit_concepts"]

DIGIT_CONCEPTS: dict[str, tuple[int, ...]] = {
    "closed_loop": (0, 6, 8, 9),
    "vertical_stroke": (1, 4, 7),
    "horizontal_bar": (2, 4, 5, 7),
    "diagonal_stroke": (2, 7),
    "open_bowl": (2, 3, 5),
    "loop_at_top": (8, 9),
    "loop_at_bottom": (6, 8),
    "two_loops": (8,),
}


@dataclass(frozen=True)
class DigitConcepts:
    """Digits with class-level concepts (no task rule over concepts: the class *is* the
    concept vector's source, ``table`` maps class to concepts).

    Attributes:
        x: images (n, 1, 8, 8) float32 in [0, 1].
        c: concept labels (n, k) float32 in {0, 1} (after ``concept_noise``).
        y: digit classes (n,) int64.
        names: concept names (columns of ``c``).
        table: the class-concept table (10, k).
        c_full: the noise-free class-level concepts, ``table[y]``.
        groups: one singleton group per concept (the concepts are not exclusive).
        settings: the loader's arguments.
    """

    x: torch.Tensor
    c: torch.Tensor
    y: torch.Tensor
    names: tuple[str, ...]
    table: torch.Tensor
    c_full: torch.Tensor
    groups: tuple[tuple[int, ...], ...]
    settings: dict[str, object] = field(default_factory=dict)


def concept_table() -> torch.Tensor:
    """The class-concept table (10, k) float32 in {0, 1} of :data:`DIGIT_CONCEPTS`."""
    table = torch.zeros(10, len(DIGIT_CONCEPTS))
    for j, digits in enumerate(DIGIT_CONCEPTS.values()):
        table[list(digits), j] = 1.0
    return table


def load_digit_concepts(*, concept_noise: float = 0.0, seed: int = 0) -> DigitConcepts:
    """scikit-learn's digits with class-level concepts.

    Args:
        concept_noise: probability in [0, 0.5] of flipping each concept label.
        seed: seed of the label noise.

    Returns:
        :class:`DigitConcepts`: ``x`` (1797, 1, 8, 8), ``c`` (1797, 8), ``y``, ``table``.

    Examples
    --------
    >>> data = load_digit_concepts()
    >>> data.x.shape, data.c.shape
    (torch.Size([1797, 1, 8, 8]), torch.Size([1797, 8]))
    """
    concept_noise = check_float("concept_noise", concept_noise, min=0.0, max=0.5)
    seed = check_int("seed", seed)
    digits = require("sklearn.datasets", "the digits concept data").load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    table = concept_table()
    c_full = table[y]
    c = c_full.clone()
    if concept_noise > 0:
        g = torch.Generator().manual_seed(seed)
        flip = torch.rand(c.shape, generator=g) < concept_noise
        c = torch.where(flip, 1 - c, c)
    names = tuple(DIGIT_CONCEPTS)
    return DigitConcepts(
        x=x,
        c=c,
        y=y,
        names=names,
        table=table,
        c_full=c_full,
        groups=tuple((j,) for j in range(len(names))),
        settings={"concept_noise": concept_noise, "seed": seed, "annotation": "class"},
    )
