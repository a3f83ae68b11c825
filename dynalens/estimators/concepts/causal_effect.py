r"""Causal concept effect, CaCE (Goyal et al. 2019, "Explaining Classifiers with Causal
Concept Effect (CaCE)").

For a concept -> task head f and bottleneck values :math:`\hat c` (n, k), the effect of
concept j on output y is the batch mean of the difference between two interventions,
everything else (other concepts, any residual inside the head) held fixed:

.. math:: \mathrm{CaCE}_j(y) = \frac1n \sum_i f_y(\hat c_i;\, c_j \leftarrow w^1_j)
          - f_y(\hat c_i;\, c_j \leftarrow w^0_j),

with the writes :math:`w^1, w^0` of the bottleneck (probabilities: 1 / 0; logits: +5 / -5
as cem, or Koh's percentiles via ``writes=percentile_writes(train_logits)``). ``output``
says which f_y: ``"probabilities"`` (softmax of logits, the default) or ``"raw"`` (the
head's outputs as returned; a linear head on logits then gives
:math:`(w^1_j - w^0_j) W_{yj}` exactly). PyC's ``cace_score(y_c0, y_c1)`` is the same
difference of means; ``residual_effect(before, after)`` is its
``residual_concept_causal_effect`` (after / before). Interval: percentile bootstrap over
rows of the per-row differences (head fixed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dynalens._validation import check_int, check_option
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts._checks import as_matrix, as_probabilities
from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts._scores import weighted_bootstrap_interval
from dynalens.estimators.concepts.interventions import _writes

__all__ = ["CausalConceptEffect", "causal_concept_effect", "residual_effect"]


def _outputs(
    task_fn: Callable[[torch.Tensor], torch.Tensor],
    values: torch.Tensor,
    output: str,
) -> torch.Tensor:
    with torch.no_grad():
        out = task_fn(values)
    if not torch.is_tensor(out) or out.shape[0] != values.shape[0]:
        raise InvalidInputError(
            f"task_fn must return a tensor with one row per sample ({values.shape[0]}); got "
            f"{type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}."
        )
    out = out.detach().to(torch.float64, copy=True)  # a copy: the caller reuses `values`
    if out.ndim == 1:
        out = out[:, None]
    if output == "raw":
        return out
    if out.shape[1] == 1:  # one logit: P(class 1)
        return torch.cat([torch.sigmoid(-out), torch.sigmoid(out)], 1)
    # softmax written out: torch.softmax over a short last axis is ~10x slower
    out = (out - out.amax(1, keepdim=True)).exp_()
    return out.div_(out.sum(1, keepdim=True))


class CausalConceptEffect:
    """CaCE of each concept on each output.

    Parameters
    ----------
    bottleneck : {"prob", "logit"}
        What ``c_pred`` holds; sets the default writes (1 / 0, or +5 / -5).
    writes : (off, on) or None
        Values written for c_j = 0 and c_j = 1: scalars or (k,) tensors.
    output : {"probabilities", "raw"}
        Effect on softmax probabilities of the head's logits, or on its raw outputs.
    concept, target : int or None
        The (concept, output) pair reported as ``value``; default: the pair with the
        largest absolute effect.
    n_boot, seed : int
        Bootstrap replicates over rows (0: none) and their seed.

    Examples
    --------
    >>> head = torch.nn.Linear(3, 2)
    >>> r = CausalConceptEffect(output="raw").estimate(head, torch.rand(100, 3))
    >>> r.per_concept.shape
    torch.Size([3, 2])
    """

    def __init__(
        self,
        *,
        bottleneck: str = "prob",
        writes: tuple[Any, Any] | None = None,
        output: str = "probabilities",
        concept: int | None = None,
        target: int | None = None,
        n_boot: int = 200,
        seed: int = 0,
    ) -> None:
        self.bottleneck = bottleneck
        self.writes = writes
        self.output = output
        self.concept = concept
        self.target = target
        self.n_boot = n_boot
        self.seed = seed

    def estimate(
        self, task_fn: Callable[[torch.Tensor], torch.Tensor], c_pred: Any
    ) -> ConceptResult:
        """Effects (k, T) of ``task_fn`` (bottleneck -> task outputs) at ``c_pred`` (n, k)."""
        bottleneck = check_option("bottleneck", self.bottleneck, ("prob", "logit"))
        output = check_option("output", self.output, ("probabilities", "raw"))
        n_boot = check_int("n_boot", self.n_boot, min=0)
        seed = check_int("seed", self.seed)
        pred = (as_probabilities if bottleneck == "prob" else as_matrix)("c_pred", c_pred)
        n, k = pred.shape
        off, on = _writes(self.writes, bottleneck, k)
        params = list(task_fn.parameters()) if isinstance(task_fn, torch.nn.Module) else []
        dtype = params[0].dtype if params else torch.get_default_dtype()  # the head's dtype
        diffs = []
        both = pred.to(dtype).repeat(2, 1)  # rows 0..n-1: do(c_j = off); n..2n-1: do(c_j = on)
        for j in range(k):
            both[:n, j], both[n:, j] = off[j], on[j]
            out = _outputs(task_fn, both, output)
            both[:n, j], both[n:, j] = pred[:, j], pred[:, j]  # one buffer, restored
            diffs.append(out[n:] - out[:n])
        per_row = torch.stack(diffs)  # (k, n, T)
        effect = per_row.mean(1)
        if not torch.isfinite(effect).all():
            raise InvalidInputError(
                "task_fn returned NaN or infinite outputs under an intervention; check the "
                "head (and the writes) for values it cannot take."
            )
        t = effect.shape[1]
        for name, idx, size in (("concept", self.concept, k), ("target", self.target, t)):
            if idx is not None and not (isinstance(idx, int) and 0 <= idx < size):
                raise InvalidParameterError(
                    f"{name} must be an int in [0, {size - 1}]; got {idx!r}."
                )
        allowed = torch.ones_like(effect, dtype=torch.bool)
        if self.concept is not None:
            allowed[torch.arange(k) != self.concept] = False
        if self.target is not None:
            allowed[:, torch.arange(t) != self.target] = False
        concept, target = divmod(int(torch.where(allowed, effect.abs(), -1.0).argmax()), t)
        interval = None
        if n_boot > 0:
            column = per_row[concept, :, target]
            interval = weighted_bootstrap_interval(
                lambda w: (w @ column) / w.sum(1), n, strata=None, n_boot=n_boot, seed=seed
            )
        return ConceptResult(
            value=float(effect[concept, target]),
            metric="cace",
            per_concept=effect,
            interval=interval,
            n=n,
            params={
                "bottleneck": bottleneck,
                "writes": (off.tolist(), on.tolist()),
                "output": output,
                "concept": concept,
                "target": target,
                "n_boot": n_boot,
                "seed": seed,
            },
            details={"per_row": per_row},  # (k, n, T): each row's effect
        )


def causal_concept_effect(
    task_fn: Callable[[torch.Tensor], torch.Tensor], c_pred: Any, **kwargs: Any
) -> ConceptResult:
    """CaCE (k, T) as ``per_concept``; see :class:`CausalConceptEffect`."""
    return CausalConceptEffect(**kwargs).estimate(task_fn, c_pred)


def residual_effect(before: Any, after: Any) -> torch.Tensor:
    """PyC's residual concept causal effect: CaCE after an intervention on an inner
    concept over CaCE before it (1: the inner concept mediates nothing; 0: all)."""
    b = torch.as_tensor(before, dtype=torch.float64)
    a = torch.as_tensor(after, dtype=torch.float64)
    if a.shape != b.shape:
        raise InvalidInputError(
            f"before {tuple(b.shape)} and after {tuple(a.shape)} must have the same shape "
            "(one CaCE per concept or per (concept, class))."
        )
    return a / b
