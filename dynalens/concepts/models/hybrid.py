r"""Hybrid concept bottleneck models: a concept bottleneck plus an unsupervised residual.

The task head reads :math:`[\hat c, r]`, the k concept values
(:math:`\hat c = \sigma(g(x))` or the logits, as in
:class:`~dynalens.concepts.models.ConceptBottleneckModel`) and an m-dimensional residual
:math:`r = a(h(x))` from a second module h, with a = sigmoid by default (cem's
``extra_dims``, Espinosa Zarlenga et al. 2022, "Concept Embedding Models", NeurIPS, the
"Hybrid-CBM" baseline) or the identity. Post-hoc hybrids (PCBM-h, Yuksekgonul et al. 2023,
"Post-hoc Concept Bottleneck Models", ICLR, §3.2) fit the residual beside a frozen
concept part: ``fit_hybrid(mode="sequential", residual_l2=0.001)`` trains the encoder on
the concepts first, then the head and residual on the task with
:math:`\mathrm{CE} + \lambda\,\mathrm{mean}(W_{res}^2)` over the head's residual columns
(PCBM-h's penalty on its residual layer, λ = 0.001 there).

``mode="joint"``: :math:`\mathrm{CE}(y) + \lambda_c \mathrm{BCE}(c)` on everything at once
(cem's hybrid). Interventions write :math:`\hat c` only; the residual of each sample stays
as computed from x (:meth:`HybridCBM.concept_task`). How much of the prediction goes
past the bottleneck: :func:`~dynalens.estimators.concepts.bypass_share`.

Examples
--------
>>> model = HybridCBM(nn.Linear(16, 12), nn.Linear(16, 4), nn.Linear(16, 4))  # doctest: +SKIP
>>> fit_hybrid(model, x, c, y, mode="joint")  # doctest: +SKIP
>>> intervention_curve(model.concept_task(x), model.concepts(x), c, y)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dynalens._validation import check_float, check_int, check_option
from dynalens.concepts.models.cbm import FitHistory, _check_data, _epoch, _StepCounter
from dynalens.errors import InvalidParameterError

__all__ = ["HybridCBM", "fit_hybrid"]


class HybridCBM(nn.Module):
    """Concept encoder, residual module and a task head on their concatenation.

    Parameters
    ----------
    encoder : nn.Module
        Maps inputs to k concept logits.
    residual : nn.Module
        Maps inputs to m residual pre-activations.
    head : nn.Module
        Maps the k + m bottleneck values (concepts first) to task logits.
    bottleneck : {"prob", "logit"}
        What the concept part of the bottleneck holds.
    residual_activation : {"sigmoid", "identity"}
    """

    def __init__(
        self,
        encoder: nn.Module,
        residual: nn.Module,
        head: nn.Module,
        *,
        bottleneck: str = "prob",
        residual_activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        self.encoder, self.residual, self.head = encoder, residual, head
        self.bottleneck = check_option("bottleneck", bottleneck, ("prob", "logit"))
        self.residual_activation = check_option(
            "residual_activation", residual_activation, ("sigmoid", "identity")
        )

    def concepts(self, x: torch.Tensor) -> torch.Tensor:
        """Concept part of the bottleneck, (n, k)."""
        logits = self.encoder(x)
        return torch.sigmoid(logits) if self.bottleneck == "prob" else logits

    def residual_values(self, x: torch.Tensor) -> torch.Tensor:
        """Residual part of the bottleneck, (n, m)."""
        r = self.residual(x)
        return torch.sigmoid(r) if self.residual_activation == "sigmoid" else r

    def task(self, values: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Task logits from concept values (n, k) and residual values (n, m)."""
        return self.head(torch.cat([values, residual.to(values.dtype)], 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(concept logits, task logits)."""
        logits = self.encoder(x)
        values = torch.sigmoid(logits) if self.bottleneck == "prob" else logits
        return logits, self.task(values, self.residual_values(x))

    def concept_task(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Concept values (n, k) -> task logits with each row's residual fixed at its
        value on ``x`` (n, ...): the callable interventions write concepts through."""
        with torch.no_grad():
            r = self.residual_values(x)

        def task(values: torch.Tensor) -> torch.Tensor:
            return self.task(values, r)

        return task


def fit_hybrid(
    model: HybridCBM,
    x: torch.Tensor,
    c: torch.Tensor,
    y: torch.Tensor,
    *,
    mode: str = "joint",
    concept_loss_weight: float = 1.0,
    residual_l2: float = 0.0,
    epochs: int = 200,
    lr: float = 1e-2,
    batch_size: int | None = None,
    seed: int = 0,
    callback: Callable[[int], None] | None = None,
) -> FitHistory:
    """Train a :class:`HybridCBM` in place; returns the loss history.

    ``mode="joint"``: everything on CE + ``concept_loss_weight`` · BCE;
    ``"sequential"``: the encoder on BCE, then (encoder frozen) head and residual on CE +
    ``residual_l2`` · mean of the squared head weights that read the residual (needs a
    ``nn.Linear`` head). ``callback(step)`` runs after each optimizer step, as in
    :func:`~dynalens.concepts.models.fit_cbm`.
    """
    mode = check_option("mode", mode, ("joint", "sequential"))
    weight = check_float("concept_loss_weight", concept_loss_weight, min=0.0)
    penalty = check_float("residual_l2", residual_l2, min=0.0)
    epochs = check_int("epochs", epochs, min=1)
    lr = check_float("lr", lr, min=0.0, min_inclusive=False)
    seed = check_int("seed", seed)
    n = _check_data(x, c, y)
    size = n if batch_size is None else check_int("batch_size", batch_size, min=1)
    if penalty > 0 and not isinstance(model.head, nn.Linear):
        raise InvalidParameterError(
            f"residual_l2 penalises the head's residual columns and needs an nn.Linear head; "
            f"got {type(model.head).__name__}. Use residual_l2=0 or a linear head."
        )
    c = c.to(torch.float32)
    k = c.shape[1]
    history = FitHistory(mode)
    gen = torch.Generator().manual_seed(seed)
    bce = nn.functional.binary_cross_entropy_with_logits
    ce = nn.functional.cross_entropy
    counter = _StepCounter(callback)
    nan = float("nan")

    def reg() -> torch.Tensor | float:
        if penalty == 0:
            return 0.0
        assert isinstance(model.head, nn.Linear)
        return penalty * model.head.weight[:, k:].pow(2).mean()

    model.train()
    if mode == "joint":
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def joint(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, task = model(x[rows])
            return bce(logits, c[rows]) * weight, ce(task, y[rows]) + reg()

        for _ in range(epochs):
            closs, tloss = _epoch(opt, n, size, gen, joint, counter)
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
    with torch.no_grad():
        model.eval()
        values = model.concepts(x).detach()
        model.train()
    params = [*model.head.parameters(), *model.residual.parameters()]
    opt = torch.optim.Adam(params, lr=lr)

    def task_only(rows: torch.Tensor) -> tuple[None, torch.Tensor]:
        out = model.task(values[rows], model.residual_values(x[rows]))
        return None, ce(out, y[rows]) + reg()

    for _ in range(epochs):
        _, tloss = _epoch(opt, n, size, gen, task_only, counter)
        history.concept_loss.append(nan)
        history.task_loss.append(tloss)
    model.eval()
    return history
