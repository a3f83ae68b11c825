"""Completeness: 1 for a complete bottleneck, the exact AUC-implied value when a rule
concept is dropped, about 0 for noise, PyC's ratio under compat="pyc", bad input."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts import Completeness, completeness_score
from dynalens.estimators.concepts._split import train_test_split


def _or_rule(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concepts c (n, 3), y = c0 OR c1 (c2 is not in the rule), a perfect black box."""
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(n, 3, generator=g) < 0.5).double()
    y = ((c[:, 0] + c[:, 1]) > 0).long()
    blackbox = torch.nn.functional.one_hot(y, 2).double() * 8 - 4
    return c, y, blackbox


def test_a_complete_bottleneck_scores_one() -> None:
    c, y, bb = _or_rule()
    for score in ("accuracy", "auc"):
        r = completeness_score(y, bb, concepts=c, score=score)
        assert r.value == pytest.approx(1.0, abs=1e-12)
        assert r.interval == pytest.approx((1.0, 1.0), abs=1e-12)


def test_dropping_a_rule_concept_lowers_eta_as_the_rule_implies() -> None:
    c, y, bb = _or_rule()
    r = completeness_score(y, bb, concepts=c[:, [0, 2]], score="auc", seed=1)
    # the decoder's score is monotone in c0 and ignores c2 (independent of y):
    # its AUC is c0's own AUC on the test rows (5/6 in expectation)
    _, test = train_test_split(2000, 0.2, 1)
    auc_c0 = roc_auc_score(y[test].numpy(), c[test, 0].numpy())
    assert r.value == pytest.approx((auc_c0 - 0.5) / 0.5, abs=0.02)
    assert 0.55 < r.value < 0.8 and r.interval[0] < r.value < r.interval[1]


def test_noise_concepts_score_about_zero() -> None:
    _, y, bb = _or_rule()
    noise = torch.randn(2000, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    r = completeness_score(y, bb, concepts=noise, score="auc")
    assert abs(r.value) < 0.12 and r.interval[0] < 0.0 < r.interval[1] + 0.05


def test_compat_pyc_is_the_uncorrected_auc_ratio() -> None:
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 2, (500,), generator=g)
    black = torch.sigmoid(2 * y.double() - 1 + torch.randn(500, generator=g, dtype=torch.float64))
    white = torch.sigmoid(y.double() - 0.5 + torch.randn(500, generator=g, dtype=torch.float64))
    r = completeness_score(y, black, y_whitebox=white, logits=False, compat="pyc", n_boot=20)
    ratio = roc_auc_score(y.numpy(), white.numpy()) / (
        roc_auc_score(y.numpy(), black.numpy()) + 1e-10
    )
    assert r.value == pytest.approx(ratio, abs=1e-12)
    corrected = completeness_score(y, black, y_whitebox=white, logits=False, score="auc").value
    assert corrected < r.value  # the chance correction lowers a ratio of AUCs above 0.5


@pytest.mark.slow  # importing torch_concepts takes ~20 s (Lightning)
def test_compat_pyc_equals_pyc_where_installed() -> None:
    functional = pytest.importorskip("torch_concepts.nn.functional")
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 2, (400,), generator=g)
    black = torch.rand(400, generator=g, dtype=torch.float64) * 0.5 + 0.5 * y
    white = torch.rand(400, generator=g, dtype=torch.float64)
    ours = completeness_score(y, black, y_whitebox=white, logits=False, compat="pyc").value
    assert ours == pytest.approx(functional.completeness_score(y, black, white), abs=1e-12)


def test_a_black_box_at_chance_gives_nan_with_a_warning() -> None:
    c, y, _ = _or_rule(n=400)
    at_chance = torch.zeros(400, 2, dtype=torch.float64)
    with pytest.warns(UserWarning, match="no better than chance"):
        r = completeness_score(y, at_chance, concepts=c, score="auc")
    assert r.value != r.value and r.interval is None


def test_parameters_change_the_output_and_bad_input_refuses() -> None:
    c, y, bb = _or_rule(n=600)
    a = completeness_score(y, bb, concepts=c[:, [0]], score="accuracy", seed=0).value
    b = completeness_score(y, bb, concepts=c[:, [0]], score="auc", seed=0).value
    assert a != b
    with pytest.raises(InvalidInputError, match="exactly one"):
        Completeness().estimate(y, bb)
    with pytest.raises(InvalidInputError, match="columns"):
        completeness_score(torch.full((600,), 3), bb, concepts=c)
