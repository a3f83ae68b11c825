"""Regression tests: the known-channel estimators keep the bounds they can know and refuse
a noise variance below the resolution of their arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynalens.errors import EstimatorRegimeError
from dynalens.estimators import KDEMI, NoisyChannelMI, entropy, mutual_information
from dynalens.estimators.mi._mixture import LOGIT_TOL, logit_rounding
from dynalens.kernels.gauss_lse import gauss_lse, gauss_lse_reference


def tanh_layer(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return x, np.tanh(x @ rng.normal(size=(3, 5)))


@pytest.mark.parametrize("noise_var", [1e-20, 1e-100])
def test_noise_below_float64_resolution_is_refused(noise_var):
    """noise_var=1e-20 on 200 samples returned 3456 nats (1e-100: 3.4e83) where
    I(X;T) <= log 200 = 5.3."""
    x, c = tanh_layer()
    with pytest.raises(EstimatorRegimeError, match="below the resolution of float64") as e:
        mutual_information(x, c, noise_var=noise_var)
    assert "H(X) = 5.298" in str(e.value)  # the limit it tends to, and what to pass instead
    with pytest.raises(EstimatorRegimeError, match="below the resolution"):
        mutual_information(x, c, method="kde", noise_var=noise_var)
    with pytest.raises(EstimatorRegimeError, match="below the resolution"):
        entropy(c, noise_var=noise_var)


def test_smallest_resolvable_noise_gives_h_x_exactly():
    """Just above the refusal threshold the components are separated: I(X;T) = log n."""
    x, c = tanh_layer()
    c64 = torch.from_numpy(c)
    var = 1e-12
    assert logit_rounding(c64, var) < LOGIT_TOL
    r = mutual_information(x, c, noise_var=var, return_result=True)
    assert r.estimate <= math.log(200)
    assert r.estimate == pytest.approx(math.log(200), abs=1e-9)
    assert r.details["h_x"] == pytest.approx(math.log(200))


@pytest.mark.parametrize("noise_var", [1e-12, 1e-6, 1e-3, 1e-1, 10.0])
def test_estimate_never_exceeds_h_x(noise_var):
    x, c = tanh_layer()
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
    p = np.bincount(labels) / len(labels)
    h_y = float(-(p * np.log(p)).sum())
    r_x = mutual_information(x, c, noise_var=noise_var, return_result=True)
    r_y = mutual_information(labels, c, noise_var=noise_var, return_result=True)
    assert r_x.estimate <= math.log(200) + 1e-12
    assert r_y.estimate <= h_y + 1e-12
    assert r_y.details["h_x"] == pytest.approx(h_y)
    # with labels and tiny noise every sample sits on its own class: I(T;Y) = H(Y)
    if noise_var <= 1e-6:
        assert r_y.estimate == pytest.approx(h_y, abs=1e-6)


def test_sample_mode_lower_bound_is_at_most_log_n_and_saturation_refused():
    x, c = tanh_layer()
    r = mutual_information(x, c, noise_var=0.01, data="sample", return_result=True)
    assert r.lower <= math.log(200) <= r.details["log_n"] + 1e-12
    assert r.lower <= r.estimate <= r.upper
    with pytest.raises(EstimatorRegimeError, match="saturates at log n"):
        mutual_information(x, c, noise_var=1e-6, data="sample")


@pytest.mark.parametrize("d, scale", [(1, 1.0), (5, 100.0), (50, 1.0)])
@pytest.mark.parametrize("rel_var", [1e-9, 1e-12])
def test_rounding_model_bounds_the_measured_kernel_error(d, scale, rel_var):
    """The resolution rule is only as good as its error model: compare gauss_lse (float64)
    with its direct-difference reference on points t = c + noise."""
    g = torch.Generator().manual_seed(0)
    c = scale * torch.randn(300, d, dtype=torch.float64, generator=g)
    r2 = float((c - c.mean(0)).pow(2).sum(1).max())
    var = rel_var * r2
    t = c + math.sqrt(var) * torch.randn(300, d, dtype=torch.float64, generator=g)
    err = float((gauss_lse(t, c, var=var) - gauss_lse_reference(t, c, var=var)).abs().max())
    predicted = logit_rounding(c, var)
    assert err <= predicted
    assert err >= predicted / 20  # and not so loose that it refuses good variances


def test_noisy_class_api_reports_the_rounding_it_accepted():
    x, c = tanh_layer()
    r = NoisyChannelMI(noise_var=0.01).estimate(x, c)
    assert 0 < r.details["logit_rounding"] < LOGIT_TOL
    assert KDEMI(noise_var=0.01).estimate(x, c).upper <= math.log(200) + 1e-12
