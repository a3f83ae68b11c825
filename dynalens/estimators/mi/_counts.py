r"""Shared plumbing of the undersampled discrete entropy estimators (``grassberger``,
``chao_shen``, ``nsb``, ``pym``): symbol counts, the coincidence structure, and mutual
information from an entropy estimator with the bias structure of the data.

Each estimator module defines ``entropy_from_counts(counts, **params) -> float`` (nats, for
a 1-D array of positive counts) and a subclass of :class:`CountEntropyMI`. Mutual
information is, in nats,

.. math:: \hat I(X;Y) = \hat H(X) + \hat H(Y) - \hat H(X, Y)
          = \hat H(Y) - [\hat H(X, Y) - \hat H(X)],

with the same entropy estimator on the three count vectors. When Y = f(X) (every value of
X occurs with one value of Y, as for a deterministic layer of a network over its inputs)
the joint and the X count vectors are the same multiset, the two estimates cancel exactly
and :math:`\hat I = \hat H(Y)`: :math:`H(Y|X) = 0` holds in the estimate, not only in
expectation (likewise X = f(Y) gives :math:`\hat H(X)`). Otherwise the conditional entropy
is estimated from the joint counts, so the estimator's bias correction acts on
:math:`H(Y|X)` as on :math:`H(Y)`. ``details`` records which case applied.

Coincidences: with no repeated value at all (every count 1) a sample says nothing about
the entropy beyond :math:`H \ge \log n`-ish; estimators that need coincidences (PYM,
Chao-Shen) refuse such data with :class:`~dynalens.errors.EstimatorRegimeError`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from dynalens.errors import EstimatorRegimeError
from dynalens.estimators.mi._base import MIEstimator, MIResult, Variable, symbols

__all__ = ["CountEntropyMI", "coincidences", "counts_of"]


def counts_of(sym: torch.Tensor) -> np.ndarray:
    """Positive counts (float64 numpy, one per occupied symbol) of a symbol array."""
    c = torch.bincount(sym).cpu().numpy().astype(np.float64)
    return c[c > 0]


def coincidences(counts: np.ndarray) -> dict[str, float]:
    """The coincidence structure of a count vector: n, occupied symbols m, singletons f1,
    doubletons f2, repeats n - m, and the Good-Turing coverage 1 - f1 / n."""
    n = float(counts.sum())
    f1 = float((counts == 1).sum())
    return {
        "n": n,
        "symbols": float(counts.size),
        "singletons": f1,
        "doubletons": float((counts == 2).sum()),
        "repeats": n - counts.size,
        "coverage": 1.0 - f1 / n if n else 0.0,
    }


def _is_function(src: torch.Tensor, dst: torch.Tensor) -> bool:
    """True when every symbol of ``src`` occurs with a single symbol of ``dst``."""
    m = int(src.max()) + 1
    lo = torch.full((m,), int(dst.max()) + 1, dtype=torch.long).scatter_reduce(
        0, src, dst, reduce="amin"
    )
    hi = torch.full((m,), -1, dtype=torch.long).scatter_reduce(0, src, dst, reduce="amax")
    return bool((lo == hi)[torch.unique(src)].all())


class CountEntropyMI(MIEstimator):
    """Base class: an entropy estimator on symbol counts, and MI from it (see module).

    Subclasses set ``name`` and ``needs_coincidences`` and implement
    :meth:`_entropy_counts` (counts, params, role) -> (H, extra details).
    """

    needs_coincidences: ClassVar[bool] = False
    symmetric = True
    supports_entropy = True

    def _entropy_counts(
        self, counts: np.ndarray, params: dict[str, Any], role: str
    ) -> tuple[float, dict[str, Any]]:
        raise NotImplementedError

    def _symbols(self, v: Variable) -> torch.Tensor:
        if not v.discrete:
            raise EstimatorRegimeError(
                f"method={self.name!r} estimates entropies of discrete symbols, but "
                f"{v.name} is continuous. Pass {v.name}_discrete=True if its values are "
                "symbols (bin indices, quantised activations), bin it first (e.g. "
                "dynalens.kernels.binning.bin_indices), or use a continuous estimator "
                "(method='ksg', or noise_var=... for a noisy layer)."
            )
        return symbols(v.data).cpu()

    def _h(
        self, sym: torch.Tensor, params: dict[str, Any], role: str
    ) -> tuple[float, dict[str, Any]]:
        counts = counts_of(sym)
        info: dict[str, Any] = dict(coincidences(counts))
        if self.needs_coincidences and info["repeats"] == 0 and counts.size > 1:
            raise EstimatorRegimeError(
                f"{role}: all {counts.size} values are distinct (no value repeats), so the "
                f"sample says nothing about the entropy beyond H >= log {counts.size}; "
                f"method={self.name!r} needs coincidences (repeated values). Collect more "
                "samples, use coarser symbols (fewer bins), or method='nsb' with a known "
                "alphabet_size."
            )
        h, extra = self._entropy_counts(counts, params, role)
        info.update(extra)
        return h, info

    def _estimate(self, vx: Variable, vy: Variable, params: dict[str, Any]) -> MIResult:
        from dynalens.kernels.binning import pattern_symbols

        sx, sy = self._symbols(vx), self._symbols(vy)
        y_of_x, x_of_y = _is_function(sx, sy), _is_function(sy, sx)
        if y_of_x or x_of_y:
            # the joint counts equal those of the determining variable: H(.|.) = 0 exactly
            which, sym = ("y", sy) if y_of_x else ("x", sx)
            h, info = self._h(sym, params, which)
            mi, structure = h, f"deterministic: {'y = f(x)' if y_of_x else 'x = f(y)'}"
            details: dict[str, Any] = {"structure": structure, f"h_{which}": h, which: info}
        else:
            sxy = pattern_symbols(torch.stack([sx, sy], dim=1))
            hx, ix = self._h(sx, params, "x")
            hy, iy = self._h(sy, params, "y")
            hxy, ixy = self._h(sxy, params, "(x, y)")
            mi = hx + hy - hxy
            details = {
                "structure": "stochastic: H(x) + H(y) - H(x, y)",
                "h_x": hx,
                "h_y": hy,
                "h_xy": hxy,
                "x": ix,
                "y": iy,
                "xy": ixy,
            }
        return self._result(mi, vx.n, params, details=details)

    def _entropy(self, v: Variable, params: dict[str, Any]) -> MIResult:
        h, info = self._h(self._symbols(v), params, v.name)
        return self._result(h, v.n, params, details=info)


def mass_window(grid: np.ndarray, logpost: np.ndarray, drop: float = 40.0) -> tuple[float, float]:
    """The interval of a 1-D grid where the log posterior is within ``drop`` nats of its
    maximum, widened by one grid step on each side (for re-gridding an integral)."""
    keep = np.nonzero(logpost >= logpost.max() - drop)[0]
    lo, hi = max(int(keep[0]) - 1, 0), min(int(keep[-1]) + 1, grid.size - 1)
    return float(grid[lo]), float(grid[hi])


#: coverage thresholds of ``auto``'s choice between the discrete estimators
COVERAGE_WELL_SAMPLED = 0.99
COVERAGE_CHAO_SHEN = 0.5
#: within-x index of coincidence above which y is read as a noisy function of x
COINCIDENCE_NOISY_FUNCTION = 0.5


def discrete_choice(vx: Variable, vy: Variable) -> tuple[str, str]:
    """(method, reason) for two discrete variables, from the coincidence structure of the
    counts whose entropy carries the MI: y's if y = f(x), x's if x = f(y), else the joint's.

    ========================  =================================================  ==========
    coverage 1 - f1 / n       regime                                             method
    ========================  =================================================  ==========
    no value repeats          nothing to estimate from: refused                  --
    < 0.5, deterministic      most samples are singletons (N << alphabet)        chao_shen
    < 0.99, joint counts,     y a noisy function of x (within-x coincidence      coincidence
    >= 20 repeated x          >= 0.5, or y binary)
    < 0.5, joint counts       H(y|x) unresolved (x values barely repeat)         binning
    0.5 .. 0.99               undersampled tail                                  grassberger
    >= 0.99                   well sampled: bias (m - 1) / 2n negligible          binning
    ========================  =================================================  ==========

    Measured on binned tanh layers of the 12-bit task (tests/estimators/
    test_undersampled.py, benchmarks/bench_mi.py): Chao-Shen has the smallest error when
    most samples are singletons, Grassberger once most values repeat. With symbol noise
    (y not a function of x) and a mostly-singleton joint, every estimator here is off by
    0.4-1 nats at n = 1000 and 0.6-0.8 nats at n = 10k (the noise tail of p(y|x) is all
    singletons in the joint); ``coincidence`` (maximum entropy at the within-x index of
    coincidence) is 0.01-0.34 off on the same cells, so it is chosen whenever enough x values
    repeat and y looks like a noisy function of x.
    """
    from dynalens.kernels.binning import pattern_symbols

    sx, sy = symbols(vx.data).cpu(), symbols(vy.data).cpu()
    if _is_function(sx, sy):
        which, sym = "y (y = f(x))", sy
    elif _is_function(sy, sx):
        which, sym = "x (x = f(y))", sx
    else:
        which, sym = "(x, y)", pattern_symbols(torch.stack([sx, sy], dim=1))
    info = coincidences(counts_of(sym))
    cov, n, m = info["coverage"], int(info["n"]), int(info["symbols"])
    what = (
        f"both discrete; the counts of {which} have {m} values in {n} samples, coverage {cov:.2f}"
    )
    if info["repeats"] == 0 and m > 1:
        raise EstimatorRegimeError(
            f"x and y are discrete and the counts of {which} have no repeated value ({m} "
            f"distinct in {n} samples): the entropy that carries I(x;y) is only known to be "
            f">= log {n}, so no estimator can give it. Collect more samples or use coarser "
            "symbols (fewer bins)."
        )
    if cov >= COVERAGE_WELL_SAMPLED:
        return "binning", what + ": well sampled, plug-in entropies of the symbols"
    if which == "(x, y)":
        from dynalens.estimators.mi.coincidence import MIN_REPEATED, pooled_coincidence

        c_bar, repeated = pooled_coincidence(sx, sy)
        binary = int(torch.unique(sy).numel()) <= 2
        if repeated >= MIN_REPEATED and (c_bar >= COINCIDENCE_NOISY_FUNCTION or binary):
            return "coincidence", what + (
                f": y is not a function of x, and the {repeated} repeated x values show y "
                f"mostly a noisy function of x (within-x coincidence {c_bar:.2f}"
                f"{', y binary' if binary else ''}): joint-count estimators cannot resolve "
                "H(y|x) here (its noise tail is all singletons), so H(y|x) is the maximum "
                "entropy at the within-x coincidence (exact for symmetric or binary noise, "
                "an upper bound on H(y|x) otherwise) and H(y) by coverage"
            )
    if cov < COVERAGE_CHAO_SHEN:
        if which == "(x, y)":
            return "binning", what + (
                ": y is not a function of x and the joint is mostly singletons, so H(y | x) "
                "is not resolved by these samples (only repeated x values inform it); "
                "plug-in entropies, whose biases in H(x) and H(x, y) cancel to first order. "
                "Treat the number as coarse; more samples per x value resolve it"
            )
        return "chao_shen", what + ": mostly singletons, Chao-Shen coverage-adjusted entropies"
    return "grassberger", what + ": undersampled tail, Grassberger entropies"
