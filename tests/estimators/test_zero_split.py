"""Zero-inflated (ReLU) layers: the zero-pattern chain-rule estimator (issue 15 section 3)
against quadrature truths, KSG on the same data, invariances, refusals and auto."""

from __future__ import annotations

import numpy as np
import pytest

from dynalens.datasets.mi_tasks import gaussian_classes_task, relu_gaussian_task
from dynalens.errors import EstimatorRegimeError
from dynalens.estimators import ZeroSplitMI, mutual_information
from dynalens.testing.estimators import check_estimator


@pytest.mark.parametrize("d", [1, 2, 3])
def test_relu_of_correlated_gaussians_low_dim(d):
    """Quadrature truth (relu_gaussian_task); n = 2000."""
    x, t, truth = relu_gaussian_task(2000, d, seed=d)
    res = mutual_information(x, t, method="zero_split", return_result=True)
    assert abs(res.estimate - truth) < 0.08, (res.estimate, truth)
    assert res.details["unestimated_mass"] == 0.0


def test_beats_ksg_on_relu_layers_in_1_to_5_dims():
    """Mean |error| over 1-5 units at n = 1000, thresholds 0 / 0.5 (half / 69% zeros)."""
    err_split, err_ksg = [], []
    for d in (1, 2, 3, 4, 5):
        for thr in (0.0,) if d < 4 else (0.0, 0.5):
            x, t, truth = relu_gaussian_task(1000, d, threshold=thr, seed=d)
            err_split.append(abs(mutual_information(x, t, method="zero_split") - truth))
            err_ksg.append(abs(mutual_information(x, t, method="ksg") - truth))
    assert np.mean(err_split) < 0.75 * np.mean(err_ksg), (err_split, err_ksg)


def test_copula_parts_halve_the_ksg_parts_error_for_5_units_at_1k():
    """5 ReLU units at n = 1000 (~30 rows per zero pattern, KSG in 6-10 dims): the larger of
    KSG and the Gaussian copula per pattern vs KSG alone; three seeds, quadrature truth.
    Both are below the truth here (downward-biased parts)."""
    err_max, err_ksg = [], []
    for seed in (5, 15, 25):
        x, t, truth = relu_gaussian_task(1000, 5, seed=seed)
        res = mutual_information(x, t, method="zero_split", return_result=True)
        ksg = mutual_information(x, t, method="zero_split", within="ksg")
        assert ksg <= res.estimate < truth
        assert res.details["copula_mass"] > 0.5
        err_max.append(truth - res.estimate)
        err_ksg.append(truth - ksg)
    assert np.mean(err_max) < 0.5 * np.mean(err_ksg), (err_max, err_ksg)


def test_copula_parts_no_worse_for_5_units_at_10k():
    x, t, truth = relu_gaussian_task(10000, 5, seed=5)
    res = mutual_information(x, t, method="zero_split")
    ksg = mutual_information(x, t, method="zero_split", within="ksg")
    assert abs(res - truth) <= abs(ksg - truth)


def test_truth_by_quadrature_matches_monte_carlo():
    """The task's truth (Gauss-Hermite + closed forms) vs a Monte Carlo mean of the exact
    pointwise log-ratio log p(t|x) / p(t) on 200k draws."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    rho, b, n = 0.8, 0.5, 200_000
    s = np.sqrt(1 - rho**2)
    x = rng.normal(size=n)
    z = rho * x + s * rng.normal(size=n)
    off = z <= b
    lp_cond = np.where(off, norm.logcdf((b - rho * x) / s), norm.logpdf(z, rho * x, s))
    lp = np.where(off, norm.logcdf(b), norm.logpdf(z))
    mc = float((lp_cond - lp).mean())
    se = float((lp_cond - lp).std() / np.sqrt(n))
    assert abs(relu_gaussian_task(10, 1, rho, b)[2] - mc) < 4 * se


def test_gaussian_class_truth_matches_monte_carlo():
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    n, sep = 200_000, 2.0
    y = rng.integers(0, 2, n)
    u = rng.normal(size=n) + np.where(y == 1, sep / 2, -sep / 2)
    own = norm.logpdf(u, np.where(y == 1, sep / 2, -sep / 2))
    mix = np.logaddexp(norm.logpdf(u, sep / 2), norm.logpdf(u, -sep / 2)) - np.log(2)
    vals = own - mix
    assert abs(gaussian_classes_task(10, 1, sep)[2] - vals.mean()) < 4 * vals.std() / np.sqrt(n)


def test_invariances():
    x, t, _ = relu_gaussian_task(1500, 3, seed=0)
    base = mutual_information(x, t, method="zero_split")
    assert mutual_information(x, 7.0 * t, method="zero_split") == pytest.approx(base, abs=1e-9)
    perm = [2, 0, 1]
    assert mutual_information(x[:, perm], t[:, perm], method="zero_split") == pytest.approx(
        base, abs=1e-9
    )


def test_label_against_a_relu_layer():
    """I(Y; T) for a label and a ReLU layer of its Gaussian classes: T = relu(X), and the
    ReLU loses information (data processing), so the estimate lies below I(Y; X)."""
    x, y, truth = gaussian_classes_task(3000, d=2, separation=2.0, seed=0)
    t = np.maximum(x, 0.0)
    res = mutual_information(y, t, return_result=True)
    assert res.method == "zero_split"
    assert 0.5 * truth < res.estimate < truth + 0.03


def test_refusals_and_parameters():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    with pytest.raises(EstimatorRegimeError, match="exact zeros"):
        mutual_information(x, x + rng.normal(size=(300, 2)), method="zero_split")
    xr, t, _ = relu_gaussian_task(300, 5, seed=0)
    with pytest.raises(EstimatorRegimeError, match="fewer than 40 rows"):
        mutual_information(xr, t, method="zero_split", min_group=40)
    a = mutual_information(xr, t, method="zero_split", k=3, max_unestimated=1.0)
    b = mutual_information(xr, t, method="zero_split", k=6, max_unestimated=1.0)
    assert a != b


def test_auto_picks_zero_split_only_for_relu_like_columns():
    x, t, _ = relu_gaussian_task(800, 2, seed=0)
    res = mutual_information(x, t, return_result=True)
    assert res.method == "zero_split" and "exact zeros" in res.details["auto_reason"]
    levels = (np.arange(800) % 3).astype(float)  # zeros, but a few repeated levels
    cont = np.random.default_rng(0).normal(size=800)
    assert mutual_information(levels, cont, x_discrete=False, return_result=True).method == "ksg"


def test_conformance():
    x, t, _ = relu_gaussian_task(400, 2, seed=0)
    check_estimator(ZeroSplitMI(), (x, t))
