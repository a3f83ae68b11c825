"""Concept bottleneck models in Koh et al.'s three modes, and their intervention curves."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dynalens.concepts import make_tabular_concepts
from dynalens.concepts.models import ConceptBottleneckModel, fit_cbm
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import intervention_curve


def _model(seed: int = 0, bottleneck: str = "prob") -> ConceptBottleneckModel:
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 12))
    head = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    return ConceptBottleneckModel(encoder, head, bottleneck=bottleneck)


@pytest.fixture(scope="module")
def data():
    kw = {"input_noise": 1.0}
    return make_tabular_concepts(2000, seed=0, **kw), make_tabular_concepts(1000, seed=1, **kw)


def test_independent_cbm_reaches_perfect_accuracy_under_full_intervention(data) -> None:
    train, test = data
    model = _model()
    fit_cbm(model, train.x, train.c, train.y, mode="independent", epochs=150)
    with torch.no_grad():
        p = model.concepts(test.x)
    r = intervention_curve(model.head, p, test.c, test.y, groups=[list(g) for g in test.groups])
    curve = r.details["curve"]
    assert r.details["exact"] and curve[-1] == 1.0  # noise-free rule, head fit on true c
    assert curve[0] < 0.99 and (torch.diff(curve) >= 0).all()
    oracle = intervention_curve(
        model.head, p, test.c, test.y, policy="oracle", groups=[list(g) for g in test.groups]
    )
    assert (oracle.details["curve"] >= curve - 1e-12).all()


def test_independent_and_sequential_share_the_encoder_but_not_the_head(data) -> None:
    train, _ = data
    a, b = _model(), _model()
    fit_cbm(a, train.x, train.c, train.y, mode="independent", epochs=20)
    fit_cbm(b, train.x, train.c, train.y, mode="sequential", epochs=20)
    for pa, pb in zip(a.encoder.parameters(), b.encoder.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.head[0].weight, b.head[0].weight)


def test_independent_head_does_not_see_the_encoder(data) -> None:
    train, _ = data
    a, b = _model(seed=0), _model(seed=1)
    b.head.load_state_dict(a.head.state_dict())  # same head init, different encoders
    fit_cbm(a, train.x, train.c, train.y, mode="independent", epochs=10)
    fit_cbm(b, train.x, train.c, train.y, mode="independent", epochs=10)
    for pa, pb in zip(a.head.parameters(), b.head.parameters()):
        assert torch.equal(pa, pb)


def test_joint_training_logs_both_losses_and_weight_zero_ignores_concepts(data) -> None:
    train, _ = data
    model = _model()
    history = fit_cbm(model, train.x, train.c, train.y, mode="joint", epochs=30, batch_size=500)
    assert len(history.concept_loss) == 30 and history.task_loss[-1] < history.task_loss[0]
    free = _model()
    h0 = fit_cbm(free, train.x, train.c, train.y, mode="joint", epochs=30, concept_loss_weight=0.0)
    assert h0.concept_loss == [0.0] * 30
    seq = fit_cbm(_model(), train.x, train.c, train.y, mode="sequential", epochs=5)
    assert all(math.isnan(v) for v in seq.task_loss[:5])
    assert all(math.isnan(v) for v in seq.concept_loss[5:])


def test_bad_settings_refuse(data) -> None:
    train, _ = data
    with pytest.raises(InvalidParameterError, match="bottleneck='prob'"):
        fit_cbm(_model(bottleneck="logit"), train.x, train.c, train.y, mode="independent")
    with pytest.raises(InvalidParameterError, match="mode"):
        fit_cbm(_model(), train.x, train.c, train.y, mode="jointly")
    with pytest.raises(InvalidInputError, match="same n"):
        fit_cbm(_model(), train.x, train.c[:10], train.y)
    with pytest.raises(InvalidInputError, match="binary"):
        fit_cbm(_model(), train.x, train.c * 2, train.y)
    with pytest.raises(InvalidInputError, match="int64"):
        fit_cbm(_model(), train.x, train.c, train.y.float())
