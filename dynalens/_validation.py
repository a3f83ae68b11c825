"""Parameter checks for the API boundary (never inside per-step hooks).

Each check returns the value (converted where that is unambiguous) or raises
:class:`~dynalens.errors.InvalidParameterError` with what was expected, what came and
how to fix it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

import numpy as np

from dynalens.errors import InvalidInputError, InvalidParameterError, close_matches


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """An integer (not bool) within ``[min, max]``."""
    if type(value) is not int and (  # fast path: a plain int skips the ABC checks
        isinstance(value, bool) or not isinstance(value, numbers.Integral)
    ):
        raise InvalidParameterError(f"{name} must be an integer; got {_describe(value)}.")
    value = int(value)
    if min is not None and value < min:
        raise InvalidParameterError(f"{name} must be >= {min}; got {value}.")
    if max is not None and value > max:
        raise InvalidParameterError(f"{name} must be <= {max}; got {value}.")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
) -> float:
    """A finite real number within the given bounds."""
    if (
        type(value) is not float
        and type(value) is not int
        and (  # fast path: plain numbers
            isinstance(value, bool) or not isinstance(value, numbers.Real)
        )
    ):
        raise InvalidParameterError(f"{name} must be a real number; got {_describe(value)}.")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidParameterError(f"{name} must be finite; got {value}.")
    if min is not None and (value < min or (not min_inclusive and value == min)):
        op = ">=" if min_inclusive else ">"
        raise InvalidParameterError(f"{name} must be {op} {min}; got {value}.")
    if max is not None and value > max:
        raise InvalidParameterError(f"{name} must be <= {max}; got {value}.")
    return value


def check_option(name: str, value: Any, options: Collection[str]) -> str:
    """One of a fixed set of strings."""
    if not isinstance(value, str) or value not in options:
        hint = close_matches(str(value), options)
        raise InvalidParameterError(
            f"{name} must be one of {sorted(options)}; got {_describe(value)}{hint}"
        )
    return value


def check_bool(name: str, value: Any) -> bool:
    """A real bool (not 0/1, not a string)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(f"{name} must be True or False; got {_describe(value)}.")
    return bool(value)


def check_samples_shape(name: str, shape: tuple[int, ...]) -> None:
    """Samples must be an (n, d) array with n >= 1 (after (n,) became (n, 1))."""
    if len(shape) != 2:
        raise InvalidInputError(
            f"{name} must have shape (n,) or (n, d); got shape {tuple(shape)}. "
            "Flatten the feature axes first, e.g. x.reshape(len(x), -1)."
        )
    if shape[0] == 0:
        raise InvalidInputError(
            f"{name} is empty (shape {tuple(shape)}); pass at least one sample."
        )


#: an (n, d) array with fewer rows than this *and* fewer rows than columns reads as a
#: transposed (d, n) array: no estimator measures anything from so few samples
FEW_SAMPLES = 10


def check_not_transposed(name: str, shape: tuple[int, ...]) -> None:
    """Refuse an (n, d) sample array that looks like a (d, n) one (few rows, more columns)."""
    n, d = shape
    if n < d and n < FEW_SAMPLES:
        raise InvalidInputError(
            f"{name} has shape ({n}, {d}), i.e. {n} samples of {d} features each; the array "
            f"looks transposed. Samples must be rows: pass {name}.T (shape ({d}, {n})). "
            f"No estimator can measure anything from {n} samples."
        )


def as_2d_float(name: str, x: Any, *, dtype: Any = np.float64) -> np.ndarray:
    """Samples as an (n, d) float array; accepts numpy, torch, lists; (n,) becomes (n, 1)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise InvalidInputError(
            f"{name} must hold real numbers; got an array of dtype {arr.dtype}. Casting it "
            "would drop the imaginary part silently: pass the part you mean explicitly, e.g. "
            f"{name}.real, np.abs({name}), or np.column_stack([{name}.real, {name}.imag])."
        )
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InvalidInputError(
            f"{name} must hold numbers; got an array of dtype {arr.dtype}. "
            "Convert it with np.asarray(..., dtype=float) first."
        )
    if arr.ndim == 1:
        arr = arr[:, None]
    check_samples_shape(name, arr.shape)
    arr = arr.astype(dtype, copy=False)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise InvalidInputError(
            f"{name} has {bad} non-finite values (nan or inf); drop or impute them first."
        )
    return arr


def check_same_length(**arrays: Any) -> int:
    """All arrays have the same number of samples (first axis); returns it."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise InvalidInputError(
            f"inputs must have the same number of samples (rows); {shown}. "
            f"{_transposed_hint(arrays, lengths)}"
            "Pair the i-th row of each with the same sample."
        )
    return next(iter(lengths.values()))


def _transposed_hint(arrays: dict[str, Any], lengths: dict[str, int]) -> str:
    """'x looks transposed ...' when x's columns match another input's rows, else ''."""
    for name, a in arrays.items():
        shape = tuple(getattr(a, "shape", ()))
        others = [v for k, v in lengths.items() if k != name]
        if len(shape) == 2 and shape[1] in others and shape[0] not in others:
            return (
                f"{name} has shape {shape}, whose columns match the other's rows: {name} "
                f"looks transposed; pass {name}.T. "
            )
    return ""
