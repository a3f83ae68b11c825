"""Gibbs sampling for energy CBMs: at small k the Gibbs marginals converge to exact
enumeration within their Monte Carlo standard errors, errors shrink with samples, the
sampler is seeded, k > 16 runs by Gibbs and refuses exact enumeration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynalens.concepts.models import EnergyCBM
from dynalens.concepts.models.energy_gibbs import gibbs_concept_given_class, gibbs_posterior
from dynalens.concepts.models.energy_importance import energy_concept_importance
from dynalens.errors import EstimatorRegimeError


def _model(k: int, t: int = 3, seed: int = 0) -> EnergyCBM:
    torch.manual_seed(seed)
    glob = nn.Sequential(nn.Linear(k, 16), nn.Tanh(), nn.Linear(16, t))
    with torch.no_grad():
        for p in glob.parameters():
            p.mul_(5.0)  # strong couplings: a non-trivial p(c | y)
    return EnergyCBM(nn.Linear(5, 8), 8, k, t, global_energy=glob, lambda_c=0.8, lambda_g=1.2)


def test_gibbs_marginals_converge_to_exact_enumeration() -> None:
    model = _model(10)
    exact = model.concept_given_class()
    errors, ses = [], []
    for n_samples in (20, 1280):
        g = gibbs_concept_given_class(
            model, n_samples=n_samples, burn_in=50, n_chains=8, max_se=None
        )
        err = (g["marginal"] - exact["marginal"]).abs()
        # every entry within 5 standard errors (+ a floor for entries with se ~ 0)
        assert bool((err <= 5 * g["marginal_se"] + 2e-3).all())
        assert float((g["pair"] - exact["pair"]).abs().max()) < 6 * float(g["pair_se"].max()) + 2e-3
        errors.append(float(err.max()))
        ses.append(float(g["marginal_se"].max()))
    assert errors[1] < errors[0] / 3  # 64x samples: error ~ 8x smaller
    assert ses[1] < ses[0] / 4
    assert errors[1] < 0.01
    torch.testing.assert_close(g["given_concept"], exact["given_concept"], atol=0.03, rtol=0)


def test_gibbs_posterior_converges_to_the_exact_posterior() -> None:
    model = _model(6, seed=1)
    x = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    written = torch.zeros(5, 6, dtype=torch.bool)
    written[:, 2] = True
    values = torch.ones(5, 6)
    log_y, p_c = model.posterior(x, values, written)
    g = gibbs_posterior(model, x, values, written, n_samples=800, burn_in=50, n_chains=6)
    assert bool(((g["proba_y"] - log_y.exp()).abs() <= 5 * g["proba_y_se"] + 2e-3).all())
    assert bool(((g["concepts"] - p_c).abs() <= 5 * g["concepts_se"] + 2e-3).all())
    assert bool((g["concepts"][:, 2] == 1).all()) and bool((g["concepts_se"][:, 2] == 0).all())


def test_seeded_and_warns_when_the_standard_error_is_too_large() -> None:
    model = _model(5)
    a = gibbs_concept_given_class(model, n_samples=20, burn_in=0, seed=3, max_se=None)
    b = gibbs_concept_given_class(model, n_samples=20, burn_in=0, seed=3, max_se=None)
    assert torch.equal(a["marginal"], b["marginal"])
    with pytest.warns(RuntimeWarning, match="standard error"):
        gibbs_concept_given_class(model, n_samples=5, burn_in=0, n_chains=2, max_se=1e-4)


def test_beyond_16_concepts_exact_refuses_and_gibbs_runs() -> None:
    model = _model(20, t=2)
    with pytest.raises(EstimatorRegimeError, match="gibbs"):
        model.concept_given_class()
    with pytest.raises(EstimatorRegimeError, match="k = 20"):
        model.posterior(torch.zeros(2, 5))
    out = energy_concept_importance(model, n_samples=100, burn_in=10, n_chains=4, max_se=None)
    assert out["marginal"].shape == (2, 20) and bool((out["marginal_se"] > 0).all())
    post = gibbs_posterior(model, torch.zeros(3, 5), n_samples=30, burn_in=5, max_se=None)
    torch.testing.assert_close(post["proba_y"].sum(1), torch.ones(3, dtype=torch.float64))
