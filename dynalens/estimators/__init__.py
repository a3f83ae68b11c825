"""Estimators: mutual information (the information plane), concept metrics, similarity.

Mutual information and entropy, in nats::

    from dynalens.estimators import mutual_information, entropy
    mutual_information(x, t)                        # auto: picks a valid estimator
    mutual_information(x, t_clean, noise_var=1e-3)  # known-channel estimate of a noisy layer
    KSGMI(k=5).estimate(x, t)                       # class API: an MIResult record

Heavy dependencies (scipy, scikit-learn, triton) are imported only when a method needs them.
"""

from __future__ import annotations

from dynalens.estimators.mi import (
    KDEMI,
    KSGMI,
    METHODS,
    MINE,
    NSBMI,
    PYMMI,
    AdaptiveBinningMI,
    AutoMI,
    BinningMI,
    BinningWarning,
    CauchySchwarzQMI,
    ChaoShenMI,
    CoincidenceMI,
    GaussianCopulaMI,
    GaussianMI,
    GrassbergerMI,
    InfoNCE,
    LossyMI,
    MIEstimator,
    MIResult,
    NoisyChannelMI,
    ObservedNoisyMI,
    RenyiMI,
    ZeroSplitMI,
    cost_limits,
    entropy,
    make_estimator,
    mutual_information,
    select_method,
)

__all__ = [
    "KDEMI",
    "KSGMI",
    "METHODS",
    "MINE",
    "NSBMI",
    "PYMMI",
    "AdaptiveBinningMI",
    "AutoMI",
    "BinningMI",
    "BinningWarning",
    "CauchySchwarzQMI",
    "ChaoShenMI",
    "CoincidenceMI",
    "GaussianCopulaMI",
    "GaussianMI",
    "GrassbergerMI",
    "InfoNCE",
    "LossyMI",
    "MIEstimator",
    "MIResult",
    "NoisyChannelMI",
    "ObservedNoisyMI",
    "RenyiMI",
    "ZeroSplitMI",
    "cost_limits",
    "entropy",
    "make_estimator",
    "mutual_information",
    "select_method",
]
