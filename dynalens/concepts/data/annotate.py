"""What the bottleneck sees, shared by the tabular and image generators: visible
concepts (hidden ones removed), instance- or class-level annotation, label noise."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dynalens._validation import check_float, check_option
from dynalens.concepts.data.factors import CONCEPT_NAMES, GROUPS, Rule
from dynalens.errors import InvalidParameterError, close_matches

__all__ = ["Annotated", "annotate", "check_annotation"]

Annotated = tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple[tuple[int, ...], ...]]


def check_annotation(
    rule: Rule, hidden: Sequence[str], annotation: str, concept_noise: float, label_noise: float
) -> tuple[tuple[str, ...], float, float]:
    """Validate the annotation knobs; returns (hidden, concept_noise, label_noise)."""
    check_option("annotation", annotation, ("instance", "class"))
    concept_noise = check_float("concept_noise", concept_noise, min=0.0, max=0.5)
    label_noise = check_float("label_noise", label_noise, min=0.0, max=0.5)
    hidden = tuple(hidden)
    for name in (*rule.concepts(), *hidden):
        if name not in CONCEPT_NAMES:
            raise InvalidParameterError(
                f"unknown concept {name!r}{close_matches(name, CONCEPT_NAMES)} Concepts: "
                f"{', '.join(CONCEPT_NAMES)}."
            )
    return hidden, concept_noise, label_noise


def annotate(
    c_full: torch.Tensor,
    rule: Rule,
    hidden: tuple[str, ...],
    annotation: str,
    concept_noise: float,
    label_noise: float,
    generator: torch.Generator,
) -> Annotated:
    """(c, y, names, groups): visible concepts, annotated (instance or class majority of
    the clean labels) and flipped with ``concept_noise``; y from the rule, flipped to a
    uniform other class with ``label_noise``; groups re-indexed over visible columns."""
    n = c_full.shape[0]
    y_clean = rule.apply(c_full)
    visible = [i for i, name in enumerate(CONCEPT_NAMES) if name not in hidden]
    c = c_full[:, visible].clone()
    if annotation == "class":
        c = _class_majority(c, y_clean, rule.n_classes)
    if concept_noise > 0:
        flip = torch.rand(c.shape, generator=generator) < concept_noise
        c = torch.where(flip, 1 - c, c)
    y = y_clean.clone()
    if label_noise > 0:
        flip = torch.rand(n, generator=generator) < label_noise
        shift = torch.randint(1, rule.n_classes, (n,), generator=generator)
        y = torch.where(flip, (y + shift) % rule.n_classes, y)
    position = {old: new for new, old in enumerate(visible)}
    groups = tuple(
        tuple(position[i] for i in members if i in position)
        for members in GROUPS.values()
        if any(i in position for i in members)
    )
    return c, y, tuple(CONCEPT_NAMES[i] for i in visible), groups


def _class_majority(c: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Replace each row by its class's majority value of every concept (ties -> 1)."""
    out = torch.empty_like(c)
    for t in range(n_classes):
        rows = y == t
        if rows.any():
            out[rows] = (c[rows].mean(0) >= 0.5).to(c.dtype)
    return out
