r"""Concept Existence Metric (CEM@l) of Aysel et al. 2025 ("Concept-Based Explainable
Artificial Intelligence: Metrics and Benchmarks", arXiv 2501.19271), **as reconstructed in
the project guide §3.9** (the class used and the subset are from secondary summaries, not
the paper's text, so both are parameters).

Setting: concept scores :math:`\hat u` (n, k) (probabilities, logits or PCBM margins) and a
linear head :math:`\theta` (k, T) (for an ``nn.Linear`` head pass ``head.weight.T``). For
image i and class :math:`k_i` (the predicted class by default), concept j contributes
:math:`\theta_{j,k_i}\,\hat u_{ij}` to the class logit. With :math:`\mathcal T_i` the l
concepts of largest contribution and :math:`c_{ij}` the true (instance-level) presence,

.. math:: \Lambda_i = \frac1l \sum_{j \in \mathcal T_i} c_{ij}, \qquad
          \mathrm{CEM@}l = \frac{1}{|S|}\sum_{i \in S} \Lambda_i,

S = all images or the correctly classified ones (``subset``; both are in ``details``).
A model that explains its decisions by concepts that are really in the image scores 1;
ranking concepts at random scores the chance level :math:`\bar{|c_i|}/k`
(``details["chance"]``). Interval: percentile bootstrap over images.
"""

from __future__ import annotations

from typing import Any

import torch

from dynalens._validation import check_int, check_option
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import as_binary_labels, as_class_labels, as_matrix
from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts._scores import bootstrap_interval

__all__ = ["ConceptExistence", "concept_existence"]


class ConceptExistence:
    """CEM@l: how many of the concepts that drive each prediction are in the image.

    Parameters
    ----------
    top_l : int
        Number of top-contributing concepts per image (l).
    class_index : {"predicted", "true"}
        Whose class's weights rank the concepts (the paper: predicted, reconstructed).
    subset : {"all", "correct"}
        Images averaged over for ``value`` (both are reported in ``details``).
    n_boot, seed : bootstrap replicates over images (0: none) and its seed.
    """

    def __init__(
        self,
        *,
        top_l: int = 1,
        class_index: str = "predicted",
        subset: str = "all",
        n_boot: int = 200,
        seed: int = 0,
    ) -> None:
        self.top_l = top_l
        self.class_index = class_index
        self.subset = subset
        self.n_boot = n_boot
        self.seed = seed

    def estimate(
        self,
        c_scores: Any,
        head_weight: Any,
        c_true: Any,
        *,
        y_true: Any = None,
        y_pred: Any = None,
        head_bias: Any = None,
    ) -> ConceptResult:
        """CEM@l of concept scores ``c_scores`` (n, k) under head weights (k, T) against
        true concepts ``c_true`` (n, k). ``y_pred`` defaults to the head's argmax."""
        class_index = check_option("class_index", self.class_index, ("predicted", "true"))
        subset = check_option("subset", self.subset, ("all", "correct"))
        n_boot = check_int("n_boot", self.n_boot, min=0)
        seed = check_int("seed", self.seed)
        c = as_binary_labels("c_true", c_true)
        n, k = c.shape
        u = as_matrix("c_scores", c_scores, n=n)
        theta = as_matrix("head_weight", head_weight)
        if u.shape[1] != k or theta.shape[0] != k:
            raise InvalidInputError(
                f"c_scores (n, k), head_weight (k, T) and c_true (n, k) must share k; got "
                f"{tuple(u.shape)}, {tuple(theta.shape)}, {tuple(c.shape)}. For an nn.Linear "
                "head pass head.weight.T."
            )
        top_l = check_int("top_l", self.top_l, min=1, max=k)
        t = theta.shape[1]
        if y_pred is None:
            logits = u @ theta
            if head_bias is not None:
                bias = as_matrix("head_bias", head_bias).reshape(1, -1)
                if bias.shape[1] != theta.shape[1]:
                    raise InvalidInputError(
                        f"head_bias must hold T = {theta.shape[1]} entries (one per class of "
                        f"head_weight (k, T)); got {bias.shape[1]}."
                    )
                logits = logits + bias
            pred = logits.argmax(1)
        else:
            pred = as_class_labels("y_pred", y_pred, n=n)
        truth = None if y_true is None else as_class_labels("y_true", y_true, n=n)
        if (class_index == "true" or subset == "correct") and truth is None:
            raise InvalidInputError(
                f"class_index={class_index!r}, subset={subset!r} needs y_true=; pass the "
                "task labels."
            )
        cls = truth if class_index == "true" else pred
        assert cls is not None  # checked above
        if int(cls.max()) >= t:
            raise InvalidInputError(
                f"class index {int(cls.max())} is out of range for a head with {t} classes."
            )
        contribution = theta[:, cls].T * u
        top = contribution.topk(top_l, dim=1).indices
        lam = c.gather(1, top).mean(1)
        correct = torch.ones(n, dtype=torch.bool) if truth is None else pred == truth
        rows = torch.arange(n) if subset == "all" else correct.nonzero().flatten()
        if rows.numel() == 0:
            raise InvalidInputError("subset='correct' is empty: no image is classified right.")
        lam_s = lam[rows]

        def stat(r: torch.Tensor) -> float:
            return float(lam_s[r].mean())

        value = stat(torch.arange(len(rows)))
        interval = None
        if n_boot > 0:
            interval = bootstrap_interval(stat, len(rows), strata=None, n_boot=n_boot, seed=seed)
        chosen = torch.zeros(n, k, dtype=torch.float64).scatter_(1, top, 1.0)[rows]
        hits = (chosen * c[rows]).sum(0)
        per = hits / chosen.sum(0)
        return ConceptResult(
            value=value,
            metric=f"cem@{top_l}",
            per_concept=torch.where(chosen.sum(0) > 0, per, torch.full_like(per, float("nan"))),
            interval=interval,
            n=len(rows),
            params={"top_l": top_l, "class_index": class_index, "subset": subset,
                    "n_boot": n_boot, "seed": seed},
            details={
                "all": float(lam.mean()),
                "correct": float(lam[correct].mean())
                if truth is not None and correct.any() else float("nan"),
                "chance": float(c[rows].mean()),
                "per_image": lam,
                "top_concepts": top,
            },
        )  # fmt: skip


def concept_existence(c_scores: Any, head_weight: Any, c_true: Any, **kwargs: Any) -> ConceptResult:
    """Functional form of :class:`ConceptExistence` (``y_true``, ``y_pred``, ``head_bias``
    go to ``estimate``, the rest to the constructor).

    Examples
    --------
    >>> c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> concept_existence(c, torch.eye(2), c, n_boot=0).value
    1.0
    """
    extra = {key: kwargs.pop(key) for key in ("y_true", "y_pred", "head_bias") if key in kwargs}
    return ConceptExistence(**kwargs).estimate(c_scores, head_weight, c_true, **extra)
