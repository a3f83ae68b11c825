"""Regression tests: inputs whose cost is far beyond the machine are refused with the cost
model before anything big is allocated (not a raw allocation error or a silent hour)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynalens.errors import EstimatorCostError, EstimatorRegimeError, InvalidParameterError
from dynalens.estimators import BinningWarning, cost_limits, entropy, mutual_information
from dynalens.estimators.mi import _cost

GIB = 2.0**30


def test_gaussian_with_1e5_dims_is_refused_before_allocating_its_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 100_000)).astype(np.float32)  # 8 MB; its covariance: 80 GB
    with cost_limits(max_bytes=16 * GIB), pytest.raises(EstimatorCostError, match="GB") as e:
        mutual_information(x[:, :50_000], x[:, 50_000:], method="gaussian")
    assert "refused before allocating" in str(e.value) and "method='lossy'" in str(e.value)
    with cost_limits(max_bytes=16 * GIB), pytest.raises(EstimatorCostError):
        entropy(x, method="gaussian")


def test_gaussian_d_1e5_is_refused_by_default_too():
    """Without a chosen limit: the device's available memory (or, on a machine with more
    than 240 GB free, the O(d^3) time) refuses it."""
    x = np.zeros((20, 100_000), dtype=np.float32)
    x[np.arange(20), np.arange(20)] = 1.0
    with pytest.raises(EstimatorCostError):
        mutual_information(x[:, :50_000], x[:, 50_000:], method="gaussian")


@pytest.mark.parametrize("bin_range", ["unit", "layer"])
def test_a_billion_bins_are_refused_before_allocating_the_edges(bin_range):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(1000, 5))
    with cost_limits(max_bytes=4 * GIB), pytest.raises(EstimatorCostError, match="n_bins"):
        mutual_information(np.arange(1000) % 4, t, method="binning", n_bins=10**9, range=bin_range)
    with pytest.raises(EstimatorCostError, match="fewer bins"):  # 240 TB: beyond any machine
        mutual_information(np.arange(1000) % 4, t, method="binning", n_bins=10**13)


def test_adaptive_binning_with_many_bins_is_not_refused():
    """Its edges never outnumber the distinct values: a billion bins costs nothing extra."""
    rng = np.random.default_rng(0)
    t = rng.normal(size=(200, 2))
    with pytest.warns(BinningWarning, match="measures the binning"):
        r = mutual_information(
            np.arange(200) % 4, t, method="adaptive_binning", n_bins=10**9, return_result=True
        )
    assert r.estimate == pytest.approx(np.log(4), abs=1e-9)  # every sample its own bin


@pytest.mark.parametrize(
    "call",
    [
        lambda x, c: mutual_information(x, c, noise_var=0.1),
        lambda x, c: mutual_information(x, c, noise_var=0.1, data="sample"),
        lambda x, c: mutual_information(x, c, method="kde", noise_var=0.1),
        lambda x, c: entropy(c, noise_var=0.1),
        lambda x, c: entropy(c, method="kde", noise_var=0.1),
    ],
    ids=["noisy", "noisy-sample", "kde", "noisy-entropy", "kde-entropy"],
)
def test_noisy_and_kde_at_a_million_samples_are_refused_before_starting(call):
    """n = 1e6 is O(1e13) kernel work: hours on a CPU. The predicted time is checked first
    (a limit of 10 s: refused unless the machine had over 140 optimistic threads)."""
    x, c = torch.arange(10**6), torch.randn(10**6, 10)
    with cost_limits(max_seconds=10), pytest.raises(EstimatorCostError) as e:
        call(x, c)
    msg = str(e.value)
    assert "n = 1000000 samples of 10 dims" in msg and "random subset" in msg
    assert "cost_limits(max_seconds=None)" in msg


def test_cost_limits_change_the_outcome_and_are_restored():
    rng = np.random.default_rng(0)
    x, c = np.arange(100), rng.normal(size=(100, 2))
    before = mutual_information(x, c, noise_var=0.1)
    with cost_limits(max_seconds=1e-9), pytest.raises(EstimatorCostError, match="1e-09 s"):
        mutual_information(x, c, noise_var=0.1)
    with cost_limits(max_bytes=1), pytest.raises(EstimatorCostError, match="the cost limit"):
        mutual_information(x, c, method="binning")
    with cost_limits(max_seconds=None, max_bytes=None) as limits:
        assert limits.max_seconds is None
        assert mutual_information(x, c, noise_var=0.1) == before
    assert _cost._LIMITS == _cost.CostLimits()  # restored
    with pytest.raises(InvalidParameterError, match="positive number or None"):
        with cost_limits(max_seconds=-1):
            pass
    assert _cost._LIMITS == _cost.CostLimits()


def test_cost_error_is_a_regime_error_and_a_value_error():
    assert issubclass(EstimatorCostError, EstimatorRegimeError)
    assert issubclass(EstimatorCostError, ValueError)


def test_time_model_scales_with_the_work_and_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    one = _cost.pairwise_seconds(1e6, 10, cpu)
    assert _cost.pairwise_seconds(4e6, 10, cpu) == pytest.approx(4 * one)
    assert _cost.pairwise_seconds(1e6, 10, cuda) < one
    assert _cost.dense_seconds(2e9, cpu) == pytest.approx(2 * _cost.dense_seconds(1e9, cpu))
