r"""Grassberger's entropy estimator for undersampled discrete data (nats).

For counts :math:`n_i` of the occupied symbols, :math:`N = \sum_i n_i` (Grassberger 2003,
"Entropy estimates from insufficient samplings", arXiv:physics/0307138, eq. 35; revised
2008),

.. math:: \hat H_G = \log N - \frac1N \sum_i n_i\, G(n_i), \qquad
          G(n) = \psi(n) + \tfrac12 (-1)^n \big[\psi(\tfrac{n+1}{2}) - \psi(\tfrac n2)\big],

where :math:`\tfrac12[\psi(\tfrac{n+1}2) - \psi(\tfrac n2)] = \int_0^1 t^{n-1}/(1+t)\,dt`.
G(n) is Grassberger's replacement of :math:`\log n` in the plug-in estimator
:math:`\log N - \frac1N\sum n_i \log n_i`; :math:`G(1) = -\gamma - \log 2`,
:math:`G(2) = G(3) = 2 - \gamma - \log 2`, and :math:`G(n) \to \log n` for large n.

Bias: much smaller than the plug-in's :math:`-(m-1)/2N` (Miller-Madow) when many symbols
are seen once or twice; it is designed to be small for :math:`p_i \ll 1` (each symbol's
count close to Poisson) and still *downward* when most of the probability mass sits in
symbols never seen (a uniform distribution over K >> N symbols). Needs no alphabet size
and no coincidences. Mutual information: see :mod:`~dynalens.estimators.mi._counts`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dynalens.estimators.mi._counts import CountEntropyMI

__all__ = ["GrassbergerMI", "grassberger_entropy", "grassberger_g"]


def grassberger_g(n: np.ndarray) -> np.ndarray:
    """G(n) = psi(n) + (-1)^n / 2 [psi((n+1)/2) - psi(n/2)] for positive integer counts."""
    from scipy.special import digamma

    n = np.asarray(n, dtype=np.float64)
    sign = np.where(np.mod(n, 2) == 0, 1.0, -1.0)
    return digamma(n) + 0.5 * sign * (digamma((n + 1) / 2) - digamma(n / 2))


def grassberger_entropy(counts: np.ndarray) -> float:
    """Grassberger 2003 entropy (nats) of positive integer counts (1-D).

    Example:
        >>> import numpy as np
        >>> round(grassberger_entropy(np.array([1.0, 1.0, 2.0])), 4)
        1.6567
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = float(counts.sum())
    return math.log(n) - float((counts * grassberger_g(counts)).sum()) / n


class GrassbergerMI(CountEntropyMI):
    """Grassberger (2003) entropy of discrete symbols and the MI built from it (nats).

    Example:
        >>> import numpy as np
        >>> t = np.random.default_rng(0).integers(0, 1000, size=300)  # truth log 1000 = 6.91
        >>> round(GrassbergerMI().entropy(t).estimate, 2)            # plug-in: 5.51
        6.47
    """

    name = "grassberger"

    def __init__(self) -> None:
        pass

    def _entropy_counts(
        self, counts: np.ndarray, params: dict[str, Any], role: str
    ) -> tuple[float, dict[str, Any]]:
        return grassberger_entropy(counts), {}
