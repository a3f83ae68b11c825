r"""MI of a discrete noisy channel from within-input coincidences and maximum entropy.

For discrete x (the inputs, values that repeat) and a discrete y that is *not* a function
of x (a binned layer with symbol noise), :math:`I(X;Y) = H(Y) - H(Y|X)`. When few samples
share an x value (the 12-bit task: 4096 inputs, n = 1k-10k, 0.2-2.4 samples per input)
no count-based estimator resolves :math:`H(Y|X)` from the joint counts: the noise tail of
:math:`p(y|x)` is all singletons, and plug-in, Grassberger, Chao-Shen and PYM on the joint
all put :math:`H(Y|X)` 0.6-0.8 nats low at n = 10k (measured, benchmarks/bench_mi.py).
What the repeats *do* resolve is the index of coincidence. For each x seen
:math:`n_x \ge 2` times, the U-statistic

.. math:: \hat c_x = \sum_y \frac{n_{xy}(n_{xy} - 1)}{n_x (n_x - 1)}

is unbiased for :math:`c(x) = \sum_y p(y|x)^2`; pooled, :math:`\bar c = \sum_x w_x \hat
c_x` with :math:`w_x \propto n_x`. Two facts turn :math:`\bar c` into an entropy:

* among distributions on :math:`K` symbols with index of coincidence :math:`c`, the
  Shannon entropy is largest for one large mass :math:`p` and :math:`K - 1` equal ones
  :math:`q = (1 - p)/(K - 1)` (Harremoës & Topsøe 2001, "Inequalities between entropy and
  index of coincidence derived from information diagrams", IEEE Trans. Inf. Theory 47:2944),
  with :math:`p^2 + (1 - p)^2/(K - 1) = c`. :math:`\hat H(Y|X) = H_{max}(\bar c, \hat K)` is
  the maximum-entropy conditional consistent with the observed coincidences; it is exact
  for a K-ary symmetric channel (y = f(x), replaced with probability ε by a uniform
  symbol: the bench task) and for any binary y, and an over-estimate of :math:`H(Y|X)`
  (so :math:`\hat I` low) for other channels;
* :math:`H(Y|x) \ge H_2(Y|x) = -\log c(x)` and, by Jensen, :math:`H(Y|X) \ge -\log \bar c`:
  the upper bound :math:`\hat H(Y) + \log \bar c` on I needs no channel assumption.

:math:`\hat K` is the bias-corrected Chao1 richness of y, :math:`m + f_1(f_1 - 1)/(2(f_2 +
1))` (Chao 1987, Biometrics 43:783), and :math:`\hat H(Y)` is chosen by the coverage of y's
counts like ``auto`` does (Chao-Shen below 0.5, Grassberger below 0.99, plug-in above).
The lower bound is :math:`\max(0, \hat H(Y) - \log \hat K)`.

Measured on the binned tanh layers 0, 2, 4 of the 12-bit task with symbol noise 0.1
(tests/estimators/test_coincidence.py): |error| 0.05 / 0.34 / 0.28 nats at n = 1000 (the
plug-in: 0.44 / 0.01 / 0.67) and 0.04 / 0.11 / 0.02 at n = 10k (plug-in 0.74 / 0.74 / 0.75).

Valid when: y is a noisy channel output of x with a symmetric (or binary) noise and some x
values repeat (at least ``min_repeated`` of them); refused otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dynalens._validation import check_int
from dynalens.errors import EstimatorRegimeError
from dynalens.estimators.mi._base import MIEstimator, MIResult, Variable, symbols
from dynalens.estimators.mi._counts import (
    COVERAGE_CHAO_SHEN,
    COVERAGE_WELL_SAMPLED,
    coincidences,
    counts_of,
)

__all__ = [
    "MIN_REPEATED",
    "CoincidenceMI",
    "chao1_richness",
    "max_entropy_at_coincidence",
    "pooled_coincidence",
]


#: fewest x values seen twice or more that ``coincidence`` (and ``auto``'s choice of it) needs
MIN_REPEATED = 20


def max_entropy_at_coincidence(c: float, k: float) -> float:
    """Largest Shannon entropy (nats) of a distribution on ``k`` symbols whose index of
    coincidence sum p_i^2 is ``c`` (Harremoës & Topsøe 2001): one mass p, k - 1 masses q.

    Example:
        >>> round(max_entropy_at_coincidence(0.5, 2.0), 4)     # a fair coin: log 2
        0.6931
    """
    from scipy.optimize import brentq

    if k < 2 or c >= 1.0:
        return 0.0
    if c <= 1.0 / k:
        return math.log(k)
    p = brentq(lambda p: p * p + (1 - p) ** 2 / (k - 1) - c, 1.0 / k, 1.0, xtol=1e-15)
    q = (1.0 - p) / (k - 1)
    h = -p * math.log(p) if p > 0 else 0.0
    return h - (1.0 - p) * math.log(q) if q > 0 else h


def chao1_richness(counts: np.ndarray) -> float:
    """Bias-corrected Chao1 estimate of the number of symbols, m + f1 (f1 - 1) / (2 (f2 + 1)).

    Example:
        >>> import numpy as np
        >>> chao1_richness(np.array([1.0, 1.0, 1.0, 2.0, 5.0]))
        6.5
    """
    f1, f2 = float((counts == 1).sum()), float((counts == 2).sum())
    return float(counts.size) + f1 * (f1 - 1.0) / (2.0 * (f2 + 1.0))


def pooled_coincidence(sx: torch.Tensor, sy: torch.Tensor) -> tuple[float, int]:
    """(c̄, number of x values seen twice or more): the within-x index of coincidence
    sum_y p(y|x)^2 by its U-statistic per x, averaged with weights n_x."""
    from dynalens.kernels.binning import pattern_symbols

    nx = torch.bincount(sx).to(torch.float64)
    joint = pattern_symbols(torch.stack([sx, sy], dim=1))
    first = torch.zeros(int(joint.max()) + 1, dtype=torch.long).scatter_(0, joint, sx)
    nxy = torch.bincount(joint).to(torch.float64)
    same = torch.zeros_like(nx).index_add_(0, first, nxy * (nxy - 1.0))
    rep = nx >= 2
    if not bool(rep.any()):
        return math.nan, 0
    cx = same[rep] / (nx[rep] * (nx[rep] - 1.0))
    return float((nx[rep] * cx).sum() / nx[rep].sum()), int(rep.sum())


def _entropy_by_coverage(counts: np.ndarray) -> tuple[float, str]:
    from dynalens.estimators.mi.chao_shen import chao_shen_entropy
    from dynalens.estimators.mi.grassberger import grassberger_entropy

    cov = coincidences(counts)["coverage"]
    if cov < COVERAGE_CHAO_SHEN and counts.size < counts.sum():
        return chao_shen_entropy(counts), "chao_shen"
    if cov < COVERAGE_WELL_SAMPLED:
        return grassberger_entropy(counts), "grassberger"
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum()), "plug-in"


class CoincidenceMI(MIEstimator):
    """I(x; y) = H(y) - H(y | x), H(y | x) the maximum entropy at the within-x index of
    coincidence (nats; see the module docstring). y is the channel output of x.

    Args:
        min_repeated: fewest x values seen at least twice (the coincidences come from them).

    Example:
        >>> from dynalens.datasets.mi_tasks import binned_layer_task
        >>> x, t, truth = binned_layer_task(10000, layer=4, noise=0.1, seed=4)
        >>> round(truth, 2), round(CoincidenceMI().estimate(x, t).estimate, 2)
        (3.8, 3.78)
    """

    name = "coincidence"
    symmetric = False

    def __init__(self, min_repeated: int = MIN_REPEATED) -> None:
        self.min_repeated = min_repeated

    def _check_params(self) -> dict[str, Any]:
        return {"min_repeated": check_int("min_repeated", self.min_repeated, min=1)}

    def _estimate(self, vx: Variable, vy: Variable, params: dict[str, Any]) -> MIResult:
        for v in (vx, vy):
            if not v.discrete:
                raise EstimatorRegimeError(
                    f"method='coincidence' needs discrete x and y, but {v.name} is "
                    f"continuous. Pass {v.name}_discrete=True if its values are symbols, or "
                    "use method='ksg' (or noise_var=... for a Gaussian-noise layer)."
                )
        sx, sy = symbols(vx.data).cpu(), symbols(vy.data).cpu()
        c_bar, repeated = pooled_coincidence(sx, sy)
        if repeated < params["min_repeated"]:
            raise EstimatorRegimeError(
                f"method='coincidence' estimates H(y|x) from x values seen twice or more, "
                f"but only {repeated} of them occur (min_repeated = "
                f"{params['min_repeated']}). Collect more samples per input, or use "
                "method='grassberger' / 'binning' (which then cannot resolve H(y|x) either)."
            )
        counts = counts_of(sy)
        h_y, h_y_method = _entropy_by_coverage(counts)
        k = max(chao1_richness(counts), 2.0)
        h_cond = max_entropy_at_coincidence(c_bar, k)
        upper = h_y + math.log(c_bar) if c_bar > 0 else h_y
        details = {
            "h_y": h_y,
            "h_y_method": h_y_method,
            "h_y_given_x": h_cond,
            "coincidence": c_bar,
            "repeated_x_values": repeated,
            "alphabet_chao1": k,
            "bounds": "lower: H(y) - log K; upper: H(y) + log c (Renyi-2 <= Shannon, Jensen)",
        }
        lower = max(0.0, h_y - math.log(k))
        return self._result(h_y - h_cond, vx.n, params, lower=lower, upper=upper, details=details)
