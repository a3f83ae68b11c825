"""Conformance check for mutual-information estimators (:func:`check_estimator`).

Every estimator class of :mod:`dynalens.estimators.mi` runs it in the test suite; a new
estimator passes it before it is registered. It checks the scikit-learn contract
(``__init__`` stores parameters only; ``get_params`` / ``repr`` / ``set_params``), the
result record (a finite float in nats, the method name, the sample count), determinism,
symmetry where the class declares it, and that malformed inputs raise
:class:`~dynalens.errors.InvalidInputError`.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from dynalens.errors import InvalidInputError, InvalidParameterError

__all__ = ["check_estimator", "default_data"]


def default_data(n: int = 400, d: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated continuous Gaussians (n, d) x (n, d), I = -d/2 log(1 - 0.36) = 0.45 d."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = 0.6 * x + 0.8 * rng.normal(size=(n, d))
    return x, y


def _fail(est: Any, what: str) -> AssertionError:
    return AssertionError(f"check_estimator({type(est).__name__}): {what}")


def check_estimator(est: Any, data: tuple[Any, Any] | None = None, *, atol: float = 1e-6) -> None:
    """Run the conformance checks on an estimator instance; raise AssertionError on failure.

    Args:
        est: an instance of an :class:`~dynalens.estimators.MIEstimator` subclass,
            configured cheaply enough to run a few times.
        data: a valid ``(x, y)`` pair for it; correlated Gaussians by default.
        atol: tolerance of the symmetry and determinism checks.
    """
    from dynalens.estimators.mi._base import MIEstimator, MIResult

    if not isinstance(est, MIEstimator):
        raise _fail(est, "is not an MIEstimator subclass instance")
    cls = type(est)
    # __init__ stores parameters only, under their own names
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    params = est.get_params()
    if sorted(params) != sorted(names):
        raise _fail(est, f"get_params() keys {sorted(params)} != __init__ parameters {names}")
    fresh = cls(**params)
    public = {k: v for k, v in vars(fresh).items() if not k.startswith("_")}
    if sorted(public) != sorted(names):
        raise _fail(est, f"__init__ sets attributes {sorted(public)}; expected exactly {names}")
    text = repr(est)
    if not text.startswith(cls.__name__ + "(") or any(f"{k}=" not in text for k in names):
        raise _fail(est, f"repr {text!r} does not show the class and every parameter")
    try:
        est.set_params(no_such_parameter=1)
    except InvalidParameterError:
        pass
    else:
        raise _fail(est, "set_params accepted an unknown parameter")
    if not isinstance(getattr(cls, "name", None), str) or cls.name == "base":
        raise _fail(est, "has no registry name (class attribute 'name')")

    x, y = default_data() if data is None else data
    before = repr(est.get_params())
    res = est.estimate(x, y)
    if not isinstance(res, MIResult):
        raise _fail(est, f"estimate returned {type(res).__name__}, not MIResult")
    if not isinstance(res.estimate, float) or not math.isfinite(res.estimate):
        raise _fail(est, f"estimate {res.estimate!r} is not a finite float")
    wrong_method = res.method != cls.name and cls.name != "auto"  # auto names its choice
    if res.units != "nats" or wrong_method or res.n != len(x):
        raise _fail(est, f"record has units={res.units}, method={res.method}, n={res.n}")
    if float(res) != res.estimate:
        raise _fail(est, "float(result) differs from result.estimate")
    for bound in (res.lower, res.upper, res.stderr):
        if bound is not None and not math.isfinite(bound):
            raise _fail(est, f"non-finite bound or standard error {bound!r}")
    if repr(est.get_params()) != before:
        raise _fail(est, "estimate() changed the constructor parameters")
    again = est.estimate(x, y)
    if abs(again.estimate - res.estimate) > atol:
        raise _fail(est, f"not deterministic: {res.estimate} then {again.estimate}")
    if cls.symmetric:
        swapped = est.estimate(y, x).estimate
        if abs(swapped - res.estimate) > atol * max(1.0, abs(res.estimate)):
            raise _fail(est, f"declared symmetric but I(x;y)={res.estimate}, I(y;x)={swapped}")
    # malformed inputs are refused with InvalidInputError
    x_arr = np.asarray(x, dtype=float)
    y_arr = np.asarray(y, dtype=float)
    nan_x = x_arr.copy()
    nan_x.flat[0] = np.nan
    bad = {
        "3-D x": (x_arr.reshape(len(x_arr), -1)[:, :, None].repeat(2, axis=2), y_arr),
        "length mismatch": (x_arr[:-1], y_arr),
        "nan in x": (nan_x, y_arr),
        "empty x": (x_arr[:0], y_arr[:0]),
        "strings": (np.array(["a"] * len(x_arr)), y_arr),
    }
    for what, (bx, by) in bad.items():
        try:
            est.estimate(bx, by)
        except InvalidInputError:
            continue
        except Exception as exc:
            msg = f"{what}: raised {type(exc).__name__} ({exc}), not InvalidInputError"
            raise _fail(est, msg) from exc
        raise _fail(est, f"{what}: accepted malformed input")
