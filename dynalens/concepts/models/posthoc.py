r"""Post-hoc concept bottleneck models (Yuksekgonul, Wang & Zou 2023, "Post-hoc Concept
Bottleneck Models", ICLR, §3).

Any backbone f (an ``nn.Module``, or one of its layers) gives embeddings e = f(x) in R^d.

1. Concept bank: for each concept i a CAV :math:`(v_i, b_i)` from a linear SVM
   (``SVC(kernel="linear", C)``, intercept unpenalised) on ``n_samples`` embeddings with the
   concept and as many without (reference: 50 + 50; the rest is held out for the CAV's
   accuracy); one bank per C.
2. Concept margins :math:`m_i(x) = (v_i^\top e(x) + b_i) / \lVert v_i \rVert`, standardised
   with the head's training mean and sd, :math:`z = (m - \mu)/\sigma` (the reference fits
   raw margins: ``standardize=False``, the default with ``solver="sgd"``).
3. A sparse linear head :math:`g(z) = W z + c` (T × L) trained with the elastic net

   .. math:: \min_{W, c}\; \frac1n \sum_i \mathrm{CE}(W z_i + c, y_i)
             + \alpha \big(\rho \lVert W \rVert_1 + \tfrac{1 - \rho}{2} \lVert W \rVert_F^2\big)

   (α = 1e-5, ρ = 0.99 as the reference). The reference fits it with
   ``SGDClassifier(loss="log_loss", penalty="elasticnet", max_iter=10000, random_state=42)``
   (one-vs-rest binary heads, stochastic): on the same margins, random_state 0..29 gave test
   accuracies from 27 % to 76 %. Default here (``solver="proximal"``): the multinomial
   problem above, full batch, by accelerated proximal gradient (FISTA; soft-thresholding
   for the L1 term) to a fixed tolerance, deterministic. ``solver="sgd"`` reproduces the
   reference with ``random_state=seed``.

Global model edits (paper §5; no released code) live in
:mod:`dynalens.concepts.models.posthoc_edit`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from dynalens._optional import require
from dynalens._validation import check_bool, check_float, check_int, check_option
from dynalens.errors import EstimatorRegimeError, InvalidInputError
from dynalens.estimators.concepts._checks import as_binary_labels, as_class_labels, as_matrix
from dynalens.estimators.concepts._layers import layer_activations
from dynalens.estimators.concepts.cav import CAV, train_cav

__all__ = [
    "ConceptBank",
    "PosthocCBM",
    "fit_elastic_net_head",
    "fit_posthoc_cbm",
    "learn_concept_bank",
]


@dataclass(frozen=True)
class ConceptBank:
    """L concept CAVs of one embedding space (one layer), stacked.

    Attributes:
        cavs: the CAVs (:class:`~dynalens.estimators.concepts.cav.CAV`), one per concept.
    """

    cavs: tuple[CAV, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.concept for c in self.cavs)

    @property
    def layer(self) -> str:
        return self.cavs[0].layer

    @property
    def vectors(self) -> torch.Tensor:
        """(L, d) CAV weights."""
        return torch.stack([c.vector for c in self.cavs])

    @property
    def accuracies(self) -> torch.Tensor:
        """(L,) held-out accuracies of the CAVs."""
        return torch.tensor([c.accuracy for c in self.cavs], dtype=torch.float64)

    def margins(self, embeddings: Any, *, layer: str | None = None) -> torch.Tensor:
        """Concept margins (n, L) float64 of embeddings (n, d) of ``layer`` (checked)."""
        if layer is not None:
            self.cavs[0].check_layer(layer)
        e = as_matrix("embeddings", torch.as_tensor(embeddings).reshape(len(embeddings), -1))
        v = self.vectors
        if e.shape[1] != v.shape[1]:
            raise InvalidInputError(
                f"embeddings have {e.shape[1]} features but the concept bank of layer "
                f"{self.layer!r} has {v.shape[1]}; pass embeddings of the bank's layer."
            )
        b = torch.tensor([c.intercept for c in self.cavs], dtype=torch.float64)
        return (e @ v.T + b) / v.norm(dim=1)


def learn_concept_bank(
    embeddings: Any,
    concepts: Any,
    names: Sequence[str],
    *,
    layer: str = "embedding",
    C: float = 0.01,
    n_samples: int = 50,
    seed: int = 0,
) -> ConceptBank:
    """One linear-SVM CAV per concept column: ``n_samples`` seeded positives and
    negatives train it, the remaining rows give its held-out accuracy.

    Examples:
        >>> from dynalens.concepts.data import make_tabular_concepts
        >>> data = make_tabular_concepts(400, seed=0)
        >>> bank = learn_concept_bank(data.x, data.c, data.names, n_samples=50)
        >>> bank.vectors.shape[0] == len(data.names)
        True
    """
    e = as_matrix("embeddings", torch.as_tensor(embeddings).reshape(len(embeddings), -1))
    c = as_binary_labels("concepts", concepts, n=e.shape[0])
    n_samples = check_int("n_samples", n_samples, min=2)
    C = check_float("C", C, min=0.0, min_inclusive=False)
    if len(names) != c.shape[1]:
        raise InvalidInputError(f"got {len(names)} names for {c.shape[1]} concept columns.")
    g = torch.Generator().manual_seed(check_int("seed", seed))
    cavs = []
    for j, name in enumerate(names):
        pos = c[:, j].nonzero().flatten()
        neg = (c[:, j] == 0).nonzero().flatten()
        if min(len(pos), len(neg)) < n_samples:
            raise InvalidInputError(
                f"concept {name!r} has {len(pos)} positive and {len(neg)} negative rows; its "
                f"CAV needs {n_samples} of each (n_samples). Pass more rows or lower n_samples."
            )
        pos, neg = (
            pos[torch.randperm(len(pos), generator=g)],
            neg[torch.randperm(len(neg), generator=g)],
        )
        cav = train_cav(e[pos[:n_samples]], e[neg[:n_samples]], layer=layer, name=name,
                        method="svm", C=C, test_size=0.0, balance=False, seed=seed)  # fmt: skip
        rest = torch.cat([pos[n_samples:], neg[n_samples:]])
        acc = float(((cav.margin(e[rest]) > 0).double() == c[rest, j]).double().mean())
        settings = {**cav.settings, "n_samples": n_samples, "n_test": len(rest)}
        cavs.append(replace(cav, accuracy=acc, settings=settings))
    return ConceptBank(tuple(cavs))


def _soft_threshold(w: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sign(w) * (w.abs() - t).clamp_min(0.0)


def fit_elastic_net_head(
    z: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    *,
    alpha: float = 1e-5,
    l1_ratio: float = 0.99,
    solver: str = "proximal",
    seed: int = 0,
    max_iter: int = 20000,
    tol: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elastic-net multinomial head on features z (n, L): (W (T, L), c (T,)). See the
    module docstring for the objective and the two solvers."""
    solver = check_option("solver", solver, ("proximal", "sgd"))
    alpha = check_float("alpha", alpha, min=0.0)
    l1_ratio = check_float("l1_ratio", l1_ratio, min=0.0, max=1.0)
    if solver == "sgd":
        lm = require("sklearn.linear_model", "the reference's SGD head")
        clf = lm.SGDClassifier(loss="log_loss", penalty="elasticnet", alpha=alpha,
                               l1_ratio=l1_ratio, max_iter=10000, random_state=seed)  # fmt: skip
        clf.fit(z.numpy(), y.numpy())
        w = torch.zeros(n_classes, z.shape[1], dtype=torch.float64)
        b = torch.full((n_classes,), -1e4, dtype=torch.float64)  # classes absent in training
        coef = torch.tensor(clf.coef_, dtype=torch.float64)
        icpt = torch.tensor(clf.intercept_, dtype=torch.float64)
        cls = torch.as_tensor(clf.classes_).long()
        if len(cls) == 2:  # one binary head: class 1 vs class 0
            coef, icpt = torch.cat([-coef, coef]) / 2, torch.cat([-icpt, icpt]) / 2
        w[cls], b[cls] = coef, icpt
        return w, b
    n, k = z.shape
    za = torch.cat([z, torch.ones(n, 1, dtype=torch.float64)], 1)
    onehot = nn.functional.one_hot(y, n_classes).double()
    lip = 0.5 * float(torch.linalg.eigvalsh(za.T @ za / n)[-1]) + alpha * (1 - l1_ratio)
    step = 1.0 / lip
    theta = torch.zeros(k + 1, n_classes, dtype=torch.float64)
    mom, t = theta.clone(), 1.0
    for _ in range(max_iter):
        grad = za.T @ (torch.softmax(za @ mom, 1) - onehot) / n
        grad[:k] += alpha * (1 - l1_ratio) * mom[:k]
        new = mom - step * grad
        new[:k] = _soft_threshold(new[:k], step * alpha * l1_ratio)
        # gradient mapping (mom - new) / step: zero exactly at the optimum
        if float((mom - new).abs().max()) / step < tol:
            return new[:k].T.contiguous(), new[k].clone()
        if float(((mom - new) * (new - theta)).sum()) > 0:  # adaptive restart
            t = 1.0
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        mom = new + (t - 1) / t_next * (new - theta)
        theta, t = new, t_next
    raise EstimatorRegimeError(
        f"the elastic-net head did not converge in {max_iter} proximal steps (gradient "
        f"mapping above tol={tol}); raise alpha (nearly separable classes make the weights "
        "grow slowly without bound), max_iter or tol."
    )


class PosthocCBM(nn.Module):
    """backbone -> concept margins (standardised) -> sparse linear head.

    Parameters
    ----------
    backbone : nn.Module
        Maps inputs to embeddings (or holds ``layer``, whose output is the embedding).
    bank : ConceptBank
    weight, bias : torch.Tensor
        The head (T, L) and (T,).
    mean, sd : torch.Tensor
        Margin standardisation (L,).
    layer : str or None
        A layer of ``backbone`` whose output is the embedding (None: the output).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    sd: torch.Tensor

    def __init__(self, backbone: nn.Module, bank: ConceptBank, weight: torch.Tensor,
                 bias: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor,
                 layer: str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.bank = bank
        self.layer = layer
        self.register_buffer("weight", weight.double())
        self.register_buffer("bias", bias.double())
        self.register_buffer("mean", mean.double())
        self.register_buffer("sd", sd.double())

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone embeddings (n, d) float64."""
        if self.layer is None:
            with torch.no_grad():
                return self.backbone(x).reshape(len(x), -1).double()
        return layer_activations(self.backbone, x, self.layer)

    def concepts(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised concept margins z (n, L)."""
        return (self.bank.margins(self.embed(x)) - self.mean) / self.sd

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Task logits (n, T) from standardised margins."""
        return z @ self.weight.T + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.concepts(x))


def fit_posthoc_cbm(
    backbone: nn.Module,
    x: torch.Tensor,
    y: Any,
    bank: ConceptBank,
    *,
    layer: str | None = None,
    n_classes: int | None = None,
    alpha: float = 1e-5,
    l1_ratio: float = 0.99,
    solver: str = "proximal",
    standardize: bool | None = None,
    seed: int = 0,
) -> PosthocCBM:
    """Fit the sparse head of a post-hoc CBM on ``bank``'s margins of ``backbone(x)``.

    ``standardize`` (default: True for ``solver="proximal"``, False for ``"sgd"``, which
    fits raw margins as the reference's ``train_pcbm.py`` does) standardises the margins
    with their training mean and sd first; either way the model stores the transform.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from dynalens.concepts.data import make_tabular_concepts
        >>> data = make_tabular_concepts(600, seed=0)
        >>> bank = learn_concept_bank(data.x, data.c, data.names)
        >>> model = fit_posthoc_cbm(nn.Identity(), data.x, data.y, bank, alpha=1e-3)
        >>> model(data.x).shape
        torch.Size([600, 4])
    """
    model = PosthocCBM(backbone, bank, torch.zeros(1, 1), torch.zeros(1), torch.zeros(1),
                       torch.ones(1), layer=layer)  # fmt: skip
    m = bank.margins(model.embed(x))
    labels = as_class_labels("y", y, n=len(m))
    t = int(labels.max()) + 1 if n_classes is None else check_int("n_classes", n_classes, min=2)
    if standardize is None:
        standardize = solver == "proximal"
    if check_bool("standardize", standardize):
        mean, sd = m.mean(0), m.std(0).clamp_min(1e-12)
    else:
        mean, sd = (
            torch.zeros(m.shape[1], dtype=torch.float64),
            torch.ones(m.shape[1], dtype=torch.float64),
        )
    w, b = fit_elastic_net_head((m - mean) / sd, labels, t, alpha=alpha, l1_ratio=l1_ratio,
                                solver=solver, seed=seed)  # fmt: skip
    return PosthocCBM(backbone, bank, w, b, mean, sd, layer=layer)
