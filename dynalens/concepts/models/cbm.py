r"""Concept bottleneck models and the three training modes of Koh et al. 2020
("Concept Bottleneck Models", ICML, §3).

A model is a concept encoder :math:`g: x \mapsto` concept logits (any backbone
``nn.Module`` ending in k outputs) and a task head :math:`f` on the bottleneck, which holds
either concept probabilities :math:`\sigma(g(x))` (``bottleneck="prob"``) or the logits.

=============  ===============================================  ===========================
mode           x -> c                                           c -> y trained on
=============  ===============================================  ===========================
independent    :math:`\sum_j \mathrm{BCE}(g_j(x), c_j)`          the true concepts c
sequential     the same                                         :math:`\sigma(g(x))` of the
                                                                frozen encoder
joint          :math:`\mathrm{CE}(f(\cdot), y) + \lambda \sum_j \mathrm{BCE}(g_j(x), c_j)`, jointly
=============  ===============================================  ===========================

(λ = ``concept_loss_weight``; the BCE is the mean over concepts and rows.) Independent
training needs the probability bottleneck: its head reads true 0/1 concepts and would see
logits of another scale at test time, so ``bottleneck="logit"`` is refused there.
Training is full-batch or mini-batch Adam; the batch order comes from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dynalens._validation import check_float, check_int, check_option
from dynalens.errors import InvalidInputError, InvalidParameterError

__all__ = ["ConceptBottleneckModel", "FitHistory", "fit_cbm"]

MODES = ("independent", "sequential", "joint")


class ConceptBottleneckModel(nn.Module):
    """A concept encoder followed by a task head on the bottleneck.

    Parameters
    ----------
    encoder : nn.Module
        Maps inputs to k concept logits.
    head : nn.Module
        Maps the k bottleneck values to task logits.
    bottleneck : {"prob", "logit"}
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, *, bottleneck: str = "prob") -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.bottleneck = check_option("bottleneck", bottleneck, ("prob", "logit"))

    def concepts(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck values: concept probabilities or logits, (n, k)."""
        logits = self.encoder(x)
        return torch.sigmoid(logits) if self.bottleneck == "prob" else logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(concept logits, task logits)."""
        logits = self.encoder(x)
        values = torch.sigmoid(logits) if self.bottleneck == "prob" else logits
        return logits, self.head(values)

    def concept_task(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The concept -> task callable that ``intervention_curve`` reads for inputs
        ``x``: here the head itself (it reads only the bottleneck)."""
        return self.head


@dataclass
class FitHistory:
    """Per-epoch mean training losses of :func:`fit_cbm` (concept BCE and task CE; NaN
    where a phase does not train that loss)."""

    mode: str
    concept_loss: list[float] = field(default_factory=list)
    task_loss: list[float] = field(default_factory=list)


def fit_cbm(
    model: ConceptBottleneckModel,
    x: torch.Tensor,
    c: torch.Tensor,
    y: torch.Tensor,
    *,
    mode: str = "joint",
    concept_loss_weight: float = 1.0,
    epochs: int = 200,
    lr: float = 1e-2,
    batch_size: int | None = None,
    seed: int = 0,
    callback: Callable[[int], None] | None = None,
) -> FitHistory:
    """Train ``model`` in place on inputs ``x``, binary concepts ``c`` (n, k) and labels
    ``y`` (n,) in one of Koh et al.'s modes; returns the loss history.

    ``callback(step)``, if given, is called after every optimizer step with the global
    step index (0, 1, ... over both phases of independent / sequential training), as
    ``Recorder.step``: e.g. ``lambda s: (rec.step(s), monitor.step(s))``.

    Examples
    --------
    >>> model = ConceptBottleneckModel(nn.Linear(16, 12), nn.Linear(12, 4))  # doctest: +SKIP
    >>> fit_cbm(model, data.x, data.c, data.y, mode="sequential")  # doctest: +SKIP
    """
    mode = check_option("mode", mode, MODES)
    weight = check_float("concept_loss_weight", concept_loss_weight, min=0.0)
    epochs = check_int("epochs", epochs, min=1)
    lr = check_float("lr", lr, min=0.0, min_inclusive=False)
    seed = check_int("seed", seed)
    n = _check_data(x, c, y)
    size = n if batch_size is None else check_int("batch_size", batch_size, min=1)
    if mode == "independent" and model.bottleneck == "logit":
        raise InvalidParameterError(
            "mode='independent' trains the head on true 0/1 concepts, which only matches a "
            "probability bottleneck at test time; use bottleneck='prob' or another mode."
        )
    c = c.to(torch.float32)
    history = FitHistory(mode)
    gen = torch.Generator().manual_seed(seed)
    bce = nn.functional.binary_cross_entropy_with_logits
    ce = nn.functional.cross_entropy
    nan = float("nan")
    model.train()
    counter = _StepCounter(callback)
    if mode == "joint":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(epochs):
            closs, tloss = _epoch(
                opt,
                n,
                size,
                gen,
                lambda rows: _joint(model, x, c, y, rows, weight, bce, ce),
                counter,
            )
            history.concept_loss.append(closs)
            history.task_loss.append(tloss)
        model.eval()
        return history
    opt = torch.optim.Adam(model.encoder.parameters(), lr=lr)
    for _ in range(epochs):
        closs, _ = _epoch(
            opt, n, size, gen, lambda rows: (bce(model.encoder(x[rows]), c[rows]), None), counter
        )
        history.concept_loss.append(closs)
        history.task_loss.append(nan)
    if mode == "independent":
        inputs = c
    else:
        with torch.no_grad():
            model.eval()
            inputs = model.concepts(x).detach()
            model.train()
    opt = torch.optim.Adam(model.head.parameters(), lr=lr)
    for _ in range(epochs):
        _, tloss = _epoch(
            opt, n, size, gen, lambda rows: (None, ce(model.head(inputs[rows]), y[rows])), counter
        )
        history.concept_loss.append(nan)
        history.task_loss.append(tloss)
    model.eval()
    return history


def _joint(
    model: ConceptBottleneckModel,
    x: torch.Tensor,
    c: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    weight: float,
    bce: Any,
    ce: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits, task = model(x[rows])
    return bce(logits, c[rows]) * weight, ce(task, y[rows])


class _StepCounter:
    """Counts optimizer steps and calls the user's callback after each."""

    def __init__(self, callback: Callable[[int], None] | None) -> None:
        self.callback, self.step = callback, 0

    def __call__(self) -> None:
        if self.callback is not None:
            self.callback(self.step)
        self.step += 1


def _epoch(
    opt: torch.optim.Optimizer,
    n: int,
    size: int,
    gen: torch.Generator,
    losses: Any,
    counter: Callable[[], None] | None = None,
) -> tuple[float, float]:
    order = torch.randperm(n, generator=gen)
    totals = [0.0, 0.0]
    for start in range(0, n, size):
        rows = order[start : start + size]
        closs, tloss = losses(rows)
        loss = sum(t for t in (closs, tloss) if t is not None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for i, t in enumerate((closs, tloss)):
            if t is not None:
                totals[i] += float(t.detach()) * len(rows) / n
        if counter is not None:
            counter()
    return totals[0], totals[1]


def _check_data(x: torch.Tensor, c: torch.Tensor, y: torch.Tensor) -> int:
    n = x.shape[0]
    if c.ndim != 2 or c.shape[0] != n or y.shape != (n,):
        raise InvalidInputError(
            f"fit_cbm needs x (n, ...), c (n, k) and y (n,) with the same n; got x "
            f"{tuple(x.shape)}, c {tuple(c.shape)}, y {tuple(y.shape)}."
        )
    if not bool(((c == 0) | (c == 1)).all()):
        raise InvalidInputError("c must hold binary concept labels in {0, 1} (no NaN).")
    if y.dtype != torch.int64 or bool((y < 0).any()):
        raise InvalidInputError(
            f"y must be int64 class indices >= 0; got dtype {y.dtype}. Use y.long()."
        )
    return n
