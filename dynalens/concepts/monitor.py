"""Concept metrics as instruments of the training loop (issue 13, §4).

:class:`ConceptMonitor` computes any concept metric on a fixed probe set
``(x, c, y)`` at the steps of a schedule and writes each value to the store's scalar
table through a recorder (``recorder.log(step, **scalars)``, as the dynamics
instruments do), under ``{prefix}.{metric}``. Its step semantics are the Recorder's:
"step s" means the parameters the training batch of step s sees, i.e. after update
s - 1. Call :meth:`ConceptMonitor.step` after each optimizer step (``fit_cbm``'s
``callback``) and it measures the next step when scheduled; the start step is measured
by :meth:`~ConceptMonitor.attach`. So live values equal the metric computed on the
Recorder's checkpoint of the same step (:func:`concept_metrics_from_checkpoints` does
that after the fact, from the store's records).

Built-in metrics (probe-based and random ones with fixed split and probe seeds, so the
curves stay comparable across steps; no bootstrap inside the loop):

- ``concept_accuracy``, ``concept_auc``: of the concept probabilities σ(concept logits)
  (:func:`~dynalens.estimators.concepts.concept_accuracy`);
- ``task_accuracy``: of the task logits (:func:`~dynalens.estimators.concepts.task_accuracy`);
- ``leakage``: the concept -> task leakage gap of the bottleneck
  (:func:`~dynalens.estimators.concepts.concept_task_leakage`, one seeded split);
- ``ois``: the Oracle Impurity Score of the bottleneck
  (:func:`~dynalens.estimators.concepts.oracle_impurity_score`, one seeded split);
- ``bypass_share``: of a hybrid model (:func:`~dynalens.estimators.concepts.bypass_share`,
  the parts' means taken over the probe set).

A metric may also be any ``fn(model, x, c, y) -> float`` (or a ``ConceptResult``). The
model must return ``(concept logits, task logits)`` from ``forward`` and the bottleneck
from ``concepts(x)`` (every model of :mod:`dynalens.concepts.models` does).

Examples
--------
>>> mon = ConceptMonitor(model, (x, c, y), ["concept_accuracy", "leakage"], every=10,
...                      recorder=rec).attach()  # doctest: +SKIP
>>> fit_cbm(model, xt, ct, yt, callback=lambda s: (rec.step(s), mon.step(s)))  # doctest: +SKIP
>>> plot_scalar_panels(rec.store, {"accuracy": ["concepts.concept_accuracy"]})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from dynalens._validation import check_int
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.probe.schedules import as_schedule

__all__ = ["METRICS", "ConceptMonitor", "concept_metrics_from_checkpoints"]

MetricFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], Any]


def _outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise InvalidInputError(
            f"{type(model).__name__}.forward must return (concept logits, task logits); got "
            f"{type(out).__name__}. Wrap the model so that it does."
        )
    return out[0].detach(), out[1].detach()


def _concept_accuracy(model: nn.Module, x: Any, c: Any, y: Any) -> float:
    from dynalens.estimators.concepts import concept_accuracy

    return concept_accuracy(c, torch.sigmoid(_outputs(model, x)[0]), n_boot=0).value


def _concept_auc(model: nn.Module, x: Any, c: Any, y: Any) -> float:
    from dynalens.estimators.concepts import concept_auc

    return concept_auc(c, torch.sigmoid(_outputs(model, x)[0]), n_boot=0).value


def _task_accuracy(model: nn.Module, x: Any, c: Any, y: Any) -> float:
    from dynalens.estimators.concepts import task_accuracy

    return task_accuracy(y, _outputs(model, x)[1], n_boot=0).value


def _leakage(model: nn.Module, x: Any, c: Any, y: Any) -> float:
    from dynalens.estimators.concepts import concept_task_leakage

    soft = model.concepts(x).detach()  # type: ignore[operator]
    return concept_task_leakage(soft, c, y, n_seeds=1, n_boot=0).value


def _ois(model: nn.Module, x: Any, c: Any, y: Any) -> float:
    from dynalens.estimators.concepts import oracle_impurity_score

    soft = model.concepts(x).detach()  # type: ignore[operator]
    return oracle_impurity_score(soft, c, n_seeds=1, n_boot=0).value


def _bypass_share(model: nn.Module, x: Any, c: Any, y: Any) -> float:
    from dynalens.estimators.concepts import bypass_share

    if not hasattr(model, "residual_values"):
        raise InvalidParameterError(
            f"bypass_share needs a hybrid model (concepts + residual, e.g. HybridCBM); got "
            f"{type(model).__name__}."
        )
    values, residual = model.concepts(x), model.residual_values(x)  # type: ignore[operator]
    return bypass_share(model.task, values, residual, y, n_boot=0).value  # type: ignore[arg-type]


#: the built-in metrics by name
METRICS: dict[str, MetricFn] = {
    "concept_accuracy": _concept_accuracy,
    "concept_auc": _concept_auc,
    "task_accuracy": _task_accuracy,
    "leakage": _leakage,
    "ois": _ois,
    "bypass_share": _bypass_share,
}


def _resolve(metrics: Sequence[str | MetricFn] | dict[str, MetricFn]) -> dict[str, MetricFn]:
    if isinstance(metrics, dict):
        items = list(metrics.items())
    else:
        if isinstance(metrics, str):
            metrics = [metrics]
        items = []
        for m in metrics:
            if isinstance(m, str):
                if m not in METRICS:
                    raise InvalidParameterError(
                        f"unknown concept metric {m!r}; built-in: {sorted(METRICS)}, or pass "
                        "a callable fn(model, x, c, y) -> float (or {name: fn})."
                    )
                items.append((m, METRICS[m]))
            elif callable(m):
                items.append((getattr(m, "__name__", "metric"), m))
            else:
                raise InvalidParameterError(f"metrics must be names or callables; got {m!r}.")
    if not items:
        raise InvalidParameterError("metrics is empty; name at least one, e.g. 'concept_accuracy'.")
    return dict(items)


def _evaluate(
    model: nn.Module, fns: dict[str, MetricFn], probe: tuple[torch.Tensor, ...]
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return {name: float(fn(model, *probe)) for name, fn in fns.items()}
    finally:
        model.train(was_training)


def _check_probe(probe: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not (isinstance(probe, (tuple, list)) and len(probe) == 3):
        raise InvalidInputError(
            "probe must be (x, c, y): inputs (n, ...), binary concepts (n, k) and labels (n,)."
        )
    x, c, y = probe
    if c.ndim != 2 or c.shape[0] != x.shape[0] or y.shape != (x.shape[0],):
        raise InvalidInputError(
            f"probe (x, c, y) needs the same n and c (n, k), y (n,); got {tuple(x.shape)}, "
            f"{tuple(c.shape)}, {tuple(y.shape)}."
        )
    return x, c, y


class ConceptMonitor:
    """Concept metrics on a fixed probe set at scheduled steps (module docstring).

    Args:
        model: the model being trained.
        probe: a fixed ``(x, c, y)``.
        metrics: names of :data:`METRICS`, callables, or ``{name: callable}``.
        every: the schedule (an int, a list of steps, a Schedule or a callable), as the
            Recorder's.
        recorder: anything with ``log(step, **scalars)`` (a Recorder); optional.
        prefix: scalar-name prefix.
        start_step: the step number of the parameters at :meth:`attach`.
    """

    def __init__(
        self,
        model: nn.Module,
        probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        metrics: Sequence[str | MetricFn] | dict[str, MetricFn] = ("concept_accuracy",),
        *,
        every: int | Iterable[int] | Callable[[int], bool] = 1,
        recorder: Any = None,
        prefix: str = "concepts",
        start_step: int = 0,
    ) -> None:
        self.model = model
        self.probe = probe
        self.metrics = metrics
        self.every = every
        self.recorder = recorder
        self.prefix = prefix
        self.start_step = start_step

    def attach(self) -> ConceptMonitor:
        """Validate, and measure the start step if it is scheduled; returns self."""
        self.fns_ = _resolve(self.metrics)
        self.probe_ = _check_probe(self.probe)
        self.schedule_ = as_schedule(self.every)
        self.history_: dict[int, dict[str, float]] = {}
        self._measure(check_int("start_step", self.start_step, min=0))
        return self

    def step(self, step: int) -> None:
        """Call after optimizer step ``step``: measures step ``step + 1`` (the parameters
        the next batch sees) when it is scheduled."""
        self._measure(step + 1)

    def _measure(self, step: int) -> None:
        if not self.schedule_(step):
            return
        values = _evaluate(self.model, self.fns_, self.probe_)
        self.history_[step] = values
        if self.recorder is not None:
            self.recorder.log(step, **{f"{self.prefix}.{k}": v for k, v in values.items()})

    def table(self) -> Any:
        """The measured values, one row per step: a pandas DataFrame with a ``step``
        column and ``{prefix}.{metric}`` columns (the scalar table's names)."""
        import pandas as pd

        rows = [
            {"step": s, **{f"{self.prefix}.{k}": v for k, v in vals.items()}}
            for s, vals in sorted(self.history_.items())
        ]
        return pd.DataFrame(rows)


def concept_metrics_from_checkpoints(
    store: Any,
    model: nn.Module,
    probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    metrics: Sequence[str | MetricFn] | dict[str, MetricFn] = ("concept_accuracy",),
    *,
    steps: Iterable[int] | None = None,
    prefix: str = "concepts",
    recorder: Any = None,
) -> Any:
    """The metrics at each checkpoint a Recorder stored (``Recorder(checkpoints=...)``):
    loads every checkpoint (or those of ``steps``) into ``model`` and evaluates; returns
    a DataFrame (``step`` and ``{prefix}.{metric}`` columns) that the figure helpers
    read like the scalar table, and logs each row to ``recorder`` (anything with
    ``log(step, **scalars)``, e.g. a Recorder of a new run) when given. ``model``'s
    parameters are restored afterwards."""
    import pandas as pd

    fns = _resolve(metrics)
    probe_ = _check_probe(probe)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    wanted = store.checkpoint_steps().tolist() if steps is None else list(steps)
    rows = []
    try:
        for s in wanted:
            store.load_checkpoint(int(s), model)
            values = _evaluate(model, fns, probe_)
            named = {f"{prefix}.{k}": v for k, v in values.items()}
            rows.append({"step": int(s), **named})
            if recorder is not None:
                recorder.log(int(s), **named)
    finally:
        model.load_state_dict(saved)
    return pd.DataFrame(rows)
