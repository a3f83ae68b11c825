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

__all__ = [
    "binned_layer_task",
    "gaussian_classes_task",
    "noisy_tanh_task",
    "relu_gaussian_task",
    "tanh_layers",
]


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


def _relu_pair_mi(rho: float, threshold: float) -> float:
    """I(X; ReLU(Z - b)) in nats for standard normal X, Z with corr rho (Gauss-Hermite
    over x, closed-form truncated-normal entropies: H over the measure delta_0 + Lebesgue)."""
    from scipy.stats import norm

    s = math.sqrt(1.0 - rho**2)

    def h_mixed(m: np.ndarray, sd: float) -> np.ndarray:
        # T = max(N(m, sd^2) - b, 0): atom q = Phi((b - m)/sd) at 0, Gaussian density above
        a = (threshold - m) / sd
        q = norm.cdf(a)
        tail = norm.sf(a)
        cont = 0.5 * math.log(2 * math.pi * sd**2) * tail + 0.5 * (tail + a * norm.pdf(a))
        with np.errstate(divide="ignore", invalid="ignore"):
            atom = np.where(q > 0, -q * np.log(np.where(q > 0, q, 1.0)), 0.0)
        return atom + cont

    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / weights.sum()
    h_t = float(h_mixed(np.array([0.0]), 1.0)[0])
    h_t_given_x = float((weights * h_mixed(rho * nodes, s)).sum())
    return h_t - h_t_given_x


def relu_gaussian_task(
    n: int, d: int = 1, rho: float = 0.8, threshold: float = 0.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """(x (n, d), t (n, d), I(X;T)): a zero-inflated ReLU layer of correlated Gaussians.

    X ~ N(0, I_d); Z = rho X + sqrt(1 - rho^2) E; T = max(Z - threshold, 0) per unit, so
    each unit is exactly 0 with probability Phi(threshold) and T puts mass on faces of every
    dimension. Pairs (X_j, T_j) are independent, I = d * I(X_1; T_1), and I(X_1; T_1) =
    H(T_1) - E_x H(T_1 | x) over the measure (atom at 0) + (Lebesgue on t > 0), by
    Gauss-Hermite quadrature over x (200 nodes) and closed-form truncated-normal terms.

    Example:
        >>> x, t, truth = relu_gaussian_task(1000, d=2)
        >>> round(truth, 4), float((t == 0).mean()) > 0.4
        (0.7774, True)
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    z = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(n, d))
    return x, np.maximum(z - threshold, 0.0), d * _relu_pair_mi(rho, threshold)


def gaussian_classes_task(
    n: int, d: int = 2, separation: float = 2.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, float]:
    """(x (n, d) continuous, y (n,) int labels, I(X;Y)): two equiprobable Gaussian
    classes N(+-separation/2 e_1, I_d). I = log 2 - E_u[h2(sigmoid(separation * u))] over
    the projection u on e_1 (a two-component 1-D mixture), by Gauss-Hermite quadrature.

    Example:
        >>> x, y, truth = gaussian_classes_task(1000)
        >>> round(truth, 4)
        0.3368
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)
    weights = weights / weights.sum()
    u = nodes + separation / 2  # class 1 (by symmetry class 0 gives the same)
    logit = separation * u
    p1 = 1.0 / (1.0 + np.exp(-logit))
    # binary entropy of sigmoid(l): p softplus(-l) + (1 - p) softplus(l), no log(0)
    h = p1 * np.logaddexp(0.0, -logit) + (1 - p1) * np.logaddexp(0.0, logit)
    truth = math.log(2) - float((weights * h).sum())
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, d))
    x[:, 0] += np.where(y == 1, separation / 2, -separation / 2)
    return x, y.astype(np.int64), truth


def noisy_tanh_task(
    n: int, units: int = 1, noise_var: float = 0.01, seed: int = 0, net_seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(x (n, 12) patterns, clean (n, units), observed (n, units), I(X;T)) for the noisy
    tanh layer T = tanh(X W + b) + N(0, noise_var I) on 12-bit inputs drawn uniformly (with
    replacement) from the 4096 patterns; W ~ N(0, 0.25), b = -0.3.

    I(X;T) = h(T) - d/2 log(2 pi e noise_var) with T the exact mixture of the 4096 clean
    activations: by quadrature on a 40001-point grid for one unit, by a Monte-Carlo
    average of the exact mixture log-density (16 draws per input, s.e. ~0.01 nats) for
    more units.

    Example:
        >>> x, c, t, truth = noisy_tanh_task(1000)
        >>> round(truth, 3)
        1.501
    """
    from dynalens.datasets.twelve_bit import all_patterns

    patterns = all_patterns(12).astype(np.float64)
    rng = np.random.default_rng(net_seed)
    w = rng.normal(size=(12, units)) * 0.5
    clean_all = np.tanh(patterns @ w - 0.3)
    s = math.sqrt(noise_var)
    if units == 1:
        vals, counts = np.unique(clean_all, return_counts=True)
        grid = np.linspace(vals.min() - 9 * s, vals.max() + 9 * s, 40001)
        p = np.zeros_like(grid)
        for v, c in zip(vals, counts / clean_all.shape[0]):
            p += c * np.exp(-((grid - v) ** 2) / (2 * noise_var))
        p /= math.sqrt(2 * math.pi * noise_var)
        h_t = float(np.trapezoid(np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0), grid))
        truth = h_t - 0.5 * math.log(2 * math.pi * math.e * noise_var)
    else:
        from dynalens.estimators.mi.noisy import NoisyChannelMI

        est = NoisyChannelMI(noise_var=noise_var, n_draws=16, seed=net_seed)
        truth = est.estimate(np.arange(clean_all.shape[0]), clean_all).estimate
    gen = np.random.default_rng(seed)
    idx = gen.integers(0, patterns.shape[0], size=n)
    clean = clean_all[idx]
    observed = clean + s * gen.normal(size=clean.shape)
    return patterns[idx].astype(np.uint8), clean, observed, truth
