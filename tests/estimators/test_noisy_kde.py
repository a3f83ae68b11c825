"""Known-channel (noisy) and Kolchinsky-Tracey (kde) estimators against the exact MI of a
stochastic tanh layer on the 12-bit Shwartz-Ziv & Tishby inputs (mixture entropy by
quadrature over the exact mixture)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynalens.errors import EstimatorRegimeError, InvalidParameterError
from dynalens.estimators import KDEMI, NoisyChannelMI, entropy, mutual_information

from ._tasks import mixture_entropy_1d, tishby_data

VAR = 0.01


@pytest.fixture(scope="module")
def layer():
    f, labels = tishby_data()
    w = np.random.default_rng(0).normal(size=(12, 1)) * 0.5
    c = np.tanh(f.astype(float) @ w - 0.3)  # one tanh unit, 4096 centres
    h_t = mixture_entropy_1d(c, VAR)
    i_xt = h_t - 0.5 * math.log(2 * math.pi * math.e * VAR)
    h_t_y = sum((labels == k).mean() * mixture_entropy_1d(c[labels == k], VAR) for k in (0, 1))
    return f, labels, c, i_xt, h_t - h_t_y


def test_ixt_matches_exact_enumeration(layer):
    f, _, c, truth, _ = layer
    res = NoisyChannelMI(noise_var=VAR).estimate(f, c)
    assert abs(res.estimate - truth) < 4 * res.stderr + 0.005
    assert res.stderr < 0.03
    assert "bound_upper" not in res.details  # the leave-one-out pass only in data="sample"


def test_ity_from_class_conditional_mixtures(layer):
    _, labels, c, _, truth = layer
    res = mutual_information(labels, c, noise_var=VAR, return_result=True)
    assert res.method == "noisy"
    assert abs(res.estimate - truth) < 4 * res.stderr + 0.005


def test_entropy_of_mixture(layer):
    _, _, c, truth, _ = layer
    h = entropy(c, noise_var=VAR, return_result=True)
    assert (
        abs(h.estimate - (truth + 0.5 * math.log(2 * math.pi * math.e * VAR)))
        < 4 * h.stderr + 0.005
    )


def test_sample_mode_bounds_bracket_population_mi(layer):
    """Rows as a sample of the 4096 inputs: Poole et al. lower <= I <= upper."""
    f, _, c, truth, _ = layer
    idx = np.random.default_rng(1).choice(len(f), 600, replace=False)
    res = NoisyChannelMI(noise_var=VAR, data="sample").estimate(f[idx], c[idx])
    assert res.lower - 0.03 <= truth <= res.upper + 0.03
    assert res.lower <= math.log(600)


def test_kde_bounds_bracket_truth_and_are_loose(layer):
    f, labels, c, truth, _ = layer
    res = KDEMI(noise_var=VAR).estimate(f, c)
    assert res.lower <= truth <= res.upper
    lab = KDEMI(noise_var=VAR).estimate(labels, c)
    assert lab.lower is None and lab.upper is None  # a difference of bounds is no bound
    assert lab.details["mi_bd"] <= lab.details["mi_kl"]


def test_far_apart_centres_give_log_n_and_coincident_give_zero():
    x = np.arange(8)
    far = np.arange(8.0)[:, None] * 100
    assert NoisyChannelMI(noise_var=1.0).estimate(x, far).estimate == pytest.approx(math.log(8))
    r = KDEMI(noise_var=1.0).estimate(x, far)
    assert r.lower == pytest.approx(math.log(8)) and r.upper == pytest.approx(math.log(8))
    same = np.zeros((8, 2))
    assert NoisyChannelMI(noise_var=1.0).estimate(x, same).estimate == pytest.approx(0, abs=1e-9)
    assert KDEMI(noise_var=1.0).estimate(x, same).estimate == pytest.approx(0, abs=1e-9)


def test_parameters_change_result_and_noise_var_required():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(300, 2))
    x = np.arange(300)
    a = NoisyChannelMI(noise_var=0.1).estimate(x, c).estimate
    assert NoisyChannelMI(noise_var=1.0).estimate(x, c).estimate < a  # more noise, less MI
    assert NoisyChannelMI(noise_var=0.1, seed=1).estimate(x, c).estimate != a
    assert NoisyChannelMI(noise_var=0.1, n_draws=3).estimate(x, c).estimate != a
    assert (
        KDEMI(noise_scale=0.05).estimate(x, c).estimate
        != KDEMI(noise_scale=0.2).estimate(x, c).estimate
    )
    with pytest.raises(InvalidParameterError, match="noise_var"):
        NoisyChannelMI().estimate(x, c)
    with pytest.raises(InvalidParameterError, match="exactly one"):
        KDEMI().estimate(x, c)


def test_adaptive_kde_scales_with_the_layer():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(300, 2))
    x = np.arange(300)
    a = KDEMI(noise_scale=0.1).estimate(x, c).estimate
    assert KDEMI(noise_scale=0.1).estimate(x, 50 * c).estimate == pytest.approx(a, abs=1e-9)


def test_sample_mode_refuses_labels():
    labels = np.arange(100) % 2
    with pytest.raises(EstimatorRegimeError, match="empirical"):
        NoisyChannelMI(noise_var=0.1, data="sample").estimate(labels, np.ones((100, 1)))


def test_nondeterministic_channel_groups():
    """Repeated inputs with different activations: p(t|x) is the mixture of its rows."""
    x = np.repeat(np.arange(2), 2)  # inputs 0,0,1,1
    c = np.array([[0.0], [100.0], [200.0], [300.0]])
    # T identifies the row; X is a coarsening: I = H(X) = log 2
    assert NoisyChannelMI(noise_var=1.0).estimate(x, c).estimate == pytest.approx(math.log(2))


def test_leave_one_out_mixture_is_exact_when_the_own_term_dominates():
    """Regression for the one-pass leave-one-out mixture (paired exclude_self): with tiny
    variance each t_i is nearly all its own centre's mass, the others' share underflows
    float64, and the old "full minus self" form had to recompute rows block by block."""
    import torch
    from scipy.special import logsumexp

    from dynalens.estimators.mi._mixture import log_mixture_loo

    rng = np.random.default_rng(0)
    c = rng.normal(size=(150, 3))
    for var in (1e-6, 1e-2, 1.0):
        t = c + math.sqrt(var) * rng.normal(size=c.shape)
        logits = -((t[:, None, :] - c[None]) ** 2).sum(-1) / (2 * var)
        np.fill_diagonal(logits, -np.inf)
        want = logsumexp(logits, axis=1) - math.log(149) - 1.5 * math.log(2 * math.pi * var)
        got = log_mixture_loo(torch.from_numpy(t), torch.from_numpy(c), var).numpy()
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-10)
