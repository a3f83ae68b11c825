"""The intervention engine: writes concept groups, scores a concept -> task callable, and
builds nested masks (deterministic policies) or random curves (exact, Monte Carlo, Koh).

The callable is any ``values (n, k) -> task output``; a :class:`ConceptTask` is also told
which concepts were written (``written`` (n, k) bool), for models whose task prediction
depends on which concepts are known rather than only on their values (energy-based CBMs
condition on the written concepts and marginalise the rest)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._scores import macro_ovr_auc
from dynalens.estimators.concepts.task_accuracy import class_probabilities

__all__ = ["ConceptTask", "Engine"]


class ConceptTask:
    """A concept -> task callable that also receives the written-concept mask.

    Subclasses implement ``__call__(values, written)``: ``values`` (n, k) bottleneck
    values with interventions applied, ``written`` (n, k) bool, True where a value was
    written by an intervention (None: nothing written). Plain callables ``values -> out``
    need no subclass; the engine passes ``written`` only to instances of this class.
    """

    def __call__(self, values: torch.Tensor, written: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class Engine:
    """Writes concept groups and scores the task callable on the result."""

    def __init__(
        self,
        task_fn: Callable[[torch.Tensor], torch.Tensor],
        pred: torch.Tensor,
        c: torch.Tensor,
        y: torch.Tensor,
        members: torch.Tensor,
        off: torch.Tensor,
        on: torch.Tensor,
        logits: bool,
        wrong: torch.Tensor | None = None,
    ) -> None:
        self.task_fn, self.pred, self.c, self.y = task_fn, pred, c, y
        self.members, self.logits = members, logits
        self.on, self.off = on, off
        said = c if wrong is None else torch.where(wrong, 1 - c, c)  # competence < 1
        self.target = torch.where(said == 1, on, off)
        self.n, self.g = pred.shape[0], members.shape[0]
        self._checked = False

    def written(self, mask: torch.Tensor) -> torch.Tensor:
        """(n, k) bool: the concepts of the groups in ``mask`` (n, G)."""
        return (mask.to(torch.float64) @ self.members.to(torch.float64)) > 0

    def values(self, mask: torch.Tensor) -> torch.Tensor:
        """Bottleneck values (n, k) with the groups in ``mask`` (n, G) written."""
        return torch.where(self.written(mask), self.target, self.pred)

    def proba(self, mask: torch.Tensor) -> torch.Tensor:
        """Class probabilities (n, T) with the groups in ``mask`` (n, G) written."""
        return self.proba_of(self.values(mask), self.written(mask))

    def proba_of(self, values: torch.Tensor, written: torch.Tensor | None = None) -> torch.Tensor:
        """Class probabilities (n, T) of ``task_fn`` on bottleneck values (n, k);
        a :class:`ConceptTask` also gets the ``written`` mask (n, k)."""
        with torch.no_grad():
            if isinstance(self.task_fn, ConceptTask):
                out = self.task_fn(values.to(self._dtype()), written)
            else:
                out = self.task_fn(values.to(self._dtype()))
        if not torch.is_tensor(out) or out.shape[0] != self.n:
            raise InvalidInputError(
                f"task_fn must return a tensor with one row per sample ({self.n}); got "
                f"{type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}."
            )
        proba = class_probabilities(out.detach().double(), logits=self.logits)
        if not self._checked and int(self.y.max()) >= proba.shape[1]:
            raise InvalidInputError(
                f"y holds class {int(self.y.max())} but task_fn returns {proba.shape[1]} "
                "columns; return one column per class."
            )
        self._checked = True
        return proba

    def _dtype(self) -> torch.dtype:
        return torch.get_default_dtype()

    def hits(self, mask: torch.Tensor) -> torch.Tensor:
        return (self.proba(mask).argmax(1) == self.y).to(torch.float64)

    def score(self, mask: torch.Tensor, metric: str) -> float:
        if metric == "accuracy":
            return float(self.hits(mask).mean())
        return macro_ovr_auc(self.y, self.proba(mask))

    def nested(self, scores_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """(G+1, n, G) nested masks, each step adding the best-scoring open group."""
        mask = torch.zeros(self.n, self.g, dtype=torch.bool)
        masks = [mask.clone()]
        rows = torch.arange(self.n)
        for _ in range(self.g):
            scores = torch.as_tensor(scores_of(mask.clone()), dtype=torch.float64)
            if scores.shape != (self.n, self.g):
                raise InvalidInputError(
                    f"the policy must return scores of shape ({self.n}, {self.g}); got "
                    f"{tuple(scores.shape)}."
                )
            scores = scores.masked_fill(mask, float("-inf"))
            mask[rows, scores.argmax(1)] = True
            masks.append(mask.clone())
        return torch.stack(masks)

    def entropy_scores(self, mask: torch.Tensor, p_on: torch.Tensor) -> torch.Tensor:
        """Koh et al.'s expected entropy reduction of the task prediction, per open group:
        the mean over its concepts j of H(y_hat) - sum_v P(c_j = v) H(y_hat | c_j <- v),
        with P(c_j = 1) = ``p_on`` (n, k) and the current writes in place."""
        current, known = self.values(mask), self.written(mask)
        h_now = _entropy(self.proba_of(current, known))
        gain = torch.zeros_like(current)
        for j in range(current.shape[1]):
            hs = []
            now_known = known.clone()
            now_known[:, j] = True
            for write in (self.on, self.off):
                trial = current.clone()
                trial[:, j] = write[j]
                hs.append(_entropy(self.proba_of(trial, now_known)))
            gain[:, j] = h_now - (p_on[:, j] * hs[0] + (1 - p_on[:, j]) * hs[1])
        members = self.members.to(gain.dtype)
        return (gain @ members.T) / members.sum(1)

    def oracle_scores(self, mask: torch.Tensor) -> torch.Tensor:
        """Per sample and open group: the true-class probability after writing it."""
        out = torch.full((self.n, self.g), float("-inf"), dtype=torch.float64)
        rows = torch.arange(self.n)
        for gi in range(self.g):
            trial = mask.clone()
            trial[:, gi] = True
            out[:, gi] = self.proba(trial)[rows, self.y]
        return out

    def random_exact(self, metric: str) -> tuple[torch.Tensor, dict[str, Any]]:
        sums = torch.zeros(self.g + 1, dtype=torch.float64)
        for size in range(self.g + 1):
            for subset in itertools.combinations(range(self.g), size):
                mask = torch.zeros(self.n, self.g, dtype=torch.bool)
                mask[:, list(subset)] = True
                sums[size] += self.score(mask, metric)
        counts = torch.tensor(
            [math.comb(self.g, j) for j in range(self.g + 1)], dtype=torch.float64
        )
        return sums / counts, {"exact": True, "masks": None, "band": None}

    def random_koh(
        self, metric: str, n_trials: int, seed: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        gen = torch.Generator().manual_seed(seed)
        trials = torch.zeros(self.g + 1, n_trials, dtype=torch.float64)
        for j in range(self.g + 1):
            for t in range(n_trials):
                rank = torch.rand(self.n, self.g, generator=gen).argsort(1).argsort(1)
                trials[j, t] = self.score(rank < j, metric)
        return trials.amax(1), {"exact": False, "masks": None, "band": None, "trials": trials}

    def random_mc(self, metric: str, n_mc: int, seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
        gen = torch.Generator().manual_seed(seed)
        curves, first = [], None
        for _ in range(n_mc):
            order = torch.rand(self.n, self.g, generator=gen).argsort(1)
            rank = order.argsort(1)  # rank[i, g] = step at which group g is written
            masks = torch.stack([rank < j for j in range(self.g + 1)])
            first = masks if first is None else first
            curves.append(torch.tensor([self.score(m, metric) for m in masks], dtype=torch.float64))
        runs = torch.stack(curves).to(torch.float64)
        mean, sd = runs.mean(0), runs.std(0)
        half = 1.96 * sd / math.sqrt(n_mc)
        q = torch.quantile(runs, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
        return mean, {
            "exact": False,
            "masks": first,
            "band": torch.stack([mean - half, mean + half], 1),
            "spread": q.T.contiguous(),
            "runs": runs,
        }


def _entropy(proba: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of class probabilities."""
    return -(proba * proba.clamp_min(1e-300).log()).sum(1)
