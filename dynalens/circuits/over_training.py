"""Any circuits analysis over the checkpoints a run stored: one table, step x component.

The Recorder stores the model's ``state_dict()`` on a schedule
(``Recorder(checkpoints=LogSpaced(...))``, :mod:`dynalens.probe.checkpoints`).
:func:`over_training` loads each stored step's weights into a model, runs one analysis
of this package on the same inputs (activation, attribution or path patching, edge
attribution, faithfulness, per-head attention scores, or any callable returning a
result or a DataFrame) and stacks the per-component rows with a ``step`` column, so
"when did this head start to matter?" is one groupby away.

The table is cached in the store (``results/``) like the information plane: the key is
the analysis name plus a fingerprint of its inputs and parameters (tensors by their
bytes, metrics by name and parameters: :mod:`dynalens.circuits._cache`), rows are kept
per step, and a later call computes only the steps that are not cached yet (so it can
follow a run that is still recording); ``recompute=True`` computes every asked step again.
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from dynalens._optional import require
from dynalens.circuits._cache import cache_key, describe, table_from_columns, table_to_columns
from dynalens.circuits.metrics import NamedMetric
from dynalens.errors import InvalidInputError, InvalidParameterError, StepNotRecordedError
from dynalens.probe.names import check_path_name

if TYPE_CHECKING:
    import pandas as pd

    from dynalens.probe.store import Store

#: analyses by name: ``module:function`` of this package (imported when used)
ANALYSES = {
    "activation_patching": "patching:activation_patching",
    "attribution_patching": "attribution:attribution_patching",
    "edge_attribution_patching": "edges:edge_attribution_patching",
    "path_patching": "path_patching:path_patching",
    "faithfulness": "faithfulness:faithfulness",
    "induction_scores": "induction:induction_scores",
    "previous_token_scores": "induction:previous_token_scores",
}


def _analysis(
    analysis: str | Callable[..., Any], name: str | None
) -> tuple[Callable[..., Any], str]:
    if isinstance(analysis, str):
        if analysis not in ANALYSES:
            raise InvalidParameterError(
                f"unknown analysis {analysis!r}; named analyses: {sorted(ANALYSES)}, or pass "
                "a callable fn(model, **inputs, **params) with name=."
            )
        module, fn = ANALYSES[analysis].split(":")
        return getattr(importlib.import_module(f"dynalens.circuits.{module}"), fn), name or analysis
    if not callable(analysis):
        raise InvalidParameterError(
            f"analysis must be a name ({sorted(ANALYSES)}) or a callable; got "
            f"{type(analysis).__name__}."
        )
    label = name or getattr(analysis, "__qualname__", "")
    if not label or "<" in label:  # lambdas and local functions have no stable name
        raise InvalidParameterError(
            f"the analysis callable {label or analysis!r} has no stable name to key its cache "
            "by; pass name='my_analysis'."
        )
    return analysis, label


def result_table(result: Any) -> pd.DataFrame:
    """One row per component of an analysis result (no bootstrap: means and effects).

    PatchingResult: cell columns, value, effect, normalised (NaN where undefined), mode;
    EdgeScores: sender, receiver, score, mode; Faithfulness: circuit, size, value,
    faithfulness, ablation; HeadScores: layer, head, score, name; a DataFrame as is.
    """
    from dynalens.circuits.edges import EdgeScores
    from dynalens.circuits.faithfulness import Faithfulness
    from dynalens.circuits.induction import HeadScores
    from dynalens.circuits.results import PatchingResult

    pd = require("pandas", "over_training")
    if isinstance(result, PatchingResult):
        n = len(result.cells)
        norm = result.normalised().numpy() if result.has_normalisation() else np.full(n, np.nan)
        return pd.DataFrame({
            "component": [c.component for c in result.cells],
            "site": [c.site for c in result.cells],
            "layer": np.array([c.layer for c in result.cells], dtype=np.int64),
            "position": pd.array([c.position for c in result.cells], dtype="Int64"),
            "head": pd.array([c.head for c in result.cells], dtype="Int64"),
            "value": result.mean().numpy(),
            "effect": result.effect().numpy(),
            "normalised": norm,
            "mode": result.mode,
        })  # fmt: skip
    if isinstance(result, Faithfulness):
        return pd.DataFrame({
            "circuit": np.arange(len(result.circuits), dtype=np.int64),
            "size": np.array(result.sizes(), dtype=np.int64),
            "value": result.values.mean(1).numpy(),
            "faithfulness": result.faithfulness().numpy(),
            "ablation": result.ablation,
        })  # fmt: skip
    if isinstance(result, (EdgeScores, HeadScores)):
        return result.table()
    if isinstance(result, pd.DataFrame):
        return result.reset_index(drop=True)
    raise InvalidParameterError(
        f"the analysis returned a {type(result).__name__}; over_training tabulates "
        "PatchingResult, EdgeScores, Faithfulness, HeadScores or a pandas DataFrame."
    )


def _load(store: Store, step: int, model: nn.Module) -> None:
    try:
        store.load_checkpoint(step, into=model)
    except RuntimeError as exc:  # load_state_dict: missing / unexpected keys, size mismatch
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise InvalidInputError(
            f"the checkpoint of step {step} in run {store.run!r} does not fit the "
            f"{type(model).__name__} given ({detail}). Pass the model, or a factory "
            "building it, with the architecture the run trained."
        ) from exc


def over_training(
    store: Store | str | os.PathLike[str],
    model: nn.Module | Callable[[], nn.Module],
    analysis: str | Callable[..., Any],
    inputs: Mapping[str, Any] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    steps: Sequence[int] | None = None,
    name: str | None = None,
    run: str | None = None,
    cache: bool = True,
    recompute: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Run ``analysis(model, **inputs, **params)`` at every stored checkpoint.

    Args:
        store: a :class:`~dynalens.probe.store.Store` or its path (``run`` picks the run).
        model: a module of the trained architecture (its weights and train/eval mode are
            restored afterwards) or a zero-argument factory building one.
        analysis: a name of :data:`ANALYSES` or a callable ``fn(model, **inputs,
            **params)`` returning a result :func:`result_table` knows (give it ``name=``
            when it is not a module-level function).
        inputs: the data, the same at every step (``clean``, ``corrupt``, ``batch``...).
        params: the analysis's other arguments (``metric``, ``components``, ``mode``...).
            A metric must be named (the built-ins are; see ``named_metric``) to be cached.
        steps: checkpointed steps to analyse (default: all).
        cache: read and write the table in the store; ``recompute`` ignores cached rows.
        progress: a tqdm bar over steps.

    Returns:
        A DataFrame with ``step`` first, then the result's columns (and ``metric`` when
        ``params`` holds a named metric), rows sorted by step.

    Example
    -------
    >>> table = over_training(
    ...     "run.zarr", lambda: ReferenceTransformer(cfg), "activation_patching",
    ...     {"clean": clean, "corrupt": corrupt},
    ...     params={"metric": logit_diff(answer, wrong), "components": ["head_out"],
    ...             "positions": "all"},
    ... )  # doctest: +SKIP
    >>> table.pivot_table("normalised", "step", ["layer", "head"])  # doctest: +SKIP
    """
    pd = require("pandas", "over_training")
    from dynalens.probe.store import Store, open_store  # zarr: not at package import

    st = store if isinstance(store, Store) else open_store(store, run)
    fn, label = _analysis(analysis, name)
    inputs, params = dict(inputs or {}), dict(params or {})
    both = sorted(set(inputs) & set(params))
    if both:
        raise InvalidParameterError(f"{both} given both in inputs and in params; pass each once.")
    stored = [int(s) for s in st.checkpoint_steps()]  # SiteNotFoundError: no checkpoints
    if not stored:
        raise InvalidInputError(
            f"run {st.run!r} has committed no checkpoint yet; wait for the Recorder to "
            "commit one, or check its checkpoints= schedule."
        )
    wanted = stored if steps is None else [int(s) for s in steps]
    missing = [s for s in wanted if s not in stored]
    if missing:
        raise StepNotRecordedError(
            f"steps {missing[:8]} have no checkpoint in run {st.run!r}; checkpoints: "
            f"{stored[:12]}{' ...' if len(stored) > 12 else ''}."
        )
    m = model if isinstance(model, nn.Module) else model()
    if not isinstance(m, nn.Module):
        raise InvalidParameterError(
            f"model must be an nn.Module or a factory returning one; the factory returned "
            f"{type(m).__name__}."
        )
    metric = params.get("metric", inputs.get("metric"))
    key = ""
    cached = None
    if cache:
        description = {
            "analysis": label,
            "function": f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}",
            "model": type(m).__qualname__,
        }
        description["inputs"] = describe(inputs, "inputs")
        description["params"] = describe(params, "params")
        key = cache_key(f"over_training-{check_path_name('analysis name', label)}", description)
        stored_table = st.get_result(key)
        if stored_table is not None:
            cols, attrs = stored_table
            cached = table_from_columns(cols, attrs["dtypes"])
    done = set() if cached is None or recompute else set(cached["step"].tolist())
    todo = [s for s in wanted if s not in done]
    parts = [] if cached is None else [cached[~cached["step"].isin(todo)]]
    if todo:
        parts.append(_sweep(st, m, model is m, fn, todo, inputs, params, label, metric, progress))
        table = pd.concat(parts, ignore_index=True)
        table = table.sort_values("step", kind="stable").reset_index(drop=True)
        cols, dtypes = table_to_columns(table)
        table = table_from_columns(cols, dtypes)  # what a later call reads back, exactly
        if cache:
            writable = open_store(st.path, st.run, mode="a")
            writable.put_result(key, cols, {"analysis": label, "dtypes": dtypes})
    else:
        table = parts[0]
    return table[table["step"].isin(wanted)].reset_index(drop=True)


def _sweep(
    st: Store,
    model: nn.Module,
    restore: bool,
    fn: Callable[..., Any],
    todo: list[int],
    inputs: dict[str, Any],
    params: dict[str, Any],
    label: str,
    metric: Any,
    progress: bool,
) -> pd.DataFrame:
    import pandas as pd
    from tqdm.auto import tqdm

    was_training = model.training
    saved = copy.deepcopy(model.state_dict()) if restore else None
    tables = []
    try:
        for step in tqdm(todo, desc=f"{label} over training", disable=not progress):
            _load(st, step, model)
            model.eval()
            t = result_table(fn(model, **inputs, **params))
            t.insert(0, "step", np.int64(step))
            if isinstance(metric, NamedMetric):
                t["metric"] = metric.name
            tables.append(t)
    finally:
        if saved is not None:
            model.load_state_dict(saved)
        model.train(was_training)
    return pd.concat(tables, ignore_index=True)
