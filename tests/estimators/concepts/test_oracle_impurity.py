"""Oracle Impurity Score: the probe against scikit-learn, the rank shortcut against the
probe's own AUC, pure < leaky, leak and co-occurrence monotonicity, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dynalens.concepts import make_tabular_concepts, soft_concepts
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import OracleImpurity, oracle_impurity_score
from dynalens.estimators.concepts._probe import (
    fit_binary_probes,
    fit_multinomial_probe,
    predict_binary,
    predict_multinomial,
)
from dynalens.estimators.concepts._split import train_test_split


def test_binary_probes_match_scikit_learn() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 300, 2, generator=g, dtype=torch.float64)
    y = (x[..., 0] + 0.5 * torch.randn(3, 300, generator=g, dtype=torch.float64) > 0.3).double()
    theta = fit_binary_probes(x, y, C=0.7)
    for b in range(3):
        ref = LogisticRegression(C=0.7, tol=1e-12, max_iter=10000).fit(x[b], y[b])
        np.testing.assert_allclose(theta[b, :2], ref.coef_[0], atol=1e-6)
        np.testing.assert_allclose(theta[b, 2], ref.intercept_[0], atol=1e-6)
        np.testing.assert_allclose(
            predict_binary(theta, x)[b], ref.predict_proba(x[b])[:, 1], atol=1e-7
        )


def test_multinomial_probe_matches_scikit_learn() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 3, generator=g, dtype=torch.float64)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = (x @ w + torch.randn(400, 4, generator=g, dtype=torch.float64)).argmax(1)
    theta = fit_multinomial_probe(x, y, 4)
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(predict_multinomial(theta, x), ref.predict_proba(x), atol=1e-6)


def test_separable_probe_stays_finite_and_converges() -> None:
    x = torch.tensor([[[0.0], [0.0], [1.0], [1.0]]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    theta = fit_binary_probes(x, y)
    ref = LogisticRegression().fit(x[0], y[0])
    assert theta[0, 0].item() == pytest.approx(ref.coef_[0, 0], abs=1e-4)


def test_purity_matrix_equals_the_probes_held_out_auc() -> None:
    data = make_tabular_concepts(600, seed=0)
    soft = soft_concepts(data.c, signal=1.0, leak=0.8, noise=1.0, seed=0)
    r = oracle_impurity_score(soft, data.c, n_seeds=1, n_boot=0, seed=3)
    train, test = train_test_split(600, 0.2, 3)
    c = data.c.double()
    for i, j in [(0, 0), (0, 1), (4, 2), (11, 0)]:
        theta = fit_binary_probes(soft[train, i][None, :, None], c[train, j][None])
        proba = predict_binary(theta, soft[test, i][None, :, None])[0]
        assert r.details["purity"][i, j].item() == pytest.approx(
            roc_auc_score(c[test, j], proba), abs=1e-12
        )


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_closed_form_probe_direction_equals_the_fitted_probes_sign(C: float) -> None:
    from dynalens.estimators.concepts.oracle_impurity import _pairwise_probe_directions

    data = make_tabular_concepts(500, rho=0.5, seed=1)
    c = data.c.double()
    soft = soft_concepts(c, signal=1.0, leak=0.7, noise=1.0, seed=2)
    train, _ = train_test_split(500, 0.2, 0)
    sign = _pairwise_probe_directions(soft, c, train)
    k = c.shape[1]
    x = soft[train].T.repeat_interleave(k, 0)[..., None]
    theta = fit_binary_probes(x, c[train].T.repeat(k, 1), C=C)
    assert torch.equal(torch.sign(theta[:, 0]).reshape(k, k), sign)


def test_pure_representation_scores_below_leaky_ones_and_leak_raises_ois() -> None:
    data = make_tabular_concepts(2000, seed=0)
    values, intervals = [], []
    for leak in (0.0, 0.5, 1.0, 2.0):
        soft = soft_concepts(data.c, signal=2.0, leak=leak, noise=0.5, seed=1)
        r = oracle_impurity_score(soft, data.c, n_seeds=3, n_boot=100)
        values.append(r.value)
        intervals.append(r.interval)
        assert r.seed_spread["sd"] < 0.02
    assert values == sorted(values)
    assert intervals[0][1] < intervals[1][0]  # pure and leaky intervals do not overlap
    # leakage sits where the leak goes: column j carries concept j + 1
    soft = soft_concepts(data.c, signal=2.0, leak=2.0, noise=0.5, seed=1)
    leakage = oracle_impurity_score(soft, data.c, n_seeds=1, n_boot=0).details["leakage"]
    assert leakage[0, 1] > 0.05  # circle's column leaks square (and, through the
    assert leakage[0, 8:].max() < 0.02  # exclusive group, triangle), not position


def test_co_occurrence_raises_the_oracle_while_a_pure_representation_stays_pure() -> None:
    oracle, ois = [], []
    for rho in (0.0, 0.5, 0.9):
        data = make_tabular_concepts(2000, rho=rho, seed=0)
        soft = soft_concepts(data.c, signal=4.0, noise=0.3, seed=1)
        r = oracle_impurity_score(soft, data.c, n_seeds=1, n_boot=0)
        oracle.append(r.details["oracle"][0, 3].item())  # circle -> red
        ois.append(r.value)
    assert oracle == sorted(oracle) and oracle[-1] > 0.9
    assert max(ois) < 0.06 and max(ois) - min(ois) < 0.01


def test_include_diagonal_false_ignores_own_concept_weakness() -> None:
    g = torch.Generator().manual_seed(0)
    c = (torch.rand(2000, 6, generator=g) < 0.5).double()  # independent concepts
    weak = soft_concepts(c, signal=0.5, noise=1.0, seed=0)
    with_diag = oracle_impurity_score(weak, c, n_seeds=1, n_boot=0)
    without = oracle_impurity_score(weak, c, n_seeds=1, n_boot=0, include_diagonal=False)
    assert with_diag.value > 0.2 and without.value < with_diag.value / 2


def test_constant_concept_in_a_split_refuses_naming_the_metric() -> None:
    data = make_tabular_concepts(200, seed=0)
    c = data.c.clone()
    c[:, 5] = 0
    with pytest.raises(InvalidInputError, match="Oracle Impurity Score needs both classes"):
        oracle_impurity_score(soft_concepts(c), c)
    c[:3, 5] = 1  # three positives: a 20 % test split expects 0.6 of them
    with pytest.raises(InvalidInputError, match="only 3 sample"):
        oracle_impurity_score(soft_concepts(c), c)


def test_constant_in_the_drawn_split_refuses_with_the_seed() -> None:
    c = torch.zeros(100, 2)
    c[::2, 0] = 1
    c[:10, 1] = 1  # 10 positives: the check passes, a split may still miss them
    soft = soft_concepts(c)
    for seed in range(50):
        _train, test = train_test_split(100, 0.2, seed)
        if c[test, 1].sum() == 0:
            with pytest.raises(InvalidInputError, match=f"test split \\(seed={seed}\\)"):
                oracle_impurity_score(soft, c, seed=seed, n_seeds=1)
            return
    pytest.fail("no seed drew a test split without a positive")


def test_bad_input_refuses() -> None:
    data = make_tabular_concepts(200, seed=0)
    soft = soft_concepts(data.c)
    with pytest.raises(InvalidInputError, match="one soft column per concept"):
        oracle_impurity_score(soft[:, :5], data.c)
    with pytest.raises(InvalidInputError, match="binary"):
        oracle_impurity_score(soft, data.c + 0.5)
    with pytest.raises(InvalidInputError, match="NaN"):
        oracle_impurity_score(soft * float("nan"), data.c)
    with pytest.raises(InvalidParameterError, match="test_size"):
        OracleImpurity(test_size=1.5).estimate(soft, data.c)
