r"""Chao-Shen coverage-adjusted entropy estimator for undersampled discrete data (nats).

Chao & Shen 2003 ("Nonparametric estimation of Shannon's index of diversity when there
are unseen species in sample", Environ. Ecol. Stat. 10:429). With :math:`N` samples,
:math:`f_1` symbols seen once and the Good-Turing sample coverage
:math:`\hat C = 1 - f_1/N` (:math:`f_1 = N - 1` is used when :math:`f_1 = N`), the
coverage-adjusted probabilities :math:`\tilde p_i = \hat C\, n_i / N` enter a
Horvitz-Thompson sum that weights each seen symbol by the inverse of its inclusion
probability:

.. math:: \hat H_{CS} = -\sum_i \frac{\tilde p_i \log \tilde p_i}{1 - (1 - \tilde p_i)^N}.

Bias: corrects both the unseen mass (through :math:`\hat C`) and the unequal chance of
being seen; consistent, nearly unbiased when the coverage is moderate, and *upward* biased
when almost every value is a singleton (the coverage estimate is then crude). Needs at
least one repeated value. Mutual information: see :mod:`~dynalens.estimators.mi._counts`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynalens.estimators.mi._counts import CountEntropyMI

__all__ = ["ChaoShenMI", "chao_shen_entropy"]


def chao_shen_entropy(counts: np.ndarray) -> float:
    """Chao-Shen 2003 coverage-adjusted entropy (nats) of positive integer counts (1-D).

    Example:
        >>> import numpy as np
        >>> round(chao_shen_entropy(np.array([4.0, 4.0, 4.0, 4.0])), 4)   # log 4 = 1.3863
        1.4003
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = float(counts.sum())
    f1 = float((counts == 1).sum())
    if f1 == n:
        f1 = n - 1.0
    coverage = 1.0 - f1 / n
    p = coverage * counts / n
    inclusion = -np.expm1(n * np.log1p(-p))  # 1 - (1 - p)^N, accurate for small p
    return float(-(p * np.log(p) / inclusion).sum())


class ChaoShenMI(CountEntropyMI):
    """Chao-Shen (2003) coverage-adjusted entropy and the MI built from it (nats).

    Example:
        >>> import numpy as np
        >>> t = np.random.default_rng(0).integers(0, 1000, size=300)  # truth log 1000 = 6.91
        >>> round(ChaoShenMI().entropy(t).estimate, 2)               # plug-in: 5.51
        6.96
    """

    name = "chao_shen"
    needs_coincidences = True

    def __init__(self) -> None:
        pass

    def _entropy_counts(
        self, counts: np.ndarray, params: dict[str, Any], role: str
    ) -> tuple[float, dict[str, Any]]:
        return chao_shen_entropy(counts), {}
