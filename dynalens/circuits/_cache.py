"""Cache keys and stored tables for analyses cached in a store.

A key must name what was computed, stably across sessions: parameters are described by
value (numbers, strings, cells), tensors and arrays by dtype, shape and a SHA-1 of their
bytes, metrics by their name and parameters (:func:`~dynalens.circuits.metrics.metric_key`).
Anything else (an unnamed callable, an arbitrary object) is refused with a clear error,
because keying it by its identity would silently miss or, worse, hit a stale entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dynalens.circuits.metrics import NamedMetric
from dynalens.errors import InvalidParameterError


def describe(value: Any, where: str) -> Any:
    """A JSON-able description of ``value`` that changes when what it means changes."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (torch.Tensor, np.ndarray)):
        arr = (
            value.detach().cpu().contiguous().numpy() if isinstance(value, torch.Tensor) else value
        )
        arr = np.ascontiguousarray(arr)
        digest = hashlib.sha1(arr.tobytes()).hexdigest()
        return {"array": str(arr.dtype), "shape": list(arr.shape), "sha1": digest}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, NamedMetric):
        return {"metric": value.name, "params": describe(value.params, f"{where}.params")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"class": type(value).__name__, "fields": describe(fields, where)}
    if isinstance(value, Mapping):
        return {str(k): describe(v, f"{where}[{k!r}]") for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple, range)):
        return [describe(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if callable(value):
        qual = getattr(value, "__qualname__", type(value).__name__)
        raise InvalidParameterError(
            f"{where} is a callable without a name ({qual!r}), so a cached result could not "
            "be keyed by it. Name metrics with named_metric(fn, 'name', **params) (the "
            "built-in metrics are named), or pass cache=False."
        )
    raise InvalidParameterError(
        f"{where} is a {type(value).__name__}, which cannot be part of a cache key; pass "
        "numbers, strings, tensors, arrays, sequences, dicts or named metrics, or pass "
        "cache=False."
    )


def cache_key(prefix: str, description: dict[str, Any]) -> str:
    """``prefix-<12 hex digits>`` from the JSON of ``description``."""
    text = json.dumps(description, sort_keys=True)
    return f"{prefix}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def table_to_columns(table: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A DataFrame as ``put_result`` columns plus each column's dtype (nullable integers
    go as float64 with NaN for missing, which holds every int up to 2**53 exactly; text
    and other extension columns as ``str``)."""
    cols: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name in table.columns:
        series = table[name]
        dtypes[str(name)] = str(series.dtype)
        if str(series.dtype) == "Int64":
            cols[str(name)] = series.astype("float64").to_numpy()
        elif series.dtype == object or not isinstance(series.dtype, np.dtype):
            dtypes[str(name)] = "object"  # strings, categories: stored and read back as str
            cols[str(name)] = np.array([str(v) for v in series], dtype=object)
        else:
            cols[str(name)] = series.to_numpy()
    return cols, dtypes


def table_from_columns(cols: dict[str, np.ndarray], dtypes: dict[str, str]) -> Any:
    """The inverse of :func:`table_to_columns`."""
    import pandas as pd

    out = {}
    for name, dtype in dtypes.items():
        col = cols[name]
        if dtype == "Int64":
            out[name] = pd.array(col, dtype="Float64").astype("Int64")
        elif dtype == "object":
            out[name] = np.array([str(v) for v in col], dtype=object)
        else:
            out[name] = np.asarray(col).astype(dtype)
    return pd.DataFrame(out)
