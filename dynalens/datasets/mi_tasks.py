"""Ground-truth tasks for mutual-information estimators: samples with exactly known MI.

Each function returns ``(x, y, truth)`` with the truth in nats, computed as an exact finite
sum (discrete tasks) or a numerical quadrature to ~1e-6 (continuous ones). Used by the
tests of :mod:`dynalens.estimators.mi` and by ``benchmarks/bench_mi.py``.

* :func:`binned_layer_task` -- undersampled discrete: the 12-bit inputs (X uniform over the
  4096 patterns, sampled with replacement) through a random tanh layer binned into 30 bins
  per unit (the Shwartz-Ziv & Tishby estimator's symbols), optionally with symbol noise;
  truth H(T) - H(T|X) by exact sums over the 4096 inputs.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["binned_layer_task", "tanh_layers"]


def tanh_layers(
    x: np.ndarray, widths: tuple[int, ...] = (10, 7, 5, 4, 3), seed: int = 0
) -> list[np.ndarray]:
    """Activations of a random tanh network (Shwartz-Ziv & Tishby widths) on inputs x;
    weights N(0, 9 / fan_in), biases N(0, 0.09): saturating units as in a trained net."""
    rng = np.random.default_rng(seed)
    h, out = x.astype(np.float64), []
    for w in widths:
        weight = rng.normal(size=(h.shape[1], w)) * 3.0 / math.sqrt(h.shape[1])
        h = np.tanh(h @ weight + rng.normal(size=w) * 0.3)
        out.append(h)
    return out


def _bin_symbols(t: np.ndarray, n_bins: int = 30) -> np.ndarray:
    """Dense symbol per row of 30-bin patterns on [-1, 1] (IDNNs binning)."""
    idx = np.clip(np.floor((t + 1.0) / 2.0 * n_bins), 0, n_bins - 1).astype(np.int64)
    return np.unique(idx, axis=0, return_inverse=True)[1].reshape(-1)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def binned_layer_task(
    n: int, layer: int = 0, noise: float = 0.0, seed: int = 0, net_seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """(x (n, 12) uint8 patterns, t (n,) int64 symbols, I(X;T) in nats).

    X is uniform over the 4096 12-bit patterns; T is the 30-bin pattern of hidden layer
    ``layer`` of :func:`tanh_layers` (a deterministic function of X), replaced with
    probability ``noise`` by a symbol drawn uniformly from the K patterns the layer takes.
    Exactly: p(t) = (1 - noise) p_f(t) + noise / K and H(T|X) is the entropy of
    (1 - noise + noise / K, noise / K, ...), so I = H(T) - H(T|X) is a finite sum.

    Example:
        >>> x, t, truth = binned_layer_task(1000, layer=4)
        >>> x.shape, t.shape, round(truth, 3)
        ((1000, 12), (1000,), 4.453)
    """
    from dynalens.datasets.twelve_bit import all_patterns

    patterns = all_patterns(12)
    sym = _bin_symbols(tanh_layers(patterns, seed=net_seed)[layer])
    k = int(sym.max()) + 1
    p_f = np.bincount(sym, minlength=k) / sym.size
    p_t = (1.0 - noise) * p_f + noise / k
    a, b = 1.0 - noise + noise / k, noise / k
    h_t_given_x = _entropy(np.array([a])) + (k - 1) * (_entropy(np.array([b])) if b > 0 else 0.0)
    truth = _entropy(p_t) - h_t_given_x
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, patterns.shape[0], size=n)
    t = sym[idx]
    if noise > 0:
        flip = rng.random(n) < noise
        t = np.where(flip, rng.integers(0, k, size=n), t)
    return patterns[idx], t.astype(np.int64), truth
