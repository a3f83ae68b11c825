"""Shared plumbing of the mutual-information estimators: the result record, the
scikit-learn-style base class, input conversion and discreteness detection.

Every estimator in :mod:`dynalens.estimators.mi` subclasses :class:`MIEstimator`:
``__init__`` stores parameters only, :meth:`MIEstimator.estimate` validates them and the
data once and returns an :class:`MIResult` in nats. The functional entry points call the
same private ``_estimate`` so the two APIs cannot drift apart.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from dynalens._validation import (
    as_2d_float,
    check_not_transposed,
    check_same_length,
    check_samples_shape,
)
from dynalens.errors import InvalidInputError, InvalidParameterError

__all__ = [
    "ArrayLike",
    "BinningWarning",
    "MIEstimator",
    "MIResult",
    "Variable",
    "as_variable",
    "is_discrete",
]

#: numpy arrays, torch tensors or nested lists of numbers, shape (n,) or (n, d)
ArrayLike = Any


class BinningWarning(UserWarning):
    """The estimate measures the discretisation more than the data (e.g. every sample
    fell into its own bin, so the plug-in entropy is log n whatever the distribution)."""


@dataclass(frozen=True)
class MIResult:
    """What an estimator returns: the number and what it means.

    Attributes:
        estimate: the point estimate, in ``units``.
        method: the registry name of the estimator that produced it (``"ksg"``, ...).
        units: ``"nats"`` for every estimator of this package.
        quantity: ``"shannon"`` for Shannon mutual information / entropy; ``"renyi"`` or
            ``"cauchy-schwarz"`` for the kernel dependence measures, which are *not*
            Shannon quantities and must not be plotted on a Shannon information plane.
        lower, upper: bounds where the method has them (``None`` otherwise). For Monte
            Carlo bounds they hold in expectation; see the method's docstring.
        stderr: a standard error where the method has one (Monte Carlo error,
            permutation spread), else ``None``.
        n: number of samples used.
        params: the parameters used, after defaults and automatic choices.
        details: method-specific diagnostics (permutation baseline, chosen bins,
            explained variance of a compression, the reason ``auto`` chose a method, ...).
    """

    estimate: float
    method: str
    units: str = "nats"
    quantity: str = "shannon"
    lower: float | None = None
    upper: float | None = None
    stderr: float | None = None
    n: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.estimate)

    def __repr__(self) -> str:
        parts = [f"{self.estimate:.4f} {self.units}", f"method={self.method!r}"]
        if self.quantity != "shannon":
            parts.append(f"quantity={self.quantity!r}")
        if self.lower is not None or self.upper is not None:
            lo = "-" if self.lower is None else f"{self.lower:.4f}"
            hi = "-" if self.upper is None else f"{self.upper:.4f}"
            parts.append(f"bounds=[{lo}, {hi}]")
        if self.stderr is not None:
            parts.append(f"stderr={self.stderr:.4f}")
        parts.append(f"n={self.n}")
        return "MIResult(" + ", ".join(parts) + ")"


# --------------------------------------------------------------------------- inputs


@dataclass
class Variable:
    """One validated input: an (n, d) tensor plus whether it is discrete."""

    name: str
    data: torch.Tensor
    discrete: bool
    raw_integer: bool

    @property
    def n(self) -> int:
        return int(self.data.shape[0])

    @property
    def d(self) -> int:
        return int(self.data.shape[1])


#: floats at or beyond this magnitude are all whole numbers, so there wholeness says nothing
WHOLE_LIMIT = 2.0**52


def discrete_columns(t: torch.Tensor) -> torch.Tensor:
    """Per column (bool, (d,)): every value a whole number (below 2**52 in magnitude, as an
    integer dtype would hold it) or exactly two distinct values (binary, e.g. 0.1 / 0.9)."""
    whole = ((t == torch.round(t)) & (t.abs() < WHOLE_LIMIT)).all(0)
    lo, hi = t.min(0, keepdim=True).values, t.max(0, keepdim=True).values
    binary = ((t == lo) | (t == hi)).all(0) & (lo < hi)[0]
    return whole | binary


def _as_tensor(name: str, x: ArrayLike) -> tuple[torch.Tensor, bool]:
    """(n, d) float64 tensor on x's device, and whether x had an integer/bool dtype."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        integer = not (t.is_floating_point() or t.is_complex())
        if t.is_complex():
            raise InvalidInputError(
                f"{name} must hold real numbers; got a tensor of dtype {t.dtype}. Casting it "
                "would drop the imaginary part silently: pass the part you mean explicitly, "
                f"e.g. {name}.real, {name}.abs(), or torch.cat([{name}.real, {name}.imag], 1)."
            )
        if t.ndim == 1:
            t = t[:, None]
        check_samples_shape(name, tuple(t.shape))
        check_not_transposed(name, tuple(t.shape))
        dtype = torch.float32 if t.device.type == "cuda" else torch.float64
        t = t.to(dtype)
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise InvalidInputError(
                f"{name} has {bad} non-finite values (nan or inf); drop or impute them first."
            )
        return t, integer
    raw = np.asarray(x) if not hasattr(x, "detach") else x
    integer = isinstance(raw, np.ndarray) and (
        np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.bool_
    )
    arr = as_2d_float(name, x)
    check_not_transposed(name, arr.shape)
    return torch.from_numpy(np.ascontiguousarray(arr)), bool(integer)


def is_discrete(t: torch.Tensor, integer_dtype: bool) -> bool:
    """The documented rule, the same whatever the dtype: integer/bool dtype, or floats whose
    every column is whole-valued or binary (:func:`discrete_columns`), so 0.0/1.0 patterns
    stored as float are discrete exactly as the same patterns stored as int are."""
    if integer_dtype:
        return True
    return bool(discrete_columns(t).all())


def as_variable(name: str, x: ArrayLike, discrete: bool | None) -> Variable:
    """Validate one input and decide whether it is discrete (``None`` = detect)."""
    t, integer = _as_tensor(name, x)
    if discrete is None:
        flag = is_discrete(t, integer)
    elif isinstance(discrete, (bool, np.bool_)):
        flag = bool(discrete)
    else:
        raise InvalidParameterError(
            f"{name}_discrete must be True, False or None (detect); got {discrete!r}."
        )
    return Variable(name=name, data=t, discrete=flag, raw_integer=integer)


def as_pair(
    x: ArrayLike, y: ArrayLike, x_discrete: bool | None, y_discrete: bool | None
) -> tuple[Variable, Variable]:
    """Validate both inputs, check they pair up row by row and share a device."""
    vx = as_variable("x", x, x_discrete)
    vy = as_variable("y", y, y_discrete)
    check_same_length(x=vx.data, y=vy.data)
    if vx.data.device != vy.data.device:
        raise InvalidInputError(
            f"x is on {vx.data.device} and y on {vy.data.device}; move both to one device."
        )
    if vx.data.dtype != vy.data.dtype:
        vy.data = vy.data.to(vx.data.dtype)
    return vx, vy


def symbols(t: torch.Tensor) -> torch.Tensor:
    """Dense id (0..m-1) per distinct row of t, as a LongTensor of shape (n,)."""
    from dynalens.kernels.binning import pattern_symbols

    codes = torch.stack(
        [torch.unique(t[:, j], return_inverse=True)[1] for j in range(t.shape[1])], dim=1
    )
    return pattern_symbols(codes)


def plugin_entropy(sym: torch.Tensor, correction: str = "none") -> tuple[float, int]:
    """Plug-in entropy -sum p log p (nats) of a symbol array, optionally Miller-Madow
    corrected (+ (m - 1) / 2n, m = number of occupied symbols). Returns (H, m)."""
    counts = torch.bincount(sym).to(torch.float64)
    counts = counts[counts > 0]
    n = float(counts.sum())
    h = math.log(n) - float((counts * torch.log(counts)).sum()) / n
    m = int(counts.numel())
    if correction == "miller_madow":
        h += (m - 1) / (2.0 * n)
    return h, m


def standardize(t: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per column; constant columns become 0 (not NaN)."""
    mu = t.mean(0, keepdim=True)
    sd = t.std(0, keepdim=True) if t.shape[0] > 1 else torch.ones_like(mu)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    return (t - mu) / sd


# --------------------------------------------------------------------------- base class


class MIEstimator:
    """Base class: scikit-learn contract (``__init__`` stores parameters only).

    Subclasses set ``name``, ``symmetric`` (whether I(x; y) == I(y; x) by construction),
    ``quantity``, implement ``_check_params() -> dict`` (validate and resolve the
    parameters) and ``_estimate(vx, vy, params) -> MIResult``; estimators that also give
    entropies implement ``_entropy(v, params)``.
    """

    name: ClassVar[str] = "base"
    symmetric: ClassVar[bool] = True
    quantity: ClassVar[str] = "shannon"
    supports_entropy: ClassVar[bool] = False

    # -- sklearn-like parameter handling
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters, by name (as passed, before validation)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> MIEstimator:
        """Set constructor parameters by name; returns self."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                from dynalens.errors import close_matches

                raise InvalidParameterError(
                    f"{type(self).__name__} has no parameter {key!r}"
                    f"{close_matches(key, valid)} Parameters: {', '.join(valid)}."
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the contract
    def _check_params(self) -> dict[str, Any]:
        return {}

    def estimate(
        self,
        x: ArrayLike,
        y: ArrayLike,
        *,
        x_discrete: bool | None = None,
        y_discrete: bool | None = None,
    ) -> MIResult:
        """Estimate I(x; y) in nats.

        Args:
            x, y: samples paired by row, numpy or torch, shape (n,) or (n, d).
            x_discrete, y_discrete: whether each variable takes finitely many values;
                ``None`` detects it (integer/bool dtype, or floats whose every column is
                whole-valued or binary).
        """
        params = self._check_params()
        vx, vy = as_pair(x, y, x_discrete, y_discrete)
        return self._estimate(vx, vy, params)

    def entropy(self, x: ArrayLike, *, discrete: bool | None = None) -> MIResult:
        """Estimate the (differential, for continuous x) entropy of x in nats."""
        if not self.supports_entropy:
            raise InvalidParameterError(
                f"{type(self).__name__} estimates mutual information only; for an entropy "
                "use method 'binning', 'ksg', 'gaussian', 'kde', 'noisy' or 'renyi'."
            )
        params = self._check_params()
        return self._entropy(as_variable("x", x, discrete), params)

    def _estimate(self, vx: Variable, vy: Variable, params: dict[str, Any]) -> MIResult:
        raise NotImplementedError

    def _entropy(self, v: Variable, params: dict[str, Any]) -> MIResult:
        raise NotImplementedError

    def _result(
        self, estimate: float, n: int, params: Mapping[str, Any], **fields: Any
    ) -> MIResult:
        if not math.isfinite(estimate):
            raise AssertionError(  # an internal bug, never a user error
                f"{type(self).__name__} produced a non-finite estimate {estimate}; "
                "please report this with the input that caused it."
            )
        return MIResult(
            estimate=float(estimate),
            method=self.name,
            quantity=self.quantity,
            n=n,
            params=dict(params),
            **fields,
        )


def warn_binning(message: str) -> None:
    """Emit a :class:`BinningWarning` pointing at the caller of the public API."""
    warnings.warn(message, BinningWarning, stacklevel=5)
