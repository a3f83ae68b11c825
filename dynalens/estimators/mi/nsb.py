r"""NSB (Nemenman-Shafee-Bialek) Bayesian entropy estimator for undersampled discrete data.

Nemenman, Shafee & Bialek 2002 ("Entropy and inference, revisited", NIPS 14). For an
alphabet of K symbols with counts :math:`n_i` (:math:`N = \sum n_i`, m occupied), a
Dirichlet(β, ..., β) prior gives the posterior mean entropy (Wolpert & Wolf 1995)

.. math:: E[H | n, β] = \psi(N + Kβ + 1) - \sum_{i=1}^{K} \frac{n_i + β}{N + Kβ}\,
          \psi(n_i + β + 1)

(empty symbols included) and the evidence
:math:`p(n|β) \propto \frac{\Gamma(Kβ)}{\Gamma(N + Kβ)} \prod_i \frac{\Gamma(n_i + β)}
{\Gamma(β)}`. A fixed β fixes the entropy before any data is seen; NSB mixes over β with
the density that makes the prior *flat in the expected entropy*
:math:`\xi(β) = \psi(Kβ + 1) - \psi(β + 1)`, i.e. :math:`p(β) \propto d\xi/dβ =
K\psi_1(Kβ + 1) - \psi_1(β + 1)`. The estimate is the one-dimensional integral

.. math:: \hat H_{NSB} = \frac{\int dβ\, \xi'(β)\, p(n|β)\, E[H|n, β]}
          {\int dβ\, \xi'(β)\, p(n|β)},

computed here on a log β grid refined around the posterior mass (trapezoid rule; agrees
with adaptive quadrature of the same integral to ~1e-6 nats, see the tests).

Bias: small as soon as there are coincidences (repeated values) even when N << K; without
coincidences the posterior is dominated by the prior and the estimate is close to log K.
Needs the alphabet size K (``alphabet_size``): for a binned layer of a network evaluated
on a finite input set, K is at most the number of distinct inputs. Mutual information:
see :mod:`~dynalens.estimators.mi._counts` (joint alphabet :math:`K_x K_y`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dynalens.errors import EstimatorRegimeError, InvalidParameterError
from dynalens.estimators.mi._counts import CountEntropyMI, mass_window

__all__ = ["NSBMI", "nsb_entropy", "nsb_log_posterior"]

#: log beta range of the coarse grid: beyond e^18 the prior weight beta xi'(beta) ~ 1/beta
#: leaves < 1e-7 of the mass, and xi'(beta) is a difference lost to rounding
LOG_BETA = (-30.0, 18.0)


def _trigamma(x: np.ndarray) -> np.ndarray:
    from scipy.special import polygamma

    return polygamma(1, x)


def nsb_log_posterior(
    beta: np.ndarray, counts: np.ndarray, k: float
) -> tuple[np.ndarray, np.ndarray]:
    """(log of xi'(beta) p(n|beta) * beta, E[H|n,beta]) on an array of beta; the factor
    beta is the Jacobian of integrating over log beta."""
    from scipy.special import digamma, gammaln

    b = np.asarray(beta, dtype=np.float64)[:, None]
    uc, mult = np.unique(counts, return_counts=True)
    n, m = float(counts.sum()), float(counts.size)
    kb = k * b[:, 0]
    loglik = gammaln(kb) - gammaln(n + kb) + (mult * (gammaln(uc + b) - gammaln(b))).sum(1)
    dxi = k * _trigamma(kb + 1) - _trigamma(b[:, 0] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logw = np.where(dxi > 0, loglik + np.log(dxi) + np.log(b[:, 0]), -np.inf)
    occupied = (mult * (uc + b) * digamma(uc + b + 1)).sum(1)
    empty = (k - m) * b[:, 0] * digamma(b[:, 0] + 1)
    mean_h = digamma(n + kb + 1) - (occupied + empty) / (n + kb)
    return logw, mean_h


def nsb_entropy(counts: np.ndarray, alphabet_size: float, n_grid: int = 2000) -> float:
    """NSB posterior-mean entropy (nats) of positive counts over ``alphabet_size`` symbols.

    Example:
        >>> import numpy as np
        >>> c = np.full(50, 4.0)                      # 50 equal counts, K = 50: H ~ log 50
        >>> round(nsb_entropy(c, 50), 2)               # log 50 = 3.91
        3.91
    """
    counts = np.asarray(counts, dtype=np.float64)
    grid = np.linspace(*LOG_BETA, 801)
    logw, _ = nsb_log_posterior(np.exp(grid), counts, alphabet_size)
    lo, hi = mass_window(grid, logw)
    u = np.linspace(lo, hi, n_grid)
    logw, mean_h = nsb_log_posterior(np.exp(u), counts, alphabet_size)
    w = np.exp(logw - logw.max())
    return float(np.trapezoid(w * mean_h, u) / np.trapezoid(w, u))


def _check_alphabet(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    vals = value if isinstance(value, (tuple, list)) else (value,)
    out = []
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer)) or not v >= 2:
            raise InvalidParameterError(
                "alphabet_size must be a number of symbols >= 2, or a pair (K_x, K_y) for "
                f"mutual information; got {value!r}."
            )
        out.append(float(v))
    if len(out) not in (1, 2):
        raise InvalidParameterError(
            f"alphabet_size must be K or (K_x, K_y); got {len(out)} values ({value!r})."
        )
    return tuple(out)


class NSBMI(CountEntropyMI):
    """NSB entropy of discrete symbols over a known alphabet, and the MI built from it.

    Args:
        alphabet_size: number of possible symbols K (entropy), or ``(K_x, K_y)`` for mutual
            information (the joint alphabet is K_x K_y); one number K is used for both.
            Required: NSB's prior is defined on a finite alphabet.

    Example:
        >>> import numpy as np
        >>> t = np.random.default_rng(0).integers(0, 1000, size=300)  # truth log 1000 = 6.91
        >>> round(NSBMI(alphabet_size=1000).entropy(t).estimate, 2)  # plug-in: 5.51
        6.84
    """

    name = "nsb"

    def __init__(self, alphabet_size: int | tuple[int, int] | None = None) -> None:
        self.alphabet_size = alphabet_size

    def _check_params(self) -> dict[str, Any]:
        return {"alphabet_size": _check_alphabet(self.alphabet_size)}

    def _entropy_counts(
        self, counts: np.ndarray, params: dict[str, Any], role: str
    ) -> tuple[float, dict[str, Any]]:
        ks = params["alphabet_size"]
        if ks is None:
            raise EstimatorRegimeError(
                "method='nsb' needs the alphabet size: its Dirichlet prior lives on K "
                "symbols. Pass alphabet_size=K (or (K_x, K_y) for mutual information), e.g. "
                "the number of distinct inputs for a binned layer of a network evaluated on "
                "a finite input set, or use method='pym' (no alphabet size needed)."
            )
        kx, ky = ks if len(ks) == 2 else (ks[0], ks[0])
        k = {"x": kx, "y": ky, "(x, y)": kx * ky}.get(role, kx)
        if counts.size > k:
            raise EstimatorRegimeError(
                f"{role} has {counts.size} distinct values but alphabet_size gives K = "
                f"{k:g} symbols; K must be at least the number of values seen."
            )
        return nsb_entropy(counts, k), {"alphabet_size": k, "log_k": math.log(k)}
