"""Binning (IDNNs) and adaptive binning (Chelombiev et al.): exact discrete truths,
the Shwartz-Ziv & Tishby task, bias direction, parameters."""

from __future__ import annotations

import numpy as np
import pytest

from dynalens.estimators import AdaptiveBinningMI, BinningMI, BinningWarning, mutual_information

from ._tasks import tishby_data


def _plugin_h(sym) -> float:
    _, counts = np.unique(sym, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_discrete_function_mi_equals_entropy_of_output():
    x = np.arange(1000)  # uniform over 1000 inputs
    t = (x * 7) % 13  # a deterministic function with 13 values
    res = BinningMI().estimate(x, t)
    assert res.estimate == pytest.approx(_plugin_h(t), abs=1e-12)


@pytest.mark.filterwarnings("ignore::dynalens.estimators.BinningWarning")
def test_tishby_layer_ixt_is_binned_entropy_and_ity_matches_definition():
    f, labels = tishby_data()
    rng = np.random.default_rng(0)
    t = np.tanh(f.astype(float) @ rng.normal(size=(12, 3)))
    est = BinningMI(n_bins=30, range=(-1, 1))
    # reference: 30 equal bins on [-1, 1] per unit, pattern per sample
    idx = np.clip(np.floor((t + 1) / 2 * 30), 0, 29).astype(int)
    h_t = _plugin_h(idx)
    assert est.estimate(f, t).estimate == pytest.approx(h_t, abs=1e-10)
    h_t_given_y = sum((labels == c).mean() * _plugin_h(idx[labels == c]) for c in np.unique(labels))
    assert est.estimate(t, labels).estimate == pytest.approx(h_t - h_t_given_y, abs=1e-10)
    # I(X;Y) = H(Y) = 0.69256 nats (data README)
    assert est.estimate(f, labels).estimate == pytest.approx(0.69256, abs=1e-5)


def test_plugin_bias_is_upward_and_miller_madow_reduces_it():
    rng = np.random.default_rng(0)
    plug, mm = [], []
    for _ in range(30):
        a, b = rng.integers(0, 8, 100), rng.integers(0, 8, 100)  # independent, I = 0
        plug.append(BinningMI().estimate(a, b).estimate)
        mm.append(BinningMI(correction="miller_madow").estimate(a, b).estimate)
    assert np.mean(plug) > 0.2  # documented direction: up, ~(m-1)^2 / 2n
    assert abs(np.mean(mm)) < np.mean(plug) / 2


def test_constant_and_independent_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 1))
    assert BinningMI().estimate(np.ones(5000), x).estimate == pytest.approx(0.0, abs=1e-12)
    indep = BinningMI(n_bins=5).estimate(x, rng.normal(size=(5000, 1))).estimate
    assert 0 <= indep < 0.01


def test_parameters_change_result_and_symmetry():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 2))
    y = x + 0.5 * rng.normal(size=(2000, 2))
    base = BinningMI(n_bins=10).estimate(x, y).estimate
    assert BinningMI(n_bins=4).estimate(x, y).estimate != base
    assert BinningMI(n_bins=10, range="unit").estimate(x, y).estimate != base
    assert BinningMI(n_bins=10, range=(-1, 1)).estimate(x, y).estimate != base
    assert BinningMI(n_bins=10, correction="miller_madow").estimate(x, y).estimate != base
    assert BinningMI(n_bins=10).estimate(y, x).estimate == pytest.approx(base, abs=1e-12)


def test_saturated_binning_warns_and_returns_log_n():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 10))
    with pytest.warns(BinningWarning, match="log n"):
        h = BinningMI().estimate(np.arange(500), x).estimate
    assert h == pytest.approx(np.log(500), abs=1e-9)


def test_adaptive_binning_covers_relu_range():
    rng = np.random.default_rng(0)
    relu = np.maximum(rng.normal(size=(4000, 1)) * 5, 0)
    fixed = BinningMI(n_bins=30, range=(-1, 1)).entropy(relu).estimate
    adaptive = AdaptiveBinningMI(n_bins=30).entropy(relu).estimate
    assert adaptive > fixed + 1.0  # fixed [-1, 1] bins lump every activation > 1 together
    # equal-mass edges on the distinct values: the non-zero half is spread evenly
    assert adaptive == pytest.approx(np.log(2) + 0.5 * np.log(29), abs=0.15)


def test_adaptive_binning_parameters():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2)) * np.array([1.0, 10.0])
    y = x[:, :1] + rng.normal(size=(2000, 1))
    a = AdaptiveBinningMI(n_bins=10).estimate(x, y).estimate
    assert AdaptiveBinningMI(n_bins=10, per_unit=True).estimate(x, y).estimate != a
    assert AdaptiveBinningMI(n_bins=5).estimate(x, y).estimate != a


def test_binning_of_many_units_counts_patterns_exactly():
    """12 binary units = 4096 patterns; with 10000 samples and a label independent of the
    units, I = H(T) - H(T|Y) equals the plug-in value computed by counting rows in numpy.
    (Its speed is measured in benchmarks/bench_plane.py, not here.)"""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(10000, 12))
    y = np.arange(10000) % 2
    got = mutual_information(y, x, method="binning", n_bins=2)

    def h(rows):
        _, c = np.unique(rows, axis=0, return_counts=True)
        p = c / c.sum()
        return -(p * np.log(p)).sum()

    bits = (x > 0).astype(int)
    expected = h(bits) - sum(0.5 * h(bits[y == k]) for k in (0, 1))
    assert got == pytest.approx(expected, abs=1e-9)
