"""Every estimator class passes dynalens.testing.check_estimator."""

from __future__ import annotations

import numpy as np
import pytest

from dynalens.estimators import (
    KDEMI,
    KSGMI,
    MINE,
    NSBMI,
    PYMMI,
    AdaptiveBinningMI,
    AutoMI,
    BinningMI,
    CauchySchwarzQMI,
    ChaoShenMI,
    CoincidenceMI,
    GaussianCopulaMI,
    GaussianMI,
    GrassbergerMI,
    InfoNCE,
    LossyMI,
    NoisyChannelMI,
    ObservedNoisyMI,
    RenyiMI,
    ZeroSplitMI,
)
from dynalens.estimators.mi.auto import REGISTRY
from dynalens.testing.estimators import check_estimator

CHEAP = [
    BinningMI(n_bins=5),
    AdaptiveBinningMI(n_bins=5),
    KSGMI(),
    KSGMI(k=(2, 4), precision="float64"),
    GaussianMI(),
    GaussianCopulaMI(),
    NoisyChannelMI(noise_var=0.1),
    KDEMI(noise_var=0.1),
    KDEMI(noise_scale=0.05),
    LossyMI(n_components=1),
    RenyiMI(),
    CauchySchwarzQMI(),
    InfoNCE(n_steps=10, batch_size=32),
    MINE(n_steps=10, batch_size=32),
    AutoMI(),
]


@pytest.mark.parametrize("est", CHEAP, ids=lambda e: type(e).__name__)
def test_check_estimator(est):
    check_estimator(est)


def _symbols(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Discrete, dependent, undersampled symbols for the count-based estimators."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 300, n)
    return x, np.where(rng.random(n) < 0.2, rng.integers(0, 300, n), x // 2)


#: the count-based estimators take discrete data only
DISCRETE = [GrassbergerMI(), ChaoShenMI(), NSBMI(alphabet_size=300), PYMMI()]
#: checked in test_zero_split.py / test_observed_noisy.py / test_coincidence.py on their own data
OTHER = [ZeroSplitMI(), ObservedNoisyMI(noise_var=1.0), CoincidenceMI()]


@pytest.mark.parametrize("est", DISCRETE, ids=lambda e: type(e).__name__)
def test_check_estimator_discrete(est):
    check_estimator(est, _symbols())


def test_every_registered_class_is_checked():
    assert {type(e) for e in CHEAP + DISCRETE + OTHER} >= set(REGISTRY.values())


def test_check_estimator_catches_a_broken_estimator():
    class Broken(GaussianMI):
        name = "broken"

        def __init__(self, bias_correction: bool = True) -> None:
            self.bias_correction = bias_correction
            self.fitted_ = 1  # __init__ must store parameters only

    with pytest.raises(AssertionError, match="__init__ sets attributes"):
        check_estimator(Broken())


def test_check_estimator_catches_false_symmetry():
    class Lopsided(GaussianMI):
        name = "lopsided"

        def _estimate(self, vx, vy, params):
            res = super()._estimate(vx, vy, params)
            return self._result(res.estimate + float(np.mean(vx.data.numpy())), res.n, params)

    with pytest.raises(AssertionError, match="symmetric"):
        check_estimator(Lopsided(), (np.arange(50.0) / 7, np.sin(np.arange(50.0))))
