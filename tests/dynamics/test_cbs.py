"""Critical-batch-size fits against data generated from McCandlish's model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynalens.dynamics.cbs import (
    cbs_zhang_data,
    cbs_zhang_model,
    fit_critical_batch_size,
    fit_power_law,
)
from dynalens.errors import InvalidInputError, InvalidParameterError

S_MIN, E_MIN = 100.0, 6400.0  # B_crit = 64
B = 2.0 ** np.arange(3, 11)  # 8 ... 1024


def steps(b: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (S_MIN + E_MIN / b) * np.exp(noise * rng.standard_normal(np.shape(b)))


def test_exact_model_is_recovered() -> None:
    fit = fit_critical_batch_size(B, steps(B), bootstrap=100)
    assert fit.s_min == pytest.approx(S_MIN, rel=1e-10)
    assert fit.e_min == pytest.approx(E_MIN, rel=1e-10)
    assert fit.b_crit == pytest.approx(64.0, rel=1e-10)
    assert np.abs(fit.residuals).max() < 1e-10
    lo, hi = fit.b_crit_interval
    assert lo == pytest.approx(64.0, rel=1e-8) and hi == pytest.approx(64.0, rel=1e-8)
    # the fitted curve satisfies McCandlish's eq. 2.11: (S/S_min - 1)(E/E_min - 1) = 1
    b = np.geomspace(1, 1e4, 7)
    prod = (fit.predict_steps(b) / fit.s_min - 1) * (fit.predict_examples(b) / fit.e_min - 1)
    np.testing.assert_allclose(prod, 1.0, rtol=1e-9)


@pytest.mark.parametrize("noise", [0.05, 0.15])
def test_noisy_model_within_tolerance(noise: float) -> None:
    b = np.repeat(B, 3)
    fit = fit_critical_batch_size(b, steps(b, noise, seed=1), bootstrap=500)
    assert fit.b_crit == pytest.approx(64.0, rel=3 * noise)
    assert fit.s_min == pytest.approx(S_MIN, rel=2 * noise)
    lo, hi = fit.b_crit_interval
    assert lo < fit.b_crit < hi


def test_bootstrap_interval_covers_at_about_the_nominal_rate() -> None:
    hits = 0
    n = 200
    for seed in range(n):
        fit = fit_critical_batch_size(B, steps(B, 0.1, seed=100 + seed), bootstrap=300, seed=seed)
        lo, hi = fit.b_crit_interval
        hits += lo <= 64.0 <= hi
    # 95 % nominal; 200 replicates: sd of the rate ~1.5 %
    assert 0.88 <= hits / n <= 0.99


def test_cases_bootstrap_needs_replicates_and_covers_the_estimate() -> None:
    b = np.repeat(B, 4)
    fit = fit_critical_batch_size(b, steps(b, 0.1, seed=3), method="cases", bootstrap=400)
    assert fit.bootstrap == "cases"
    assert fit.b_crit_interval[0] < fit.b_crit < fit.b_crit_interval[1]
    with pytest.raises(InvalidInputError, match="at least 2 runs"):
        fit_critical_batch_size(B, steps(B, 0.1), method="cases")


def test_unreached_targets_are_dropped_and_counted() -> None:
    s = steps(B)
    s[0] = np.nan
    fit = fit_critical_batch_size(B, s, bootstrap=0)
    assert fit.n_dropped == 1 and len(fit.steps) == 7
    assert fit.b_crit == pytest.approx(64.0, rel=1e-9)
    assert math.isnan(fit.b_crit_interval[0]) and fit.bootstrap == "none"


def test_no_step_floor_gives_infinite_b_crit() -> None:
    fit = fit_critical_batch_size(B, E_MIN / B, bootstrap=50)  # perfect scaling: S_min = 0
    assert fit.s_min == pytest.approx(0.0, abs=1e-9) and math.isinf(fit.b_crit)


def test_level_and_seed_change_the_interval() -> None:
    s = steps(B, 0.1, seed=4)
    a = fit_critical_batch_size(B, s, bootstrap=300, level=0.95)
    b = fit_critical_batch_size(B, s, bootstrap=300, level=0.5)
    c = fit_critical_batch_size(B, s, bootstrap=300, level=0.95, seed=1)
    assert (b.b_crit_interval[1] - b.b_crit_interval[0]) < (
        a.b_crit_interval[1] - a.b_crit_interval[0]
    )
    assert c.b_crit_interval != a.b_crit_interval and c.b_crit == a.b_crit


def test_zhang_cbs_under_the_model_is_a_fifth_of_b_crit_plus_b0() -> None:
    fit = fit_critical_batch_size(B, steps(B), bootstrap=0)
    b0 = float(B[0])
    assert fit.cbs_zhang() == pytest.approx(0.2 * 64.0 + 1.2 * b0)
    assert cbs_zhang_model(64.0, b0, overhead=0.5) == pytest.approx(0.5 * 64 + 1.5 * b0)
    # the definition: E(B)/E(B0) = 1.2 at that batch size
    cbs = fit.cbs_zhang()
    assert fit.predict_examples(cbs) / fit.predict_examples(b0) == pytest.approx(1.2)
    # interpolated from dense noiseless data it agrees with the model value
    dense = 2.0 ** (np.arange(12, 45) / 4)
    got = cbs_zhang_data(dense, steps(dense))
    assert got == pytest.approx(cbs_zhang_model(64.0, float(dense[0])), rel=0.01)


def test_zhang_cbs_data_edges() -> None:
    assert math.isinf(cbs_zhang_data([8, 16], [100, 50.1]))  # never 20 % above: inf
    b = np.repeat(B, 2)  # replicates are averaged (geometric mean) per batch size
    assert cbs_zhang_data(b, steps(b)) == pytest.approx(cbs_zhang_data(B, steps(B)))


def test_power_law_recovers_the_exponent() -> None:
    x = np.geomspace(1, 1000, 8)
    exact = fit_power_law(x, 3.0 * x**-0.5)
    assert exact.exponent == pytest.approx(-0.5, abs=1e-12)
    assert exact.coefficient == pytest.approx(3.0, rel=1e-12)
    hits = 0
    for seed in range(200):
        y = 3.0 * x**0.47 * np.exp(0.2 * np.random.default_rng(seed).standard_normal(8))
        lo, hi = fit_power_law(x, y).exponent_interval
        hits += lo <= 0.47 <= hi
    assert 0.9 <= hits / 200 <= 0.99
    np.testing.assert_allclose(exact.predict([4.0]), [1.5])


def test_validation_messages() -> None:
    with pytest.raises(InvalidInputError, match="one entry per run"):
        fit_critical_batch_size([8, 16, 32], [1.0, 2.0])
    with pytest.raises(InvalidInputError, match="> 0"):
        fit_critical_batch_size([8, -16, 32], [3.0, 2.0, 1.0])
    with pytest.raises(InvalidInputError, match="at least 3 runs"):
        fit_critical_batch_size([8, 16, 32], [3.0, np.nan, np.nan])
    with pytest.raises(InvalidInputError, match="Mark runs"):
        fit_critical_batch_size([8, 16, 32], [3.0, 0.0, 1.0])
    with pytest.raises(InvalidParameterError, match="level"):
        fit_critical_batch_size(B, steps(B), level=1.5)
    with pytest.raises(InvalidParameterError, match="method"):
        fit_critical_batch_size(B, steps(B), method="jackknife")
    with pytest.raises(InvalidInputError, match="log space"):
        fit_power_law([1, 2, 3], [1, 0, 2])
    with pytest.raises(InvalidInputError, match="same length"):
        fit_power_law([1, 2, 3], [1, 2])
