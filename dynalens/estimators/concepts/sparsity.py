r"""Sparsity counts of a concept head: effective and contributing concepts, activation
sparsity (guide §3.11).

For a linear head :math:`W \in \mathbb{R}^{C \times k}` (C classes, k concept columns) and
concept activations :math:`a \in \mathbb{R}^{n \times k}` (the head's inputs):

- **NEC**, number of effective concepts (Srivastava et al. 2024, "VLG-CBM"):
  :math:`\mathrm{NEC} = \frac1C \sum_r \#\{j : |W_{rj}| > \tau\}` (τ = ``threshold``,
  default 0: exactly pruned weights); a categorical group of columns counts once when any
  of its columns is non-zero. ``details["nonzero_fraction"]``: the share of weights with
  :math:`|W_{rj}| > \tau`.
- **NCC**, number of contributing concepts (PyC ``number_of_contributing_concepts``):
  with contributions :math:`u_{ir,j} = |a_{ij} W_{rj}|` (a group's columns summed), the
  mean over samples i and classes r of the smallest κ whose κ largest contributions reach
  ``coverage`` of their total; a zero total needs no concept (κ = 0).
  ``predicted_class_only``: only the class :math:`\arg\max_r (a W^\top)_{ir}`. At coverage
  1 (and threshold 0) NCC equals NEC for activations without zeros.
- **activation sparsity** of a: Hoyer's measure
  :math:`(\sqrt k - \lVert a_i\rVert_1/\lVert a_i\rVert_2)/(\sqrt k - 1)` (1: one active
  concept, 0: all equal), the effective number :math:`\exp H(\mathrm{softmax}(a_i))`, and
  Gumbel hardness, the mean largest softmax probability; each a mean over samples.

Interval: percentile bootstrap of NCC over samples (the head is fixed; NEC has none, as it
depends on the head only). ``compat="pyc"`` changes nothing: the counts are PyC's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dynalens._validation import check_bool, check_float, check_int
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import as_matrix
from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts._scores import weighted_bootstrap_interval
from dynalens.estimators.concepts.interventions import _membership

__all__ = [
    "ConceptSparsity",
    "activation_sparsity",
    "number_of_contributing_concepts",
    "number_of_effective_concepts",
]


def _concept_columns(groups: Sequence[Sequence[int]] | None, k: int) -> torch.Tensor | None:
    """(G, k) float membership: each group one concept, every other column its own;
    None without groups (every column its own concept)."""
    if groups is None:
        return None
    members = _membership(groups, k)
    alone = ~members.any(0)
    members = torch.cat([members, torch.eye(k, dtype=torch.bool)[alone]])
    return members.to(torch.float64)


def _per_concept(x: torch.Tensor, members: torch.Tensor | None) -> torch.Tensor:
    """Sum the last axis (columns) within each concept's columns."""
    return x if members is None else x @ members.T


def _contributing(
    weight: torch.Tensor,
    act: torch.Tensor,
    members: torch.Tensor | None,
    coverage: float,
    pred: bool,
) -> torch.Tensor:
    """κ per sample (n, C) or (n, 1) with ``pred``: concepts needed to cover ``coverage``."""
    contrib = _per_concept((act[:, None, :] * weight[None]).abs(), members)  # (n, C, G)
    cum = contrib.sort(-1, descending=True).values.cumsum(-1)
    total = cum[..., -1:]
    kappa = ((cum < coverage * total).sum(-1) + 1).to(torch.float64)
    kappa = torch.where(total[..., 0] <= 0, torch.zeros_like(kappa), kappa)
    if pred:
        kappa = kappa.gather(1, (act @ weight.T).argmax(1, keepdim=True))
    return kappa


_FAST_DTYPES = (torch.float32, torch.float64, torch.float16)


def _head_counts(
    weight: Any, threshold: float, groups: Sequence[Sequence[int]] | None
) -> tuple[torch.Tensor, torch.Tensor, float, float, int, int]:
    """Per-class NEC counts (C,) float64, concepts used (G,), NEC, the non-zero fraction,
    C and k of a head. A CPU float tensor without groups takes a fast path on a zero-copy view
    of its memory: the finiteness check is the largest |W| (NaN or inf make it
    non-finite, and only then does :func:`as_matrix` run to name the bad entry), so the
    counts cost a few vectorised operations and no copy; anything else goes through
    :func:`as_matrix`. Both paths give the same numbers (counts are exact integers)."""
    if (
        groups is None
        and torch.is_tensor(weight)
        and weight.ndim == 2
        and weight.dtype in _FAST_DTYPES
        and weight.is_cpu
        and weight.shape[0] > 0
    ):
        a = np.abs((weight.detach() if weight.requires_grad else weight).numpy())
        if not math.isfinite(np.maximum.reduce(a, None)):
            as_matrix("weight", weight)  # raises, naming the first NaN / inf
        nonzero = a > threshold
        per_class = np.add.reduce(nonzero, 1, dtype=np.float64)
        c, k = a.shape
        nec = float(np.add.reduce(per_class)) / c
        used = torch.from_numpy(np.logical_or.reduce(nonzero, 0))
        return torch.from_numpy(per_class), used, nec, nec / k, c, k
    w = as_matrix("weight", weight)
    members = _concept_columns(groups, w.shape[1])
    nonzero = w.abs() > threshold
    used = _per_concept(nonzero.to(torch.float64), members) > 0  # (C, G)
    per_class = used.sum(1).to(torch.float64)
    frac = float(nonzero.to(torch.float64).mean())
    return per_class, used.any(0), float(per_class.mean()), frac, w.shape[0], w.shape[1]


def _activation_stats(act: torch.Tensor) -> dict[str, float]:
    k = act.shape[1]
    l1, l2 = act.abs().sum(1), act.norm(dim=1)
    ratio = torch.where(l2 > 0, l1 / l2.clamp_min(1e-300), torch.full_like(l1, k**0.5))
    hoyer = (k**0.5 - ratio) / (k**0.5 - 1) if k > 1 else torch.ones_like(l1)
    logp = torch.log_softmax(act, 1)
    entropy = -(logp.exp() * logp).sum(1)
    return {
        "hoyer": float(hoyer.mean()),
        "effective_number": float(entropy.exp().mean()),
        "hardness": float(logp.max(1).values.exp().mean()),
    }


class ConceptSparsity:
    """NEC of a head, and with activations NCC and activation sparsity.

    Parameters
    ----------
    threshold : float
        |w| above which a weight counts as non-zero (default 0).
    coverage : float in [0, 1]
        Share of each decision's total contribution the top concepts must cover.
    predicted_class_only : bool
        NCC over each sample's predicted class only (default: all classes).
    n_boot, seed : int
        Bootstrap replicates of NCC over samples (0: none) and their seed.
    activation_stats : bool
        Also compute Hoyer sparsity, effective number and hardness of the activations.

    Examples
    --------
    >>> w = torch.tensor([[1.0, 0.0, -0.5], [0.0, 0.3, 0.0]])
    >>> ConceptSparsity().estimate(w).value
    1.5
    """

    def __init__(
        self,
        *,
        threshold: float = 0.0,
        coverage: float = 0.95,
        predicted_class_only: bool = False,
        n_boot: int = 200,
        seed: int = 0,
        activation_stats: bool = True,
    ) -> None:
        self.activation_stats = activation_stats
        self.threshold = threshold
        self.coverage = coverage
        self.predicted_class_only = predicted_class_only
        self.n_boot = n_boot
        self.seed = seed

    def estimate(
        self,
        weight: Any,
        activations: Any = None,
        *,
        groups: Sequence[Sequence[int]] | None = None,
    ) -> ConceptResult:
        """Counts of head ``weight`` (C, k) (``nn.Linear.weight``), with ``activations``
        (n, k) its inputs; ``groups`` lists the columns of each categorical concept."""
        threshold = check_float("threshold", self.threshold, min=0.0)
        coverage = check_float("coverage", self.coverage, min=0.0, max=1.0)
        pred = check_bool("predicted_class_only", self.predicted_class_only)
        n_boot = check_int("n_boot", self.n_boot, min=0)
        seed = check_int("seed", self.seed)
        stats = check_bool("activation_stats", self.activation_stats)
        per_class, used, nec, frac, n_classes, k = _head_counts(weight, threshold, groups)
        details: dict[str, Any] = {
            "nec": nec,
            "nonzero_fraction": frac,
            "concepts_used": used,
        }
        interval = None
        if activations is not None:
            w = as_matrix("weight", weight)
            members = _concept_columns(groups, k)
            act = as_matrix("activations", activations)
            if act.shape[1] != w.shape[1]:
                raise InvalidInputError(
                    f"activations have {act.shape[1]} columns but the head has {w.shape[1]} "
                    "concept columns (weight is (classes, concepts), as nn.Linear.weight); "
                    "pass the head's inputs."
                )
            kappa = _contributing(w, act, members, coverage, pred)
            details["ncc"] = float(kappa.mean())
            details["ncc_per_sample"] = kappa.mean(1)
            if n_boot > 0:
                per_sample = kappa.mean(1)
                details["ncc_interval"] = weighted_bootstrap_interval(
                    lambda b: (b @ per_sample) / b.sum(1),
                    act.shape[0],
                    strata=None,
                    n_boot=n_boot,
                    seed=seed,
                )
            if stats:
                details.update(_activation_stats(act))
        return ConceptResult(
            value=details["nec"],
            metric="nec",
            per_concept=per_class,
            interval=interval,
            n=n_classes,
            params={
                "threshold": threshold,
                "coverage": coverage,
                "predicted_class_only": pred,
                "n_boot": n_boot,
                "seed": seed,
                "groups": None if groups is None else [list(g) for g in groups],
            },
            details=details,
        )


def _lean_nec(weight: Any, threshold: Any) -> ConceptResult | None:
    """NEC of a plain CPU float head with default settings, without the estimator object:
    the same checks (threshold, finiteness of every weight) and the same result as
    :meth:`ConceptSparsity.estimate`, in fewer operations; None where it does not apply."""
    if not (
        torch.is_tensor(weight)
        and weight.ndim == 2
        and weight.dtype in _FAST_DTYPES
        and weight.is_cpu
        and weight.shape[0] > 0
    ):
        return None
    threshold = check_float("threshold", threshold, min=0.0)
    a = np.abs((weight.detach() if weight.requires_grad else weight).numpy())
    if not math.isfinite(np.maximum.reduce(a, None)):
        as_matrix("weight", weight)  # raises, naming the first NaN / inf
    nonzero = a > threshold
    c, k = a.shape
    count = int(np.count_nonzero(nonzero))
    nec = count / c
    return ConceptResult(
        value=nec,
        metric="nec",
        per_concept=torch.from_numpy(np.add.reduce(nonzero, 1, dtype=np.float64)),
        n=c,
        params={**_NEC_DEFAULTS, "threshold": threshold},
        details=_NECDetails(nec, nec / k, nonzero),  # as _head_counts: same float
    )


class _NECDetails(Mapping[str, Any]):
    """NEC's ``details`` with ``concepts_used`` (any non-zero weight per column) built on
    first access: the lean path's result costs no work nobody reads."""

    __slots__ = ("_items", "_nonzero")

    def __init__(self, nec: float, fraction: float, nonzero: np.ndarray) -> None:
        self._items: dict[str, Any] = {"nec": nec, "nonzero_fraction": fraction}
        self._nonzero = nonzero

    def __getitem__(self, key: str) -> Any:
        if key == "concepts_used" and key not in self._items:
            self._items[key] = torch.from_numpy(np.logical_or.reduce(self._nonzero, 0))
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(("nec", "nonzero_fraction", "concepts_used"))

    def __len__(self) -> int:
        return 3

    def __repr__(self) -> str:
        return repr(dict(self))


_NEC_DEFAULTS = {
    "threshold": 0.0,
    "coverage": 0.95,
    "predicted_class_only": False,
    "n_boot": 200,
    "seed": 0,
    "groups": None,
}


def number_of_effective_concepts(weight: Any, **kwargs: Any) -> ConceptResult:
    """NEC of a head ``weight`` (C, k); ``per_concept`` holds each class's count. See
    :class:`ConceptSparsity` (``threshold``, ``groups``). A CPU float tensor with only
    ``threshold`` given takes a lean path (:func:`_lean_nec`, same checks, same result)."""
    if len(kwargs) <= 1 and kwargs.keys() <= {"threshold"}:
        result = _lean_nec(weight, kwargs.get("threshold", 0.0))
        if result is not None:
            return result
    groups = kwargs.pop("groups", None)
    return ConceptSparsity(**kwargs).estimate(weight, groups=groups)


def number_of_contributing_concepts(weight: Any, activations: Any, **kwargs: Any) -> ConceptResult:
    """NCC of a head ``weight`` (C, k) on ``activations`` (n, k), with a bootstrap
    interval over samples; ``per_concept`` holds κ per sample. See :class:`ConceptSparsity`
    (``activation_stats`` defaults to False here)."""
    groups = kwargs.pop("groups", None)
    kwargs.setdefault("activation_stats", False)
    r = ConceptSparsity(**kwargs).estimate(weight, activations, groups=groups)
    return ConceptResult(
        value=r.details["ncc"],
        metric="ncc",
        per_concept=r.details["ncc_per_sample"],
        interval=r.details.get("ncc_interval"),
        n=r.details["ncc_per_sample"].shape[0],
        params=r.params,
        details={k: v for k, v in r.details.items() if k not in ("ncc_per_sample",)},
    )


def activation_sparsity(activations: Any) -> ConceptResult:
    """Hoyer sparsity of concept activations (n, k) as ``value``; the effective number
    exp H(softmax a) and Gumbel hardness (mean largest softmax probability) in ``details``."""
    act = as_matrix("activations", activations)
    stats = _activation_stats(act)
    return ConceptResult(
        value=stats["hoyer"], metric="hoyer_sparsity", n=act.shape[0], details=stats
    )
