"""Every estimator class passes dynalens.testing.check_estimator."""

from __future__ import annotations

import numpy as np
import pytest

from dynalens.estimators import (
    KDEMI,
    KSGMI,
    MINE,
    AdaptiveBinningMI,
    AutoMI,
    BinningMI,
    CauchySchwarzQMI,
    GaussianCopulaMI,
    GaussianMI,
    InfoNCE,
    LossyMI,
    NoisyChannelMI,
    RenyiMI,
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


def test_every_registered_class_is_checked():
    assert {type(e) for e in CHEAP} >= set(REGISTRY.values())


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
