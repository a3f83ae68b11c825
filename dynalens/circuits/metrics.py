"""Patching metrics: one value per example from logits ``[batch, pos, vocab]``.

Every metric maps the logits of a batch to a ``[batch]`` tensor; sweeps keep the
per-example values (for bootstrap intervals) and average them afterwards. Prefer the
logit difference over the probability (Zhang & Nanda 2024, "Towards best practices of
activation patching"): it is linear in the final residual and does not saturate.

- :func:`logit_diff`: ``logit[answer] - logit[wrong]`` at a position;
- :func:`probability`: ``softmax(logits)[answer]`` at a position;
- :func:`kl_to_clean`: ``KL(p_clean || p) = Σ_v p_clean(v) (log p_clean(v) - log p(v))``
  at a position, in nats (0 when the run reproduces the clean one).

Any callable with the same contract works; :func:`check_per_example` refuses one that
returns a scalar. The built-in metrics are :class:`NamedMetric` objects: a name and the
parameters they were built from, so an analysis cached in a store is keyed by what the
metric *is* (``"logit_diff"`` of these tokens at this position), not by a function
object that changes every session. :func:`named_metric` names any callable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dynalens.errors import InvalidInputError, InvalidParameterError

Metric = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, eq=False)
class NamedMetric:
    """A metric with a stable name and the parameters it was built from.

    Calling it calls ``fn``; ``name`` and ``params`` (numbers, strings, tensors) make the
    cache key of an analysis that uses it (see :func:`metric_key`).
    """

    fn: Metric
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.fn(logits)


def named_metric(fn: Metric, name: str, **params: Any) -> NamedMetric:
    """Name a callable metric so analyses using it can be cached.

    ``params`` are what the metric depends on besides the logits (answer tokens,
    positions...): two metrics of the same name and params must compute the same thing.

    Example
    -------
    >>> m = named_metric(lambda logits: logits[:, -1, 3], "logit_3", token=3)
    """
    if not callable(fn):
        raise InvalidParameterError(f"named_metric needs a callable; got {type(fn).__name__}.")
    if not isinstance(name, str) or not name:
        raise InvalidParameterError(f"a metric name must be a non-empty string; got {name!r}.")
    return NamedMetric(fn, name, dict(params))


def metric_key(metric: object) -> tuple[str, dict[str, Any]]:
    """``(name, params)`` of a :class:`NamedMetric`, or a clear error for an unnamed
    callable (its identity changes every session, so nothing could be cached by it)."""
    if isinstance(metric, NamedMetric):
        return metric.name, metric.params
    what = getattr(metric, "__qualname__", type(metric).__name__)
    raise InvalidParameterError(
        f"the metric {what!r} has no name, so a cached result could not be keyed by it. "
        "Use a built-in metric (logit_diff, probability, kl_to_clean) or name yours: "
        "named_metric(fn, 'my_metric', **what_it_depends_on); or pass cache=False."
    )


def _tokens(value: int | torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(value)
    if t.dtype in (torch.float16, torch.float32, torch.float64, torch.bool) or t.ndim > 1:
        raise InvalidParameterError(f"{what} must be an int or a [batch] tensor of token ids.")
    return t


def _at(logits: torch.Tensor, position: int) -> torch.Tensor:
    if logits.ndim != 3:
        raise InvalidInputError(
            f"metrics expect logits [batch, pos, vocab]; got shape {tuple(logits.shape)}."
        )
    return logits[:, position]


def _gather(last: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    tokens = tokens.to(last.device)
    if tokens.ndim == 0:
        return last[:, tokens]
    if tokens.shape[0] != last.shape[0]:
        raise InvalidInputError(
            f"{tokens.shape[0]} answer tokens for a batch of {last.shape[0]}; pass one per "
            "example (the batched engine calls the metric on one cell's batch at a time)."
        )
    return last.gather(1, tokens[:, None])[:, 0]


def logit_diff(
    answer: int | torch.Tensor, wrong: int | torch.Tensor, position: int = -1
) -> NamedMetric:
    """``logits[:, position, answer] - logits[:, position, wrong]`` per example."""
    a, w = _tokens(answer, "answer"), _tokens(wrong, "wrong")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = _at(logits, position)
        return _gather(last, a) - _gather(last, w)

    return NamedMetric(metric, "logit_diff", {"answer": a, "wrong": w, "position": position})


def probability(answer: int | torch.Tensor, position: int = -1) -> NamedMetric:
    """``softmax(logits[:, position])[answer]`` per example."""
    a = _tokens(answer, "answer")

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return _gather(torch.softmax(_at(logits, position).double(), dim=-1), a)

    return NamedMetric(metric, "probability", {"answer": a, "position": position})


def kl_to_clean(clean_logits: torch.Tensor, position: int = -1) -> NamedMetric:
    """``KL(p_clean || p)`` in nats per example, at ``position``."""
    log_clean = torch.log_softmax(_at(clean_logits.detach(), position).double(), dim=-1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(_at(logits, position).double(), dim=-1)
        if log_p.shape != log_clean.shape:
            raise InvalidInputError(
                f"kl_to_clean was built from clean logits of batch {log_clean.shape[0]}, "
                f"and is called on a batch of {log_p.shape[0]}; build it from the same batch."
            )
        return (log_clean.exp() * (log_clean - log_p.to(log_clean.device))).sum(-1)

    return NamedMetric(metric, "kl_to_clean", {"clean_logits": log_clean, "position": position})


def check_per_example(values: object, batch: int, name: str = "metric") -> torch.Tensor:
    """``values`` as a float64 ``[batch]`` tensor, or a clear error."""
    if not isinstance(values, torch.Tensor) or values.ndim != 1 or values.shape[0] != batch:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise InvalidInputError(
            f"{name} must return one value per example (a [{batch}] tensor); got {shape}. "
            "Do not average over the batch inside the metric: dynalens averages afterwards "
            "and keeps per-example values for intervals."
        )
    return values.detach().double().cpu()
