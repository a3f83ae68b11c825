"""ECBM concept importance: compat="ecbm" equals the released script's frequencies on a
hand-computed example, the default is the model's exact conditionals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dynalens.concepts.models import EnergyCBM
from dynalens.concepts.models.energy_importance import (
    energy_concept_importance,
    importance_from_predictions,
)
from dynalens.errors import InvalidInputError, InvalidParameterError

C_PRED = [[1, 0], [1, 0], [0, 1], [1, 1]]
Y_PRED = [0, 0, 1, 1]


def test_ecbm_frequencies_computed_by_hand() -> None:
    r = importance_from_predictions(C_PRED, Y_PRED, compat="ecbm")
    # distinct configurations in np.unique order: 01, 10, 11
    assert r["configs"].tolist() == np.unique(np.array(C_PRED), axis=0).tolist()
    assert r["configs"].tolist() == [[0, 1], [1, 0], [1, 1]]
    assert r["p_config"].tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 3])  # / 3 distinct
    assert r["joint"].tolist() == [[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]  # p(C | y)
    assert r["marginal"].tolist() == [[1.0, 0.0], [0.5, 1.0]]  # p(c_k = 1 | y)
    assert r["p_y"].tolist() == [0.5, 0.5]
    default = importance_from_predictions(C_PRED, Y_PRED)
    assert default["p_config"].tolist() == [0.25, 0.5, 0.25]  # / n: sums to 1
    assert torch.equal(default["joint"], r["joint"])


def test_only_predicted_classes_appear() -> None:
    r = importance_from_predictions([[1], [0], [1]], [2, 2, 5], compat="ecbm")
    assert r["classes"].tolist() == [2, 5]
    assert r["marginal"].tolist() == [[0.5], [1.0]]


def test_model_default_is_exact_and_compat_counts_predictions() -> None:
    torch.manual_seed(0)
    model = EnergyCBM(nn.Linear(4, 6), 6, 3, 2)
    exact = model.concept_given_class()
    out = energy_concept_importance(model)
    assert torch.equal(out["marginal"], exact["marginal"])
    assert torch.equal(out["joint"], exact["p_c_given_y"])
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    log_y, p_c = model.posterior(x)
    ecbm = energy_concept_importance(model, x, compat="ecbm")
    ref = importance_from_predictions((p_c >= 0.5).double(), log_y.argmax(1), compat="ecbm")
    for key in ref:
        assert torch.equal(ecbm[key], ref[key])
    with pytest.raises(InvalidInputError, match="pass x"):
        energy_concept_importance(model, compat="ecbm")
    with pytest.raises(InvalidParameterError, match="compat"):
        importance_from_predictions(C_PRED, Y_PRED, compat="cem")
