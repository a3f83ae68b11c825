"""Niche Impurity Score: chance level outside the niche of a pure representation, a
per-concept loop as ground truth, leak monotonicity, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dynalens.concepts import soft_concepts
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import NicheImpurity, niche_impurity_score
from dynalens.estimators.concepts._split import train_test_split


def _independent(n: int = 2000, k: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, k, generator=g) < 0.5).double()


def test_pure_representation_is_at_chance_below_its_own_correlation() -> None:
    c = _independent()
    soft = soft_concepts(c, signal=2.0, noise=0.5, seed=1)
    r = niche_impurity_score(soft, c, n_seeds=1, n_boot=0)
    own = min(float(np.corrcoef(soft[:, i], c[:, i])[0, 1]) for i in range(6))
    betas, curve = r.details["betas"], r.details["impurity_curve"]
    below = betas < own - 0.05
    assert below.sum() >= 10
    assert (curve[below] - 0.5).abs().max() < 0.03
    assert curve[-1] > 0.95  # beta = 1: empty niches, the full probe


def test_impurity_curve_matches_a_per_concept_loop_with_scikit_learn_probes() -> None:
    c = _independent(n=600)
    soft = soft_concepts(c, signal=1.0, leak=1.0, noise=1.0, seed=2)
    beta = 0.3
    r = niche_impurity_score(soft, c, betas=[0.0, beta, 1.0], n_seeds=1, n_boot=0, seed=4)
    train, test = train_test_split(600, 0.2, 4)
    aucs = []
    for i in range(6):
        probe = LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(soft[train], c[train, i])
        rho = [np.corrcoef(soft[train, j], c[train, i])[0, 1] for j in range(6)]
        x = soft[test].clone()
        for j in range(6):
            if abs(rho[j]) > beta:
                x[:, j] = 0.0
        aucs.append(roc_auc_score(c[test, i], probe.predict_proba(x.numpy())[:, 1]))
    assert r.details["impurity_curve"][1].item() == pytest.approx(np.mean(aucs), abs=1e-6)


def test_leak_raises_nis() -> None:
    c = _independent()
    results = [
        niche_impurity_score(
            soft_concepts(c, signal=2.0, leak=leak, noise=0.5, seed=1), c, n_seeds=3, n_boot=100
        )
        for leak in (0.0, 0.5, 1.0, 2.0)
    ]
    values = [r.value for r in results]
    assert values == sorted(values)
    assert results[0].interval[1] < results[2].interval[0]
    assert all(r.seed_spread["sd"] < 0.03 for r in results)


def test_compat_cem_integrates_to_0_95_without_normalising() -> None:
    c = _independent(n=800)
    soft = soft_concepts(c, signal=1.5, leak=1.0, noise=0.7, seed=3)
    cem = niche_impurity_score(soft, c, compat="cem", n_seeds=1, n_boot=0)
    curve = cem.details["impurity_curve"]
    assert cem.params["betas"] == [i / 20 for i in range(20)]
    # cem's loop: auc += (prev + value) * delta / 2
    expected = sum((curve[i - 1] + curve[i]).item() * 0.05 / 2 for i in range(1, 20))
    assert cem.value == pytest.approx(expected, abs=1e-12)
    assert cem.params["probe"].startswith("cem MLPClassifier")  # its probe: test_cem_probes.py
    with pytest.raises(InvalidParameterError, match="not both"):
        NicheImpurity(compat="cem", betas=[0.0, 1.0]).estimate(soft, c)


def test_bad_input_refuses() -> None:
    c = _independent(n=200)
    soft = soft_concepts(c)
    with pytest.raises(InvalidParameterError, match="betas"):
        NicheImpurity(betas=[0.5, 0.2]).estimate(soft, c)
    with pytest.raises(InvalidInputError, match="one soft column per concept"):
        niche_impurity_score(soft[:, :2], c)
    c[:, 1] = 1
    with pytest.raises(InvalidInputError, match="Niche Impurity Score needs both classes"):
        niche_impurity_score(soft, c)
    with pytest.raises(InvalidInputError, match=r"probabilities|binary"):
        niche_impurity_score(soft, c * 3)
