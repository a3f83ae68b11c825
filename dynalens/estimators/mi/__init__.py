"""Mutual-information and entropy estimators (nats), one module per method.

Functional entry points :func:`mutual_information` and :func:`entropy`; one class per
method with the scikit-learn contract (parameters in ``__init__``, ``estimate(x, y)``
returning an :class:`MIResult`). Which estimator for which question: see
:mod:`dynalens.estimators.mi.auto` and the package README.
"""

from __future__ import annotations

from typing import Any, Literal, overload

from dynalens.errors import InvalidParameterError, close_matches
from dynalens.estimators.mi._base import ArrayLike, BinningWarning, MIEstimator, MIResult
from dynalens.estimators.mi._cost import cost_limits
from dynalens.estimators.mi.adaptive_binning import AdaptiveBinningMI
from dynalens.estimators.mi.auto import NOISE_METHODS, REGISTRY, AutoMI, select_method
from dynalens.estimators.mi.binning import BinningMI
from dynalens.estimators.mi.chao_shen import ChaoShenMI
from dynalens.estimators.mi.coincidence import CoincidenceMI
from dynalens.estimators.mi.gaussian import GaussianCopulaMI, GaussianMI
from dynalens.estimators.mi.grassberger import GrassbergerMI
from dynalens.estimators.mi.kde import KDEMI
from dynalens.estimators.mi.ksg import KSGMI
from dynalens.estimators.mi.lossy import LossyMI
from dynalens.estimators.mi.neural import MINE, InfoNCE
from dynalens.estimators.mi.noisy import NoisyChannelMI
from dynalens.estimators.mi.nsb import NSBMI
from dynalens.estimators.mi.observed import ObservedNoisyMI
from dynalens.estimators.mi.pym import PYMMI
from dynalens.estimators.mi.renyi import CauchySchwarzQMI, RenyiMI
from dynalens.estimators.mi.zero_split import ZeroSplitMI

__all__ = [
    "KDEMI",
    "KSGMI",
    "METHODS",
    "MINE",
    "NSBMI",
    "PYMMI",
    "AdaptiveBinningMI",
    "AutoMI",
    "BinningMI",
    "BinningWarning",
    "CauchySchwarzQMI",
    "ChaoShenMI",
    "CoincidenceMI",
    "GaussianCopulaMI",
    "GaussianMI",
    "GrassbergerMI",
    "InfoNCE",
    "LossyMI",
    "MIEstimator",
    "MIResult",
    "NoisyChannelMI",
    "ObservedNoisyMI",
    "RenyiMI",
    "ZeroSplitMI",
    "cost_limits",
    "entropy",
    "make_estimator",
    "mutual_information",
    "select_method",
]

#: every method name accepted by ``method=``
METHODS = ("auto", *REGISTRY)


def make_estimator(
    method: str, noise_var: float | None = None, params: dict[str, Any] | None = None
) -> MIEstimator:
    """Instantiate the estimator class registered as ``method`` with ``params``."""
    params = dict(params or {})
    if method == "auto":
        return AutoMI(noise_var=noise_var, params=params)
    if method not in REGISTRY:
        raise InvalidParameterError(
            f"unknown method {method!r}{close_matches(str(method), METHODS)} "
            f"Methods: {', '.join(METHODS)}."
        )
    cls = REGISTRY[method]
    if noise_var is not None:
        if method not in NOISE_METHODS:
            raise InvalidParameterError(
                f"noise_var is used by the methods {', '.join(NOISE_METHODS)} (a stochastic "
                f"layer); method={method!r} ignores it. Drop noise_var or pick one of those."
            )
        params["noise_var"] = noise_var
    valid = cls._param_names()
    unknown = [k for k in params if k not in valid]
    if unknown:
        hint = close_matches(unknown[0], valid)
        raise InvalidParameterError(
            f"method={method!r} has no parameter {unknown[0]!r}{hint} "
            f"Its parameters: {', '.join(valid)}."
        )
    return cls(**params)


@overload
def mutual_information(
    x: ArrayLike,
    y: ArrayLike,
    *,
    method: str = ...,
    x_discrete: bool | None = ...,
    y_discrete: bool | None = ...,
    noise_var: float | None = ...,
    return_result: Literal[False] = ...,
    **params: Any,
) -> float: ...
@overload
def mutual_information(
    x: ArrayLike,
    y: ArrayLike,
    *,
    method: str = ...,
    x_discrete: bool | None = ...,
    y_discrete: bool | None = ...,
    noise_var: float | None = ...,
    return_result: Literal[True],
    **params: Any,
) -> MIResult: ...
def mutual_information(
    x: ArrayLike,
    y: ArrayLike,
    *,
    method: str = "auto",
    x_discrete: bool | None = None,
    y_discrete: bool | None = None,
    noise_var: float | None = None,
    return_result: bool = False,
    **params: Any,
) -> float | MIResult:
    """Estimate I(x; y) in nats.

    Args:
        x, y: samples paired by row; numpy arrays or torch tensors, shape (n,) or (n, d).
            With ``noise_var``, x is the conditioning variable (inputs or labels) and y the
            *clean* activations of the layer the noise is added to.
        method: ``"auto"`` (see :func:`select_method`) or one of :data:`METHODS`.
        x_discrete, y_discrete: whether a variable takes finitely many values; ``None``
            detects it the same way whatever the dtype: integer/bool dtype, or floats
            whose every column is whole-valued or binary (0.0/1.0 patterns are discrete).
        noise_var: variance of isotropic Gaussian noise added to y (stochastic layer);
            selects the known-channel estimator under ``"auto"``.
        return_result: return the full :class:`MIResult` (bounds, s.e., chosen method)
            instead of the float.
        **params: parameters of the chosen estimator class (e.g. ``k=5`` for ksg).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=2000); y = x + rng.normal(size=2000)
        >>> round(mutual_information(x, y), 1)         # KSG; truth 0.35 nats
        0.3
    """
    est = make_estimator(method, noise_var, params)
    res = est.estimate(x, y, x_discrete=x_discrete, y_discrete=y_discrete)
    return res if return_result else res.estimate


def entropy(
    x: ArrayLike,
    *,
    method: str = "auto",
    discrete: bool | None = None,
    noise_var: float | None = None,
    return_result: bool = False,
    **params: Any,
) -> float | MIResult:
    """Estimate the entropy of x in nats (differential entropy for continuous x).

    ``"auto"``: plug-in for discrete x, Kozachenko-Leonenko kNN (``ksg``) for continuous
    x, the Gaussian-mixture entropy of x + N(0, noise_var I) (``noisy``) when noise_var is
    given. Other methods: ``binning``, ``adaptive_binning``, ``gaussian``, ``kde``
    (Kolchinsky-Tracey bounds), ``renyi`` (not Shannon).
    """
    est = make_estimator(method, noise_var, params)
    res = est.entropy(x, discrete=discrete)
    return res if return_result else res.estimate
