"""Noisy layers observed after the noise (issue 15 section 2): explicit semantics in
``auto`` (detected from repeated inputs) and I = h(T) - h(N) with h(N) exact."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynalens.datasets.mi_tasks import noisy_tanh_task
from dynalens.estimators import ObservedNoisyMI, mutual_information
from dynalens.testing.estimators import check_estimator

VAR = 0.01


@pytest.fixture(scope="module")
def tanh_unit():
    return {n: noisy_tanh_task(n, 1, VAR, seed=1) for n in (1000, 4000)}


@pytest.mark.parametrize("n", [1000, 4000])
def test_noisy_tanh_unit_against_quadrature(tanh_unit, n):
    x, clean, observed, truth = tanh_unit[n]
    res = mutual_information(x, observed, noise_var=VAR, return_result=True)
    assert res.method == "noisy_observed"
    assert "observed noisy layer" in res.details["auto_reason"]
    assert abs(res.estimate - truth) < (0.06 if n == 1000 else 0.03), (res.estimate, truth)
    assert res.lower <= truth <= res.upper
    # the clean activations of the same samples: still the known-channel estimator
    both = mutual_information(x, clean, noise_var=VAR, return_result=True)
    assert both.method == "noisy" and "identical across repeats" in both.details["auto_reason"]
    assert abs(both.estimate - truth) < 0.05


def test_observed_semantics_halve_the_error_of_treating_them_as_clean(tanh_unit):
    x, _, observed, truth = tanh_unit[4000]
    as_clean = mutual_information(x, observed, method="noisy", noise_var=VAR)
    observed_mi = mutual_information(x, observed, noise_var=VAR)
    assert abs(observed_mi - truth) < 0.5 * abs(as_clean - truth)


def test_gaussian_channel_closed_form():
    """x ~ N(0, I_2), t = x + N(0, s2 I): I = log(1 + 1/s2) (two independent units)."""
    rng = np.random.default_rng(0)
    s2 = 0.5
    x = rng.normal(size=(4000, 2))
    t = x + math.sqrt(s2) * rng.normal(size=(4000, 2))
    est = ObservedNoisyMI(noise_var=s2).estimate(x, t)
    assert est.estimate == pytest.approx(math.log(1 + 1 / s2), abs=0.05)
    assert est.details["h_noise"] == pytest.approx(math.log(2 * math.pi * math.e * s2))


def test_without_repeats_auto_says_it_assumes_clean():
    rng = np.random.default_rng(0)
    x = np.arange(300)
    c = np.tanh(rng.normal(size=(300, 1)))
    res = mutual_information(x, c, noise_var=0.1, return_result=True)
    assert res.method == "noisy" and "method='noisy_observed'" in res.details["auto_reason"]
    assert "does not repeat" in res.details["auto_reason"]


def test_noise_var_changes_the_estimate_and_k_is_used():
    x, _, t, _ = noisy_tanh_task(1000, 1, VAR, seed=2)
    a = mutual_information(x, t, method="noisy_observed", noise_var=VAR)
    b = mutual_information(x, t, method="noisy_observed", noise_var=2 * VAR)
    assert a - b == pytest.approx(0.5 * math.log(2), abs=1e-9)  # only h(N) changes
    assert mutual_information(x, t, method="noisy_observed", noise_var=VAR, k=8) != a


def test_conformance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    check_estimator(ObservedNoisyMI(noise_var=1.0), (x, x + rng.normal(size=(400, 2))))


def test_labels_against_an_observed_noisy_layer():
    """x = labels: I(Y; T) = h(T) - sum_y p(y) h(T|y) (not h(T) - h(N)). T = X + N(0, s2)
    with X | y ~ N(+-1, 1): T | y ~ N(+-1, 1 + s2), truth by quadrature."""
    from dynalens.datasets.mi_tasks import gaussian_classes_task

    s2 = 0.5
    x, y, _ = gaussian_classes_task(4000, d=1, separation=2.0, seed=3)
    t = x + math.sqrt(s2) * np.random.default_rng(4).normal(size=x.shape)
    truth = gaussian_classes_task(10, d=1, separation=2.0 / math.sqrt(1 + s2))[2]
    res = mutual_information(y, t, method="noisy_observed", noise_var=s2, return_result=True)
    assert res.details["conditioning"].startswith("classes")
    assert abs(res.estimate - truth) < 0.05, (res.estimate, truth)
    # auto with labels keeps the clean reading (rows of a class are different inputs)
    auto = mutual_information(y, t, noise_var=s2, return_result=True)
    assert auto.method == "noisy" and "class labels" in auto.details["auto_reason"]
