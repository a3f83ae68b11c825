r"""Tabular synthetic concept data: concepts from known factors, inputs through a fixed MLP.

Sampling (see :mod:`~dynalens.concepts.data.factors`): factors shape, colour, size,
position; colour copies shape with probability ``rho`` (co-occurrence of circle-red,
square-green, triangle-blue); twelve one-hot concepts ``c_full``; the task
``y = rule(c_full)``; inputs :math:`x = \phi(c_\text{full}) + \sigma\varepsilon` with
:math:`\phi` a fixed random two-layer tanh MLP (drawn from ``world_seed``, so data sets with
different ``seed`` share one world and can serve as train and test).

What the bottleneck sees: ``c`` = the visible concepts (``hidden`` names removed although
the rule reads them), annotated per instance or, with ``annotation="class"``, by the
majority value of each concept within the sample's class (Koh et al.'s class-level CUB
attributes), then each label flipped with probability ``concept_noise``; ``y`` is flipped to
a uniformly drawn other class with probability ``label_noise``.

Unit tests train on this in seconds; the image variant renders the same factors.
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

__all__ = ["make_tabular_concepts"]


def make_tabular_concepts(
    n: int,
    *,
    d: int = 16,
    rho: float = 0.0,
    annotation: str = "instance",
    concept_noise: float = 0.0,
    label_noise: float = 0.0,
    hidden: Sequence[str] = (),
    rule: Rule = DEFAULT_RULE,
    input_noise: float = 0.1,
    seed: int = 0,
    world_seed: int = 0,
) -> ConceptData:
    """Sample a tabular concept data set with a known rule.

    Parameters
    ----------
    n : int
        Number of samples.
    d : int
        Input dimension of x.
    rho : float in [0, 1]
        Co-occurrence: probability that colour copies shape (0: independent, 1: identical).
    annotation : {"instance", "class"}
        Per-sample concept labels, or the class-majority label of each concept.
    concept_noise, label_noise : float in [0, 0.5]
        Flip probabilities of each concept label and of y.
    hidden : names of concepts the rule reads that are left out of ``c``.
    rule : the task rule (default ``[circle] + [red] + [large AND top]``).
    input_noise : standard deviation of the Gaussian noise added to x.
    seed, world_seed : sample seed and the seed of the fixed map phi.

    Returns
    -------
    ConceptData

    Examples
    --------
    >>> data = make_tabular_concepts(1000, rho=0.8, hidden=("red",), seed=1)
    >>> data.x.shape, data.c.shape
    (torch.Size([1000, 16]), torch.Size([1000, 11]))
    """
    n = check_int("n", n, min=1)
    d = check_int("d", d, min=1)
    rho = check_float("rho", rho, min=0.0, max=1.0)
    hidden, concept_noise, label_noise = check_annotation(
        rule, hidden, annotation, concept_noise, label_noise
    )
    input_noise = check_float("input_noise", input_noise, min=0.0)
    seed, world_seed = check_int("seed", seed), check_int("world_seed", world_seed)
    g = torch.Generator().manual_seed(seed)
    c_full = factors_to_concepts(sample_factors(n, rho, g))
    x = _phi(c_full, d, world_seed) + input_noise * torch.randn(n, d, generator=g)

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
            "n": n, "d": d, "rho": rho, "annotation": annotation,
            "concept_noise": concept_noise, "label_noise": label_noise,
            "input_noise": input_noise, "seed": seed, "world_seed": world_seed,
        },
    )  # fmt: skip


def _phi(c: torch.Tensor, d: int, world_seed: int) -> torch.Tensor:
    """The fixed random map phi: 12 -> 32 (tanh) -> d, weights from ``world_seed``."""
    g = torch.Generator().manual_seed(world_seed)
    w1 = torch.randn(c.shape[1], 32, generator=g) / c.shape[1] ** 0.5
    w2 = torch.randn(32, d, generator=g) / 32**0.5
    return torch.tanh((2 * c - 1) @ w1 * 2) @ w2 * 2
