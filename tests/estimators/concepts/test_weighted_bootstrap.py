"""Replicates as multiplicity weights over one sort: equal to an explicit resample loop
bit for bit (AUC, accuracy, F1, NIS, the leakage gap), equal to scikit-learn's weighted
AUC, and the faster probe paths equal to the ones they replace."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dynalens.concepts import soft_concepts
from dynalens.estimators.concepts import (
    concept_accuracy,
    concept_auc,
    concept_f1,
    concept_task_leakage,
    niche_impurity_score,
)
from dynalens.estimators.concepts._probe import (
    _multinomial_hessian,
    fit_binary_probes,
    fit_multinomial_probe,
)
from dynalens.estimators.concepts._scores import (
    _replicate_rows,
    auc_columns,
    bootstrap_counts,
    bootstrap_interval,
    macro_ovr_auc,
    weighted_auc_columns,
    weighted_macro_ovr_auc,
)
from dynalens.estimators.concepts._split import train_test_split

accuracy_module = sys.modules["dynalens.estimators.concepts.concept_accuracy"]
niche_module = sys.modules["dynalens.estimators.concepts.niche_impurity"]
leakage_module = sys.modules["dynalens.estimators.concepts.leakage"]


def _data(n: int = 400, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(n, k, generator=g) < 0.4).double()
    p = soft_concepts(c, leak=0.8, seed=seed)
    p[:, 0] = (p[:, 0] * 6).round() / 6  # a column with many ties
    return c, p


@pytest.mark.parametrize("stratified", [False, True])
def test_weighted_auc_equals_an_explicit_resample_loop_exactly(stratified: bool) -> None:
    c, p = _data()
    strata = (c[:, 1] + c[:, 2]).long() if stratified else None
    weights = torch.cat(list(bootstrap_counts(400, strata=strata, n_boot=40, seed=3)))
    loop = torch.stack(
        [auc_columns(c[rows], p[rows]) for rows in _replicate_rows(400, strata, 40, 3)]
    )
    assert torch.equal(weighted_auc_columns(c, p, weights, chunk=997), loop)


def test_weighted_auc_is_nan_for_a_replicate_with_one_class() -> None:
    labels = torch.tensor([[0.0], [1.0], [0.0]])
    scores = torch.tensor([[0.1], [0.9], [0.4]])
    weights = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
    out = weighted_auc_columns(labels, scores, weights)
    assert torch.isnan(out[0, 0]) and out[1, 0] == 1.0


def test_weighted_auc_equals_scikit_learn_with_sample_weights() -> None:
    c, p = _data(n=300, k=3, seed=2)
    w = torch.rand(2, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = weighted_auc_columns(c, p, w)
    for b in range(2):
        for j in range(3):
            ref = roc_auc_score(c[:, j].numpy(), p[:, j].numpy(), sample_weight=w[b].numpy())
            assert abs(float(ours[b, j]) - ref) < 1e-12


def test_weighted_macro_ovr_auc_equals_the_loop() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (300,), generator=g)
    proba = torch.softmax(torch.randn(300, 4, generator=g, dtype=torch.float64), 1)
    weights = torch.cat(list(bootstrap_counts(300, strata=y, n_boot=30, seed=0)))
    loop = [macro_ovr_auc(y[r], proba[r]) for r in _replicate_rows(300, y, 30, 0)]
    assert weighted_macro_ovr_auc(y, proba, weights).tolist() == loop


@pytest.mark.parametrize("metric", [concept_auc, concept_accuracy, concept_f1])
@pytest.mark.parametrize("compat", [None, "cem"])
def test_concept_score_intervals_equal_the_resample_loop(metric, compat) -> None:  # type: ignore[no-untyped-def]
    c, p = _data()
    y = (c[:, 1] + c[:, 3]).long()
    r = metric(c, p, y=y, compat=compat, n_boot=50, seed=4)
    score = r.metric.removeprefix("concept_")
    valid = ~torch.isnan(r.details["per_concept"]["auc"])

    def stat(rows: torch.Tensor) -> float:
        sub = accuracy_module._per_concept(c[rows], p[rows], None, 0.5, compat)[score]
        return accuracy_module._macro(sub, valid & ~torch.isnan(sub))

    assert r.interval == bootstrap_interval(stat, 400, strata=y, n_boot=50, seed=4)


@pytest.mark.parametrize("compat", [None, "cem"])
def test_nis_interval_equals_the_resample_loop(compat: str | None) -> None:
    c, p = _data(n=600)
    r = niche_impurity_score(p, c, n_seeds=1, n_boot=40, compat=compat)
    train, test = train_test_split(600, 0.2, 0)
    betas = r.details["betas"]
    proba, which, inverse = niche_module._niche_probabilities(
        p, c, train, test, betas, 1.0, None, compat == "cem"
    )
    ref = bootstrap_interval(
        lambda rows: niche_module._nis(
            (proba[rows], which, inverse), c[test][rows], betas, compat is None
        )[0],
        len(test),
        strata=None,
        n_boot=40,
        seed=0,
    )
    assert r.interval == pytest.approx(ref, abs=1e-12)


def test_nis_distinct_columns_equal_every_beta_masked_explicitly() -> None:
    c, p = _data(n=500)
    train, test = train_test_split(500, 0.2, 1)
    betas = torch.linspace(0, 1, 11, dtype=torch.float64)
    proba, which, inverse = niche_module._niche_probabilities(p, c, train, test, betas, 1.0)
    theta = fit_binary_probes(p[train][None].expand(5, -1, -1), c[train].T)
    rho = niche_module._correlation(p[train], c[train])
    for b, beta in enumerate(betas):
        for i in range(5):
            keep = (rho[:, i].abs() <= beta).double()
            full = torch.sigmoid(p[test] @ (theta[i, :-1] * keep) + theta[i, -1])
            assert int(which[inverse[b, i]]) == i
            torch.testing.assert_close(proba[:, inverse[b, i]], full, rtol=0, atol=1e-12)


def test_leakage_interval_equals_the_resample_loop() -> None:
    c, _ = _data(n=600)
    y = (c[:, 0] + c[:, 1]).long()
    p = soft_concepts(c, leak=1.0, seed=1)
    r = concept_task_leakage(p, c, y, n_seeds=1, n_boot=40)
    fit = leakage_module._fit(p, (p >= 0.5).double(), c, y, 3, 0.2, 0, 1.0)
    yt, pr = fit["y_test"], fit["proba"]
    ref = bootstrap_interval(
        lambda rows: (
            macro_ovr_auc(yt[rows], pr["soft"][rows]) - macro_ovr_auc(yt[rows], pr["true"][rows])
        ),
        len(yt),
        strata=yt,
        n_boot=40,
        seed=0,
    )
    assert r.interval == pytest.approx(ref, abs=1e-12)


def test_shared_feature_probes_equal_batched_probes() -> None:
    c, p = _data(n=300)
    shared = fit_binary_probes(p, c.T, C=0.5)
    batched = fit_binary_probes(p[None].expand(5, -1, -1), c.T, C=0.5)
    torch.testing.assert_close(shared, batched, rtol=0, atol=1e-9)


def test_multinomial_hessian_equals_the_einsum_definition() -> None:
    g = torch.Generator().manual_seed(0)
    xa = torch.randn(50, 4, generator=g, dtype=torch.float64)
    p = torch.softmax(torch.randn(50, 3, generator=g, dtype=torch.float64), 1)
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    ref = torch.einsum("ia,ist,ib->asbt", xa, a, xa).reshape(12, 12)
    torch.testing.assert_close(_multinomial_hessian(xa, p), ref, rtol=0, atol=1e-12)
    y = torch.randint(0, 3, (50,), generator=g)
    theta = fit_multinomial_probe(xa, y, 3)
    assert np.isfinite(theta.numpy()).all()
