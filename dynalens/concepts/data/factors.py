"""The generative factors shared by the synthetic concept data sets, and the task rule.

Four factors, twelve binary concepts in four exclusive groups:

======== =============================== =========
group    concepts                        columns
======== =============================== =========
shape    circle, square, triangle        0-2
colour   red, green, blue                3-5
size     small, large                    6-7
position top_left, top_right, bottom_left, bottom_right  8-11
======== =============================== =========

The task is a rule held as data: ``y = sum of the rule's terms``, each term an AND of
concepts. The default :data:`DEFAULT_RULE` is ``[circle] + [red] + [large AND top]``
(``top`` = top_left OR top_right, written as two terms that cannot both hold), giving
classes 0-3, so tests know the optimal head exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["CONCEPT_NAMES", "DEFAULT_RULE", "GROUPS", "ConceptData", "Rule", "sample_factors"]

CONCEPT_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle",
    "red", "green", "blue",
    "small", "large",
    "top_left", "top_right", "bottom_left", "bottom_right",
)  # fmt: skip
GROUPS: dict[str, tuple[int, ...]] = {
    "shape": (0, 1, 2),
    "colour": (3, 4, 5),
    "size": (6, 7),
    "position": (8, 9, 10, 11),
}


@dataclass(frozen=True)
class Rule:
    """A task rule: ``y = sum_t [all concepts of term t are 1]``.

    Attributes:
        terms: each term a tuple of concept names that must all be present.
        n_classes: the number of classes (max number of terms that can hold at once + 1).
    """

    terms: tuple[tuple[str, ...], ...]
    n_classes: int

    def concepts(self) -> tuple[str, ...]:
        """The concepts the rule reads, in first-use order."""
        seen: dict[str, None] = {}
        for term in self.terms:
            for name in term:
                seen[name] = None
        return tuple(seen)

    def apply(self, c: torch.Tensor, names: Sequence[str] = CONCEPT_NAMES) -> torch.Tensor:
        """Class labels (n,) int64 of binary concepts ``c`` (n, len(names))."""
        index = {name: i for i, name in enumerate(names)}
        y = torch.zeros(c.shape[0], dtype=torch.int64)
        for term in self.terms:
            y += c[:, [index[name] for name in term]].bool().all(1).to(torch.int64)
        return y


#: y = [circle] + [red] + [large AND top]: classes 0..3 (the two position terms exclude
#: each other, so at most three terms hold at once).
DEFAULT_RULE = Rule(
    (("circle",), ("red",), ("large", "top_left"), ("large", "top_right")), n_classes=4
)


@dataclass(frozen=True)
class ConceptData:
    """A synthetic concept data set.

    Attributes:
        x: inputs, (n, d) float32 (tabular) or (n, 3, H, W) (images).
        c: concept annotations of the bottleneck (visible concepts), (n, k) float32 in
            {0, 1}; after class-level annotation and label noise when requested.
        y: task labels (n,) int64 from the rule (after label noise when requested).
        names: the visible concepts' names (columns of ``c``).
        groups: exclusive groups as tuples of column indices into ``c``.
        rule: the task rule (it may read hidden concepts).
        c_full: the true, noise-free instance-level values of all twelve concepts (n, 12).
        hidden: names of concepts in the rule but not in the bottleneck.
        settings: the generator's arguments.
        masks: per-concept pixel masks (n, 12, H, W) bool of the image generator (all
            twelve concepts, True on the pixels that show a present concept), else None.
    """

    x: torch.Tensor
    c: torch.Tensor
    y: torch.Tensor
    names: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]
    rule: Rule
    c_full: torch.Tensor
    hidden: tuple[str, ...] = ()
    settings: dict[str, object] = field(default_factory=dict)
    masks: torch.Tensor | None = None


def sample_factors(n: int, rho: float, generator: torch.Generator) -> torch.Tensor:
    """Factor indices (n, 4): shape, colour, size, position, uniform and independent
    except that colour copies the shape index with probability ``rho`` (otherwise it is
    uniform), so P(colour = shape) = rho + (1 - rho)/3 and rho = 0 is independence."""
    shape = torch.randint(3, (n,), generator=generator)
    colour = torch.randint(3, (n,), generator=generator)
    copy = torch.rand(n, generator=generator) < rho
    colour = torch.where(copy, shape, colour)
    size = torch.randint(2, (n,), generator=generator)
    position = torch.randint(4, (n,), generator=generator)
    return torch.stack([shape, colour, size, position], 1)


def factors_to_concepts(factors: torch.Tensor) -> torch.Tensor:
    """One-hot concepts (n, 12) float32 of factor indices (n, 4)."""
    parts = [
        torch.nn.functional.one_hot(factors[:, i], len(g)) for i, g in enumerate(GROUPS.values())
    ]
    return torch.cat(parts, 1).to(torch.float32)
