r"""Sparse concept bottleneck models (Semenov et al. 2024, "Sparse Concept Bottleneck
Models: Gumbel Tricks in Contrastive Learning", arXiv 2404.03323; code
Andron00e/SparseCBM ``bottlenecks/cbm.py``).

A backbone maps x to K image-concept scores S (n, K) (CLIP similarities in the paper;
any ``nn.Module`` here), a concept bottleneck layer ``Linear(K, K, bias=False)`` gives
the bottleneck :math:`\hat c = W_{cbl} S` and a head ``Linear(K, T, bias=False)`` the
task logits. Training minimises :math:`\mathrm{CE}(y) + \mathcal{L}_{cbl}` with one of
the bottleneck losses of the paper, on the bottleneck scores :math:`\hat c` (B, K):

- ``"gumbel"`` (:func:`gumbel_loss`): :math:`\tfrac12[\mathrm{mean}(-\log
  \mathrm{GS}_0(\hat c)) + \mathrm{mean}(-\log \mathrm{GS}_1(\hat c))]`, GS_d the
  Gumbel-softmax :math:`\mathrm{softmax}_d((\hat c + g)/\tau)` along the batch (d = 0)
  or concept (d = 1) axis, g i.i.d. Gumbel(0, 1), τ = 1;
- ``"contrastive"`` (:func:`contrastive_loss`): CLIP's symmetric cross-entropy on the
  diagonal, :math:`-\tfrac12[\mathrm{mean}_i \log\mathrm{softmax}_0(\hat c)_{ii} +
  \mathrm{mean}_i \log\mathrm{softmax}_1(\hat c)_{ii}]` (on a (B, K) matrix the
  reference pairs row i with concept i, over min(B, K) pairs; kept as is);
- ``"l1"`` (:func:`l1_loss`): :math:`\lambda \sum |W_{cbl}| / K`, λ = 1e-3.

Differences from the reference: the Gumbel noise comes from an explicit generator (the
reference draws from the global RNG), and :math:`-\log\mathrm{softmax}` is computed as
``-log_softmax`` (the reference's ``-log(gumbel_softmax(...))`` is +inf once a
probability underflows, and with ``hard=True`` on every straight-through zero).

``active=k`` adds a hard k-sparse bottleneck: per sample the k concepts of a Gumbel top-k
draw on :math:`\hat c` (Kool, van Hoof & Welling 2019; relaxed top-k by k successive
softmaxes, Xie & Ermon 2019, "Reparameterizable Subset Sampling via Continuous
Relaxations", IJCAI) stay, the others are zeroed; the forward pass uses the exact k-hot
mask and the backward pass the relaxation (straight-through). In eval mode the top k
scores are kept without noise. :func:`gumbel_topk_mask` is the mask itself.

Examples
--------
>>> model = SparseCBM(nn.Linear(16, 12), n_concepts=12, n_classes=4)  # doctest: +SKIP
>>> fit_sparse_cbm(model, x, y, loss="gumbel")  # doctest: +SKIP
>>> intervention_curve(model.concept_task(x), model.concepts(x), c, y,
...                    bottleneck="logit")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dynalens._validation import check_float, check_int, check_option
from dynalens.concepts.models.cbm import FitHistory, _epoch, _StepCounter
from dynalens.errors import InvalidInputError

__all__ = [
    "SparseCBM",
    "contrastive_loss",
    "fit_sparse_cbm",
    "gumbel_loss",
    "gumbel_topk_mask",
    "l1_loss",
]

LOSSES = ("gumbel", "contrastive", "l1")


def _gumbel(
    shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=like.dtype).clamp(1e-20, 1.0)
    return -torch.log(-torch.log(u)).to(like.device)


def gumbel_loss(
    scores: torch.Tensor, *, tau: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Semenov et al.'s Gumbel bottleneck loss on scores (B, K) (module docstring)."""
    tau = check_float("tau", tau, min=0.0, min_inclusive=False)
    noisy = (scores + _gumbel(scores.shape, generator, scores)) / tau
    return -(torch.log_softmax(noisy, 0).mean() + torch.log_softmax(noisy, 1).mean()) / 2


def contrastive_loss(scores: torch.Tensor) -> torch.Tensor:
    """CLIP-style symmetric diagonal cross-entropy on scores (B, K) (module docstring)."""
    return (
        -(
            torch.diagonal(torch.log_softmax(scores, 0)).mean()
            + torch.diagonal(torch.log_softmax(scores, 1)).mean()
        )
        / 2
    )


def l1_loss(weight: torch.Tensor, lam: float = 1e-3) -> torch.Tensor:
    """:math:`\\lambda \\sum |W| / K` for the (K, K) concept bottleneck layer weight."""
    return lam * weight.abs().sum() / weight.shape[1]


def gumbel_topk_mask(
    scores: torch.Tensor,
    k: int,
    *,
    tau: float = 1.0,
    noise: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """k-hot mask (B, K) of a Gumbel top-k draw, straight-through: the forward value is
    exactly k ones per row, the gradient that of the relaxation
    :math:`\\sum_{j<k} \\mathrm{softmax}((s + g + \\log(1 - a_{j-1}))/\\tau)`, with
    :math:`a_j` the running relaxed selection (Xie & Ermon 2019). ``noise=False``: the
    top k scores themselves."""
    k = check_int("k", k, min=1, max=scores.shape[1])
    tau = check_float("tau", tau, min=0.0, min_inclusive=False)
    s = scores + _gumbel(scores.shape, generator, scores) if noise else scores
    hard = torch.zeros_like(s).scatter(1, s.topk(k, 1).indices, 1.0)
    logits, soft = s.clone(), torch.zeros_like(s)
    for _ in range(k):
        p = torch.softmax(logits / tau, 1)
        soft = soft + p
        logits = logits + torch.log1p(-p.clamp(max=1 - 1e-6))
    return hard + (soft - soft.detach())  # exactly `hard` forward, the relaxation's gradient


class SparseCBM(nn.Module):
    """Backbone scores -> ``Linear(K, K)`` bottleneck -> ``Linear(K, T)`` head.

    Parameters
    ----------
    backbone : nn.Module
        Maps inputs to K concept scores.
    n_concepts, n_classes : int
    active : int, optional
        Keep k concepts per sample (Gumbel top-k, straight-through; module docstring).
    tau : float
        Temperature of the top-k relaxation.
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_concepts: int,
        n_classes: int,
        *,
        active: int | None = None,
        tau: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        k = check_int("n_concepts", n_concepts, min=1)
        self.backbone = backbone
        self.cbl = nn.Linear(k, k, bias=False)
        self.head = nn.Linear(k, check_int("n_classes", n_classes, min=2), bias=False)
        self.active = None if active is None else check_int("active", active, min=1, max=k)
        self.tau = check_float("tau", tau, min=0.0, min_inclusive=False)
        self._gen = torch.Generator().manual_seed(check_int("seed", seed))

    def concepts(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck scores (n, K) (logit scale; zeros outside the k active ones)."""
        scores = self.cbl(self.backbone(x))
        if self.active is None:
            return scores
        mask = gumbel_topk_mask(
            scores, self.active, tau=self.tau, noise=self.training, generator=self._gen
        )
        return scores * mask

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bottleneck scores, task logits)."""
        c = self.concepts(x)
        return c, self.head(c)

    def concept_task(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The concept -> task callable of ``intervention_curve``: the head."""
        return self.head


def fit_sparse_cbm(
    model: SparseCBM,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str = "gumbel",
    weight: float = 1.0,
    l1_lambda: float = 1e-3,
    tau: float = 1.0,
    train_backbone: bool = False,
    epochs: int = 100,
    lr: float = 1e-2,
    batch_size: int | None = None,
    seed: int = 0,
    callback: Callable[[int], None] | None = None,
) -> FitHistory:
    """Train in place on CE + ``weight`` · the bottleneck loss ``loss``; the backbone
    stays frozen unless ``train_backbone`` (the reference's default). History:
    ``concept_loss`` = the bottleneck loss, ``task_loss`` = CE."""
    loss = check_option("loss", loss, LOSSES)
    weight = check_float("weight", weight, min=0.0)
    l1_lambda = check_float("l1_lambda", l1_lambda, min=0.0)
    epochs = check_int("epochs", epochs, min=1)
    lr = check_float("lr", lr, min=0.0, min_inclusive=False)
    n = x.shape[0]
    if y.shape != (n,) or y.dtype != torch.int64:
        raise InvalidInputError(
            f"y must be int64 class indices of shape ({n},); got {y.dtype} {tuple(y.shape)}."
        )
    size = n if batch_size is None else check_int("batch_size", batch_size, min=1)
    gen = torch.Generator().manual_seed(check_int("seed", seed))
    noise = torch.Generator().manual_seed(seed + 1)
    params = [*model.cbl.parameters(), *model.head.parameters()]
    if train_backbone:
        params += list(model.backbone.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    ce = nn.functional.cross_entropy
    history = FitHistory(f"sparse-{loss}")
    counter = _StepCounter(callback)

    def losses(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, out = model(x[rows])
        if loss == "gumbel":
            reg = gumbel_loss(c, tau=tau, generator=noise)
        elif loss == "contrastive":
            reg = contrastive_loss(c)
        else:
            reg = l1_loss(model.cbl.weight, l1_lambda)
        return weight * reg, ce(out, y[rows])

    model.train()
    for _ in range(epochs):
        closs, tloss = _epoch(opt, n, size, gen, losses, counter)
        history.concept_loss.append(closs)
        history.task_loss.append(tloss)
    model.eval()
    return history
