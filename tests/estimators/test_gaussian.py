"""Gaussian / CCA and Gaussian-copula MI: closed forms, bias, invariances."""

from __future__ import annotations

import numpy as np
import pytest

from dynalens.errors import EstimatorRegimeError
from dynalens.estimators import GaussianCopulaMI, GaussianMI, entropy, mutual_information

from ._tasks import gaussian_pair


@pytest.mark.parametrize("d", [1, 3, 10])
def test_matches_closed_form(d):
    x, y, truth = gaussian_pair(20000, d, 0.6, seed=d)
    res = GaussianMI().estimate(x, y)
    assert abs(res.estimate - truth) < 4 * res.stderr + 0.01
    assert len(res.details["canonical_corr"]) == d


def test_bias_correction_removes_upward_bias_under_independence():
    rng = np.random.default_rng(0)
    raw, corrected = [], []
    for _ in range(40):
        x, y = rng.normal(size=(60, 3)), rng.normal(size=(60, 3))
        raw.append(GaussianMI(bias_correction=False).estimate(x, y).estimate)
        corrected.append(GaussianMI().estimate(x, y).estimate)
    # plug-in: about d_x d_y / 2n = 0.075 nats too high; corrected: mean ~ 0
    assert np.mean(raw) > 0.05
    assert abs(np.mean(corrected)) < 0.02


def test_entropy_closed_form():
    rng = np.random.default_rng(1)
    cov = np.array([[2.0, 0.5], [0.5, 1.0]])
    x = rng.multivariate_normal([0, 0], cov, size=50000)
    truth = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * cov))
    assert entropy(x, method="gaussian") == pytest.approx(truth, abs=0.02)


def test_affine_invariance_and_symmetry():
    x, y, _ = gaussian_pair(3000, 2, 0.5)
    a = GaussianMI().estimate(x, y).estimate
    b = GaussianMI().estimate(3 * x + 7, y @ np.array([[2.0, 1.0], [0.0, -1.0]])).estimate
    assert a == pytest.approx(b, abs=1e-9)
    assert GaussianMI().estimate(y, x).estimate == pytest.approx(a, abs=1e-12)


def test_copula_invariant_to_monotone_maps_and_exact_for_gaussian_copula():
    x, y, truth = gaussian_pair(20000, 1, 0.7, seed=3)
    plain = GaussianMI().estimate(np.exp(x), y**3).estimate
    cop = GaussianCopulaMI().estimate(np.exp(x), y**3)
    assert cop.estimate == pytest.approx(truth, abs=0.03)
    assert plain < truth - 0.05  # the Gaussian estimator is fooled by the nonlinearity
    assert GaussianCopulaMI().estimate(x, y).estimate == pytest.approx(cop.estimate, abs=1e-12)


def test_constant_variable_gives_zero():
    x = np.full((100, 2), 0.5)
    y = np.random.default_rng(0).normal(size=(100, 1))
    assert GaussianMI().estimate(x, y).estimate == 0.0


def test_refuses_deterministic_linear_relation_and_discrete_inputs():
    x = np.random.default_rng(0).normal(size=(100, 2))
    with pytest.raises(EstimatorRegimeError, match="linearly dependent"):
        GaussianMI().estimate(x, 2 * x[:, :1] - x[:, 1:])
    with pytest.raises(EstimatorRegimeError, match="discrete"):
        GaussianMI().estimate(np.arange(100) % 3, x)
    with pytest.raises(EstimatorRegimeError, match="more samples"):
        GaussianMI().estimate(x[:3], x[:3, ::-1] + 1e-3)


def test_parameter_changes_result():
    x, y, _ = gaussian_pair(50, 3, 0.3)
    a = mutual_information(x, y, method="gaussian", bias_correction=True)
    b = mutual_information(x, y, method="gaussian", bias_correction=False)
    assert b > a
