"""Regression tests: regimes where ``method="auto"`` used to return KSG's number for a
question KSG cannot answer (wide layers, deterministic continuous relations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynalens.errors import EstimatorRegimeError
from dynalens.estimators import KSGMI, mutual_information
from dynalens.estimators.mi.auto import MAX_GROWTH

from ._tasks import gaussian_pair


def wide_gaussian_layer(n: int = 500, d: int = 1000, mi: float = 2.31, seed: int = 0):
    """x, y in R^d, corr(x_j, y_j) = rho for every j, with I(X;Y) = -d/2 log(1 - rho^2) = mi."""
    rho = math.sqrt(-math.expm1(-2 * mi / d))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(n, d))
    return x, y, -0.5 * d * math.log1p(-(rho**2))


def test_auto_refuses_a_wide_layer_instead_of_ksg_near_zero():
    """d = 1000, n = 500, true MI 2.31 nats: auto used to pick KSG and return 0.003."""
    x, y, truth = wide_gaussian_layer()
    assert truth == pytest.approx(2.31)
    with pytest.raises(EstimatorRegimeError, match=r"1000 \+ 1000 = 2000 joint dimensions") as e:
        mutual_information(x, y)
    for hint in ("method='lossy'", "noise_var", "method='gaussian'", "method='ksg'"):
        assert hint in str(e.value)
    # what the refusal protects from: KSG's number is near zero here
    assert KSGMI().estimate(x, y).estimate < 0.1 * truth


def test_auto_width_limit_is_on_the_joint_dimension():
    x, y, _ = gaussian_pair(400, 10, 0.5)  # 20 joint dims: still auto's KSG
    assert mutual_information(x, y, return_result=True).method == "ksg"
    x, y, _ = gaussian_pair(400, 11, 0.5)
    with pytest.raises(EstimatorRegimeError, match="22 joint dimensions"):
        mutual_information(x, y)


@pytest.mark.parametrize(
    "relation",
    [lambda x: 2 * x, lambda x: x**3, lambda x: x**2, lambda x: np.sin(3 * x)],
    ids=["2x", "x^3", "x^2", "sin3x"],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, "torch"])
def test_auto_refuses_deterministic_continuous_relations(relation, dtype):
    """mutual_information(x, 2 * x) used to return 6.68 nats (KSG's ceiling
    psi(n) - psi(k)) for continuous x, where I(X; 2X) is infinite."""
    x = np.random.default_rng(0).normal(size=2000)
    y = relation(x)
    if dtype == "torch":
        x, y = torch.from_numpy(x), torch.from_numpy(y)
    else:
        x, y = x.astype(dtype), y.astype(dtype)
    with pytest.raises(EstimatorRegimeError, match=r"not converged.*deterministic relation"):
        mutual_information(x, y)


def test_deterministic_relation_of_whole_valued_data_is_exact_whatever_the_dtype():
    """The same relation on discrete values is finite, I(X; 2X) = H(X): binning, exactly,
    for int and float storage alike."""
    x = np.random.default_rng(0).integers(0, 8, size=4000)
    h = -sum(p * math.log(p) for p in np.bincount(x) / len(x))
    for xx in (x, x.astype(np.float32)):
        r = mutual_information(xx, 2 * xx, return_result=True)
        assert r.method == "binning" and r.estimate == pytest.approx(h, abs=1e-12)


@pytest.mark.parametrize(
    "noise, n",
    [(1.0, 1000), (0.1, 1000), (0.01, 4000)],
)
def test_auto_keeps_resolvable_noisy_relations(noise, n):
    """The convergence check does not refuse dependence that n samples resolve: the result
    stays within 0.15 nats of the truth, with the check's numbers in details."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    y = x + noise * rng.normal(size=n)
    truth = 0.5 * math.log1p(1 / noise**2)
    r = mutual_information(x, y, return_result=True)
    assert r.estimate == pytest.approx(truth, abs=0.15)
    assert r.details["growth_per_doubling"] < MAX_GROWTH
    assert r.details["ksg_half_sample"] == pytest.approx(truth, abs=0.2)


def test_auto_refuses_dependence_beyond_what_the_samples_resolve():
    """A 5-D Gaussian pair with 9.8 nats at n = 1000: KSG returns about 4.6 and still grows
    by ~0.8 log 2 per doubling; auto refuses rather than report it."""
    x, y, truth = gaussian_pair(1000, 5, 0.99, seed=1)
    assert truth > 9
    with pytest.raises(EstimatorRegimeError, match="not converged"):
        mutual_information(x, y)
    assert KSGMI().estimate(x, y).estimate < 0.5 * truth  # what was refused


def test_explicit_ksg_still_returns_the_sample_limited_value():
    x = np.random.default_rng(0).normal(size=1000)
    r = mutual_information(x, 2 * x, method="ksg", return_result=True)
    ceiling = float(
        torch.special.digamma(torch.tensor(1000.0)) - torch.special.digamma(torch.tensor(3.0))
    )
    assert r.estimate == pytest.approx(ceiling, abs=1e-6)
