r"""Intervention curves: task accuracy after replacing predicted concepts by true ones.

For a concept -> task callable f, predicted bottleneck values :math:`\hat c` (n, k), true
concepts c and groups :math:`g_1..g_G` of concept indices, a policy picks, per sample, the
order in which groups are intervened on; after j steps the concepts of the chosen groups
are *written*, :math:`\hat c_{ij} \leftarrow w_1` if :math:`c_{ij} = 1` else :math:`w_0`,
and the curve is :math:`a(j) = \mathrm{score}(y, f(\hat c^{(j)}))`, j = 0..G (Koh et al.
2020, §5; Espinosa Zarlenga et al. 2022). Writes (§4.6 of the guide): probabilities 1/0,
logits +5/-5 (cem), or per-concept percentiles (Koh: 95th / 5th, see
:func:`percentile_writes`).

Policies (masks are nested: the groups intervened after j steps contain those after j-1):

- ``"random"``: uniform without replacement. Its expected curve is the mean over all
  :math:`\binom{G}{j}` subsets, computed **exactly** when :math:`2^G \le` ``budget``
  (accuracy only: the expectation of a mean of per-sample hits is the mean of their
  expectations; an AUC is not linear, so it is refused), else by Monte Carlo over
  ``n_mc`` nested draws with a 95 % band for the expectation (mean ± 1.96 sd/√R) and the
  2.5-97.5 % spread of single draws.
- ``"uncertainty"``: cem's score :math:`1/|p - 0.5 + 10^{-8}|` per concept (p = sigmoid of
  a logit bottleneck), a group scores the max over its concepts, most uncertain first.
- ``"entropy"``: Koh et al.'s greedy, adaptive choice by expected entropy reduction of
  the task prediction, per concept :math:`H(\hat y) - \sum_v P(c_j = v)\, H(\hat y \mid
  c_j \leftarrow w_v)` with :math:`P(c_j = 1) = p_j` (sigmoid of a logit), averaged per
  group (the definition; the released code references undefined names).
- ``"oracle"``: greedy, per sample the group whose write raises the true-class
  probability most (an upper reference for the other policies, not a proven bound).
- a callable ``policy(c_pred, c_true, mask) -> scores`` (n, G): called before each step
  with the current (n, G) mask; the highest-scoring group not yet intervened is next.

``compat="koh"`` reproduces Koh et al.'s ``CUB/tti.py: simulate_group_intervention``: the
random policy draws, for every j separately, a fresh subset of j groups per sample (not
nested), repeats ``n_trials`` times (5 in the released script) and reports the **maximum**
accuracy over the trials (an optimistic, upward-biased curve; ``details["trials"]``); a
logit bottleneck without ``writes`` gets the 5th / 95th percentiles of the *evaluated*
``c_pred`` (the default takes them from training logits via :func:`percentile_writes`).

The callable may be a :class:`~dynalens.estimators.concepts.ConceptTask`, which is also
given the (n, k) mask of written concepts: every model of :mod:`dynalens.concepts.models`
(plain, hybrid, sparse, energy-based) hands one out via ``model.concept_task(x)``, so one
engine serves them all.

``competence`` q: each written value is the true one with probability q and the wrong one
otherwise, drawn once per (sample, concept) from ``seed`` (Koh et al.'s noisy-intervener
setting is q < 1).

Summaries in ``details``: ``mean`` (PyC ``intervention_score`` with accuracy as scorer),
``area`` (trapezoid / G), ``gain_at_1`` = a(1) - a(0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from dynalens._validation import check_float, check_int, check_option
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts._checks import (
    as_binary_labels,
    as_class_labels,
    as_matrix,
    as_probabilities,
)
from dynalens.estimators.concepts._intervention_engine import Engine
from dynalens.estimators.concepts._result import ConceptResult

__all__ = ["InterventionCurve", "intervention_curve", "percentile_writes"]

Policy = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
POLICIES = ("random", "uncertainty", "entropy", "oracle")


def percentile_writes(
    train_logits: Any, low: float = 5.0, high: float = 95.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Koh et al.'s logit writes: per concept, the ``low``-th and ``high``-th percentiles
    of its logits on the *training* split (Koh's released code uses the evaluated split).
    Returns ``(write_off, write_on)``, each (k,)."""
    logits = as_matrix("train_logits", train_logits)
    q = torch.tensor([low / 100, high / 100], dtype=torch.float64)
    values = torch.quantile(logits, q, dim=0)
    return values[0], values[1]


class InterventionCurve:
    """Intervention curve of a concept -> task callable under a policy.

    Parameters
    ----------
    policy : "random", "uncertainty", "entropy", "oracle" or a callable (see module docstring).
    groups : sequence of sequences of concept indices (default: one group per concept).
    bottleneck : {"prob", "logit"}
        What ``c_pred`` holds and ``task_fn`` reads.
    writes : (write_off, write_on), scalars or (k,) tensors; default 0/1 for
        probabilities and -5/+5 for logits.
    metric : {"accuracy", "auc"}
    task_output : {"logits", "probabilities"}
        What ``task_fn`` returns, (n, T), or for T = 2 an (n,) value of class 1.
    random : {"auto", "exact", "mc"}
        For ``policy="random"``: exact expectation (needs 2^G <= ``budget`` and accuracy),
        Monte Carlo, or exact when possible.
    budget : int
        The most subsets the exact random expectation may evaluate.
    n_mc : int
        Monte Carlo draws of the random policy.
    seed : int
        Seed of the random policy.
    compat : None or "koh"
        Koh et al.'s released random curve (max over ``n_trials`` non-nested trials) and
        evaluated-split percentile writes.
    n_trials : int
        Trials of ``compat="koh"`` (5 as in the released script).
    competence : float in [0, 1]
        Probability that a written value is the true one (default 1).
    """

    def __init__(
        self,
        policy: str | Policy = "random",
        *,
        groups: Sequence[Sequence[int]] | None = None,
        bottleneck: str = "prob",
        writes: tuple[Any, Any] | None = None,
        metric: str = "accuracy",
        task_output: str = "logits",
        random: str = "auto",
        budget: int = 4096,
        n_mc: int = 100,
        seed: int = 0,
        compat: str | None = None,
        n_trials: int = 5,
        competence: float = 1.0,
    ) -> None:
        self.competence = competence
        self.compat = compat
        self.n_trials = n_trials
        self.policy = policy
        self.groups = groups
        self.bottleneck = bottleneck
        self.writes = writes
        self.metric = metric
        self.task_output = task_output
        self.random = random
        self.budget = budget
        self.n_mc = n_mc
        self.seed = seed

    def estimate(
        self,
        task_fn: Callable[[torch.Tensor], torch.Tensor],
        c_pred: Any,
        c_true: Any,
        y: Any,
    ) -> ConceptResult:
        """The curve a(0..G) of ``task_fn`` on bottleneck ``c_pred`` (n, k), true
        concepts ``c_true`` (n, k) and labels ``y`` (n,)."""
        bottleneck = check_option("bottleneck", self.bottleneck, ("prob", "logit"))
        metric = check_option("metric", self.metric, ("accuracy", "auc"))
        task_output = check_option("task_output", self.task_output, ("logits", "probabilities"))
        random_mode = check_option("random", self.random, ("auto", "exact", "mc"))
        budget = check_int("budget", self.budget, min=1)
        n_mc = check_int("n_mc", self.n_mc, min=2)
        seed = check_int("seed", self.seed)
        n_trials = check_int("n_trials", self.n_trials, min=1)
        competence = check_float("competence", self.competence, min=0.0, max=1.0)
        koh = self.compat is not None and check_option("compat", self.compat, ("koh",)) == "koh"
        policy = self.policy
        if not callable(policy):
            policy = check_option("policy", policy, POLICIES)
        c = as_binary_labels("c_true", c_true)
        n, k = c.shape
        check = as_probabilities if bottleneck == "prob" else as_matrix
        pred = check("c_pred", c_pred, n=n)
        if pred.shape != c.shape:
            raise InvalidInputError(
                f"c_pred has shape {tuple(pred.shape)} but c_true has {tuple(c.shape)}."
            )
        labels = as_class_labels("y", y, n=n)
        members = _membership(self.groups, k)
        writes = self.writes
        if koh and writes is None and bottleneck == "logit":
            writes = percentile_writes(pred)  # the released code: the evaluated split
        off, on = _writes(writes, bottleneck, k)
        wrong = None
        if competence < 1:
            gen = torch.Generator().manual_seed(seed + 7919)  # independent of the policy's
            wrong = torch.rand(c.shape, generator=gen, dtype=torch.float64) >= competence
        logits_out = task_output == "logits"
        engine = Engine(task_fn, pred, c, labels, members, off, on, logits_out, wrong)
        if policy == "random" and koh:
            curve, details = engine.random_koh(metric, n_trials, seed)
        elif policy == "random":
            exact = _choose_exact(random_mode, members.shape[0], budget, metric)
            curve, details = (
                engine.random_exact(metric) if exact else engine.random_mc(metric, n_mc, seed)
            )
        else:
            if policy == "uncertainty":
                scores = _uncertainty(pred, bottleneck, members)
                masks = engine.nested(lambda mask: scores)
            elif policy == "entropy":
                p_on = pred if bottleneck == "prob" else torch.sigmoid(pred)
                masks = engine.nested(lambda mask: engine.entropy_scores(mask, p_on))
            elif policy == "oracle":
                masks = engine.nested(engine.oracle_scores)
            elif callable(policy):
                fn: Policy = policy
                masks = engine.nested(lambda mask: fn(pred, c, mask))
            curve = torch.tensor([engine.score(m, metric) for m in masks], dtype=torch.float64)
            details = {"masks": masks, "exact": True}
        g = members.shape[0]
        area = float(torch.trapezoid(curve) / g) if g > 0 else float(curve[0])
        details = {
            **details,
            "curve": curve,
            "mean": float(curve.mean()),
            "area": area,
            "gain_at_1": float(curve[1] - curve[0]) if g > 0 else 0.0,
        }
        return ConceptResult(
            value=float(curve.mean()),
            metric=f"intervention_{metric}",
            per_concept=curve,
            interval=None,
            n=n,
            params={
                "policy": policy
                if isinstance(policy, str)
                else getattr(policy, "__name__", "custom"),
                "bottleneck": bottleneck,
                "writes": (off, on),
                "metric": metric,
                "groups": [m.nonzero().flatten().tolist() for m in members],
                "seed": seed,
                "compat": self.compat,
                "competence": competence,
            },
            details=details,
        )


def intervention_curve(
    task_fn: Callable[[torch.Tensor], torch.Tensor],
    c_pred: Any,
    c_true: Any,
    y: Any,
    *,
    policy: str | Policy = "random",
    **kwargs: Any,
) -> ConceptResult:
    """The intervention curve; see :class:`InterventionCurve` for the parameters.

    ``result.details["curve"]`` holds a(0..G), ``["masks"]`` the (G+1, n, G) nested masks
    of deterministic policies (the first draw for Monte Carlo), ``["band"]`` the Monte
    Carlo 95 % band of the random expectation."""
    return InterventionCurve(policy, **kwargs).estimate(task_fn, c_pred, c_true, y)


def _membership(groups: Sequence[Sequence[int]] | None, k: int) -> torch.Tensor:
    """(G, k) bool: which concepts each group writes; groups must be disjoint."""
    if groups is None:
        return torch.eye(k, dtype=torch.bool)
    members = torch.zeros(len(groups), k, dtype=torch.bool)
    for gi, group in enumerate(groups):
        idx = list(group)
        if not idx or any(not isinstance(i, int) or not 0 <= i < k for i in idx):
            raise InvalidParameterError(
                f"groups[{gi}] = {idx!r} must be a non-empty list of concept indices in "
                f"[0, {k - 1}]."
            )
        if members[:, idx].any():
            raise InvalidParameterError(
                f"groups[{gi}] = {idx!r} shares a concept with an earlier group; groups "
                "must be disjoint."
            )
        members[gi, idx] = True
    return members


def _writes(
    writes: tuple[Any, Any] | None, bottleneck: str, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if writes is None:
        writes = (0.0, 1.0) if bottleneck == "prob" else (-5.0, 5.0)
    off, on = (torch.as_tensor(w, dtype=torch.float64).expand(k).clone() for w in writes)
    return off, on


def _choose_exact(mode: str, g: int, budget: int, metric: str) -> bool:
    fits = 2**g <= budget
    if mode == "exact":
        if metric != "accuracy":
            raise InvalidParameterError(
                "random='exact' needs metric='accuracy': the expectation of an AUC over "
                "per-sample random subsets is not a mean over subsets. Use random='mc'."
            )
        if not fits:
            raise InvalidParameterError(
                f"random='exact' evaluates 2^G = {2**g} subsets, more than budget={budget}; "
                "raise budget or use random='mc'."
            )
        return True
    return mode == "auto" and fits and metric == "accuracy"


def _uncertainty(pred: torch.Tensor, bottleneck: str, members: torch.Tensor) -> torch.Tensor:
    p = pred if bottleneck == "prob" else torch.sigmoid(pred)
    concept = 1.0 / (p - 0.5 + 1e-8).abs()
    return (
        torch.stack([concept[:, m].amax(1) for m in members], 1)
        if len(members)
        else (torch.zeros(pred.shape[0], 0, dtype=pred.dtype))
    )
