"""KSG (estimators 1 and 2) with Gao et al. ties and Ross 2014: ground truth, peers, ties,
invariances, bias."""

from __future__ import annotations

import numpy as np
import pytest

from dynalens.errors import EstimatorRegimeError, InvalidParameterError
from dynalens.estimators import KSGMI, entropy, mutual_information

from ._tasks import gaussian_pair


@pytest.mark.parametrize(("d", "tol"), [(1, 0.03), (2, 0.05)])
def test_gaussian_ground_truth_low_dimension(d, tol):
    x, y, truth = gaussian_pair(5000, d, 0.6, seed=d)
    assert KSGMI().estimate(x, y).estimate == pytest.approx(truth, abs=tol)


@pytest.mark.parametrize(("d", "tol"), [(1, 0.03), (2, 0.05), (3, 0.03)])
def test_ksg2_gaussian_ground_truth(d, tol):
    x, y, truth = gaussian_pair(5000, d, 0.6, seed=d)
    res = KSGMI(variant=2).estimate(x, y)
    assert res.estimate == pytest.approx(truth, abs=tol)
    assert res.details["mode"] == "ksg2-mixed"


def _textbook_ksg(x: np.ndarray, y: np.ndarray, k: int, variant: int) -> float:
    """KSG on scipy's cKDTree, written from Kraskov et al. 2004, eqs. 8 and 9 (no ties)."""
    from scipy.spatial import cKDTree
    from scipy.special import digamma

    z = np.hstack([x, y])
    n = len(z)
    eps, idx = cKDTree(z).query(z, k=k + 1, p=np.inf)
    eps, idx = eps[:, -1], idx[:, 1:]
    if variant == 1:
        r = np.nextafter(eps, 0)  # strictly inside
        nx = cKDTree(x).query_ball_point(x, r, p=np.inf, return_length=True) - 1
        ny = cKDTree(y).query_ball_point(y, r, p=np.inf, return_length=True) - 1
        return float(digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1)))
    ex = np.abs(x[:, None, :] - x[idx]).max(-1).max(1)
    ey = np.abs(y[:, None, :] - y[idx]).max(-1).max(1)
    nx = cKDTree(x).query_ball_point(x, ex, p=np.inf, return_length=True) - 1
    ny = cKDTree(y).query_ball_point(y, ey, p=np.inf, return_length=True) - 1
    return float(digamma(k) - 1 / k + digamma(n) - np.mean(digamma(nx) + digamma(ny)))


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("d", [1, 3, 6, 10])  # 10 + 10 runs the fused brute force
def test_matches_textbook_ckdtree_ksg(variant, d):
    pytest.importorskip("scipy")
    x, y, _ = gaussian_pair(1200, d, 0.5, seed=10 + d)
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean(0)) / y.std(0)
    for k in (3, 5):
        ours = KSGMI(k=k, variant=variant, standardize=False, precision="float64")
        assert ours.estimate(x, y).estimate == pytest.approx(
            _textbook_ksg(x, y, k, variant), abs=1e-12
        )


def test_high_dimension_bias_is_downward_and_smaller_for_ksg2():
    x, y, truth = gaussian_pair(3000, 10, 0.6, seed=10)  # 2.2 nats in 10+10 dims
    one = KSGMI().estimate(x, y).estimate
    two = KSGMI(variant=2).estimate(x, y).estimate
    assert 0 < one < two < truth - 0.5  # measured: truth - 1.21 and truth - 1.17


def test_ksg2_ties_are_finite():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, 3000)
    b = (a + (rng.random(3000) < 0.2)) % 4
    val = KSGMI(variant=2).estimate(a, b, x_discrete=False, y_discrete=False).estimate
    one = KSGMI().estimate(a, b, x_discrete=False, y_discrete=False).estimate
    # every point has > k copies: both variants reduce to the same Gao et al. terms
    assert val == pytest.approx(one, abs=1e-12)
    relu = np.maximum(rng.normal(size=(4000, 2)), 0)
    val = KSGMI(variant=2).estimate(relu, relu[:, :1] + rng.normal(size=(4000, 1))).estimate
    assert np.isfinite(val) and val > 0


def test_high_dimension_bias_is_downward():
    x, y, truth = gaussian_pair(3000, 10, 0.8, seed=0)  # 5.1 nats in 10+10 dims
    est = KSGMI().estimate(x, y).estimate
    assert est < truth - 1.0  # the documented direction, not hidden
    assert est > 0


def test_matches_sklearn_in_1d():
    pytest.importorskip("sklearn")
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    x, y, _ = gaussian_pair(2000, 1, 0.5, seed=4)
    ours = KSGMI(k=3).estimate(x, y).estimate
    # sklearn adds 1e-10 jitter; the estimates agree to that precision
    theirs = mutual_info_regression(x, y.ravel(), n_neighbors=3, random_state=0)[0]
    assert ours == pytest.approx(theirs, abs=1e-4)
    labels = (x[:, 0] + 0.5 * y[:, 0] > 0).astype(int)
    ours_c = KSGMI(k=3).estimate(y, labels).estimate
    theirs_c = mutual_info_classif(y, labels, n_neighbors=3, random_state=0)[0]
    assert ours_c == pytest.approx(theirs_c, abs=1e-4)


def test_independence_constant_and_tied_inputs_are_finite_and_near_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 2))
    assert abs(KSGMI().estimate(x, rng.normal(size=(3000, 1))).estimate) < 0.02
    assert KSGMI().estimate(np.full(500, 0.3), rng.normal(size=500)).estimate == pytest.approx(
        0.0, abs=1e-9
    )
    relu_a = np.maximum(rng.normal(size=(10000, 1)), 0)  # half the values tied at 0
    relu_b = np.maximum(rng.normal(size=(10000, 1)), 0)
    val = KSGMI().estimate(relu_a, relu_b).estimate
    assert np.isfinite(val) and abs(val) < 0.03


def test_multi_unit_relu_bias_is_upward_as_documented():
    """Several ReLU units put mass on faces of mixed dimension, which neither KSG nor the
    Gao et al. mixture estimator covers: a persistent upward bias at independence."""
    rng = np.random.default_rng(0)
    a = np.maximum(rng.normal(size=(3000, 3)), 0)
    b = np.maximum(rng.normal(size=(3000, 3)), 0)
    val = KSGMI().estimate(a, b).estimate
    assert np.isfinite(val) and 0.05 < val < 0.3


def test_ties_use_mixed_estimator_and_match_plugin_for_discrete_data():
    """Gao et al.: discrete-discrete data gives (a digamma version of) the plug-in MI."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 4000)
    b = (a + (rng.random(4000) < 0.2)) % 4
    ours = KSGMI().estimate(a, b, x_discrete=False, y_discrete=False).estimate
    p = np.histogram2d(a, b, bins=[4, 4])[0] / 4000
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    plugin = float((p[nz] * np.log(p[nz] / (px @ py)[nz])).sum())
    assert ours == pytest.approx(plugin, abs=0.01)


def test_relu_layer_with_point_mass_regression():
    """Regression: tied ReLU zeros must not produce +inf (mutinfo/bmi failure mode)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 1))
    t = np.maximum(x + 0.3 * rng.normal(size=(5000, 1)), 0)
    val = KSGMI().estimate(x, t).estimate
    assert np.isfinite(val) and 0.5 < val < 3.0


def test_symmetry_and_affine_invariance():
    x, y, _ = gaussian_pair(2000, 2, 0.5, seed=2)
    a = KSGMI(precision="float64").estimate(x, y).estimate
    assert KSGMI(precision="float64").estimate(y, x).estimate == pytest.approx(a, abs=1e-12)
    b = KSGMI(precision="float64").estimate(5 * x - 3, 0.01 * y + 100).estimate
    assert b == pytest.approx(a, abs=1e-9)
    # without standardisation a rescaled column changes the answer (NPEET #19)
    raw = KSGMI(standardize=False).estimate(np.c_[x[:, 0] * 100, x[:, 1]], y).estimate
    assert raw != pytest.approx(a, abs=1e-3)


def test_parameters_change_result():
    x, y, _ = gaussian_pair(1500, 2, 0.5, seed=5)
    base = KSGMI(k=3).estimate(x, y).estimate
    assert KSGMI(k=8).estimate(x, y).estimate != base
    ens = KSGMI(k=(3, 8)).estimate(x, y).estimate
    assert ens == pytest.approx((base + KSGMI(k=8).estimate(x, y).estimate) / 2, abs=1e-9)
    assert KSGMI(precision="float64").estimate(x, y).estimate == pytest.approx(base, abs=1e-4)
    two = KSGMI(k=3, variant=2).estimate(x, y).estimate
    assert two != base
    assert KSGMI(k=8, variant=2).estimate(x, y).estimate != two
    with pytest.raises(InvalidParameterError, match="variant must be 1"):
        KSGMI(variant=3).estimate(x, y)
    with pytest.raises(InvalidParameterError, match="variant must be 1"):
        KSGMI(variant=True).estimate(x, y)


def test_permutation_baseline():
    x, y, _ = gaussian_pair(1000, 1, 0.5, seed=6)
    dep = KSGMI(n_permutations=19).estimate(x, y)
    assert dep.details["p_value"] == pytest.approx(0.05)
    assert abs(dep.details["null_mean"]) < 3 * dep.details["null_std"] + 0.01
    rng = np.random.default_rng(0)
    ind = KSGMI(n_permutations=19, seed=1).estimate(x, rng.normal(size=1000))
    assert ind.details["p_value"] > 0.05
    other_seed = KSGMI(n_permutations=19, seed=2).estimate(x, y).details["null_mean"]
    assert other_seed != dep.details["null_mean"]


def test_ross_refuses_mostly_singleton_classes():
    rng = np.random.default_rng(0)
    with pytest.raises(EstimatorRegimeError, match="Ross"):
        KSGMI().estimate(np.arange(300), rng.normal(size=(300, 2)))
    with pytest.raises(InvalidParameterError, match="k must be smaller"):
        KSGMI(k=10).estimate(rng.normal(size=5), rng.normal(size=5))


def test_kl_entropy_of_gaussian_and_refuses_atoms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 2)) * np.array([1.0, 3.0])
    truth = 0.5 * np.log((2 * np.pi * np.e) ** 2 * 9.0)
    assert entropy(x, method="ksg") == pytest.approx(truth, abs=0.05)
    with pytest.raises(EstimatorRegimeError, match="-inf"):
        entropy(np.repeat(rng.normal(size=(100, 1)), 5, axis=0), method="ksg")


def test_torch_input_equals_numpy_input():
    torch = pytest.importorskip("torch")
    x, y, _ = gaussian_pair(800, 2, 0.5, seed=7)
    a = mutual_information(x, y, method="ksg")
    b = mutual_information(torch.from_numpy(x), torch.from_numpy(y).float(), method="ksg")
    assert a == pytest.approx(b, abs=1e-5)
