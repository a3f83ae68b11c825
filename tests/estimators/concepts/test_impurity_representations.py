"""OIS / NIS on embedding and list representations and on categorical concepts: m = 1
embeddings equal the scalar scores, pure < leaky holds for embeddings, the one-vs-one AUC
equals scikit-learn's, categorical purity matches probes fitted by scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from dynalens.concepts import make_tabular_concepts, soft_concepts
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts import niche_impurity_score, oracle_impurity_score
from dynalens.estimators.concepts._scores import ovo_auc
from dynalens.estimators.concepts._split import train_test_split


def _embed(soft: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """(n, k, m): each concept's logit spread over m dims by a random map, plus noise."""
    g = torch.Generator().manual_seed(seed)
    logit = torch.logit(soft)
    w = torch.randn(soft.shape[1], m, generator=g, dtype=torch.float64)
    noise = 0.3 * torch.randn(*soft.shape, m, generator=g, dtype=torch.float64)
    return logit[:, :, None] * w + noise


def test_ois_embedding_with_m_1_equals_the_scalar_score() -> None:
    data = make_tabular_concepts(800, seed=0)
    soft = soft_concepts(data.c, signal=1.0, leak=0.7, noise=1.0, seed=0)
    kw = {"n_seeds": 2, "n_boot": 30, "seed": 4}
    scalar = oracle_impurity_score(soft, data.c, **kw)
    emb = oracle_impurity_score(soft[:, :, None], data.c, **kw)
    listed = oracle_impurity_score(list(soft.T), data.c, **kw)
    for r in (emb, listed):
        torch.testing.assert_close(
            r.details["purity"], scalar.details["purity"], rtol=0, atol=1e-12
        )
        torch.testing.assert_close(
            r.details["oracle"], scalar.details["oracle"], rtol=0, atol=1e-12
        )
        assert r.value == pytest.approx(scalar.value, abs=1e-12)
        assert r.interval == pytest.approx(scalar.interval, abs=1e-12)
        assert r.seed_spread["mean"] == pytest.approx(scalar.seed_spread["mean"], abs=1e-12)


def test_nis_embedding_with_m_1_equals_the_scalar_score_exactly() -> None:
    data = make_tabular_concepts(600, seed=1)
    soft = soft_concepts(data.c, signal=1.5, leak=0.8, noise=1.0, seed=1)
    scalar = niche_impurity_score(soft, data.c, n_seeds=2, n_boot=20)
    emb = niche_impurity_score(soft[:, :, None], data.c, n_seeds=2, n_boot=20)
    assert emb.value == scalar.value
    assert emb.interval == scalar.interval
    assert torch.equal(emb.details["impurity_curve"], scalar.details["impurity_curve"])


@pytest.mark.parametrize("metric", [oracle_impurity_score, niche_impurity_score])
def test_pure_embedding_scores_below_a_leaky_one(metric) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    c = (torch.rand(1500, 5, generator=g) < 0.5).double()  # independent concepts
    values = {}
    for leak in (0.0, 1.5):
        soft = soft_concepts(c, signal=2.0, leak=leak, noise=0.5, seed=2)
        r = metric(_embed(soft, 4, seed=3), c, n_seeds=1, n_boot=50)
        values[leak] = r
    assert values[0.0].interval[1] < values[1.5].interval[0]


def test_embedding_purity_is_the_held_out_auc_of_a_scikit_learn_probe() -> None:
    data = make_tabular_concepts(600, seed=3)
    soft = soft_concepts(data.c, signal=1.0, leak=0.8, seed=3)
    emb = _embed(soft, 3, seed=0).numpy()
    c = data.c.numpy()
    r = oracle_impurity_score(emb, c, n_seeds=1, n_boot=0, seed=5)
    train, test = (t.numpy() for t in train_test_split(600, 0.2, 5))
    for i in range(2):
        for j in range(6):
            probe = LogisticRegression(tol=1e-10, max_iter=10000).fit(emb[train, i], c[train, j])
            ref = roc_auc_score(c[test, j], probe.predict_proba(emb[test, i])[:, 1])
            assert r.details["purity"][i, j].item() == pytest.approx(ref, abs=1e-6)


def test_ovo_auc_equals_scikit_learn() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (300,), generator=g)
    logits = torch.randn(300, 4, generator=g, dtype=torch.float64)
    logits[torch.arange(300), y] += 0.8
    proba = torch.softmax(logits, 1)
    ref = roc_auc_score(y.numpy(), proba.numpy(), multi_class="ovo")
    assert ovo_auc(y, proba) == pytest.approx(ref, abs=1e-14)
    rounded = (proba * 10).round() / 10  # ties
    rounded = rounded / rounded.sum(1, keepdim=True)
    ref = roc_auc_score(y.numpy(), rounded.numpy(), multi_class="ovo")
    assert ovo_auc(y, rounded) == pytest.approx(ref, abs=1e-14)


def _categorical_data(n: int, leak: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two categorical concepts (3 and 4 categories) and a binary one; soft
    representation i = one-hot(c_i) @ random map + leak * next concept's one-hot + noise."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, s, (n,), generator=g) for s in (3, 4, 2)], 1)
    reps = []
    for i, s in enumerate((3, 4, 2)):
        nxt = (i + 1) % 3
        own = torch.nn.functional.one_hot(codes[:, i], s).double()
        other = torch.nn.functional.one_hot(codes[:, nxt], (3, 4, 2)[nxt]).double()
        x = 2 * own @ torch.randn(s, 2, generator=g, dtype=torch.float64)
        x = x + leak * other @ torch.randn(other.shape[1], 2, generator=g, dtype=torch.float64)
        reps.append(x + torch.randn(n, 2, generator=g, dtype=torch.float64))
    return codes, torch.stack(reps, 1)


def test_categorical_purity_matches_scikit_learn_softmax_probes() -> None:
    codes, emb = _categorical_data(600, leak=1.0, seed=0)
    r = oracle_impurity_score(emb, codes, categorical=True, n_seeds=1, n_boot=0, seed=2)
    train, test = (t.numpy() for t in train_test_split(600, 0.2, 2))
    x, c = emb.numpy(), codes.numpy()
    for i in range(3):
        for j in (0, 1):
            probe = LogisticRegression(tol=1e-12, max_iter=10000).fit(x[train, i], c[train, j])
            ref = roc_auc_score(c[test, j], probe.predict_proba(x[test, i]), multi_class="ovo")
            assert r.details["purity"][i, j].item() == pytest.approx(ref, abs=1e-6)
    assert r.details["cardinalities"] == [3, 4, 2]
    assert r.details["oracle"].diagonal().eq(1).all()


def test_categorical_leak_raises_ois() -> None:
    codes, emb = _categorical_data(1000, 0.0, 1)
    pure = oracle_impurity_score(emb, codes, categorical=True, n_seeds=1, n_boot=30)
    codes, emb = _categorical_data(1000, 2.0, 1)
    leaky = oracle_impurity_score(emb, codes, categorical=True, n_seeds=1, n_boot=30)
    assert pure.interval[1] < leaky.interval[0]


def test_bad_representations_are_refused() -> None:
    data = make_tabular_concepts(200, seed=0)
    with pytest.raises(InvalidInputError, match="3 concept representations"):
        oracle_impurity_score(torch.zeros(200, 3, 2), data.c, n_boot=0)
    with pytest.raises(InvalidInputError, match="categorical concept codes"):
        oracle_impurity_score(torch.zeros(200, 4, 2), data.c * 0.5, categorical=True)
    with pytest.raises(InvalidInputError, match="rows"):
        niche_impurity_score([torch.zeros(199, 2)] * data.c.shape[1], data.c)
    codes = torch.zeros(200, 2, dtype=torch.int64)
    codes[:, 0] = torch.arange(200) % 3
    codes[:100, 1] = 1
    codes[0, 0] = 7  # a category with one member
    with pytest.raises(InvalidInputError, match="concept 0 = category 7 has 1 member"):
        oracle_impurity_score(torch.randn(200, 2, 2), codes, categorical=True)
    with pytest.raises(InvalidInputError, match="shape = category 7 has 1 member"):
        niche_impurity_score(
            torch.randn(200, 2, 2), codes, categorical=True, names=["shape", "size"]
        )


def test_categorical_nis_on_binary_concepts_equals_the_binary_score() -> None:
    g = torch.Generator().manual_seed(4)
    c = (torch.rand(800, 5, generator=g) < 0.5).double()
    soft = soft_concepts(c, signal=1.5, leak=0.8, noise=0.7, seed=4)
    binary = niche_impurity_score(soft, c, n_seeds=2, n_boot=20)
    categorical = niche_impurity_score(soft, c, categorical=True, n_seeds=2, n_boot=20)
    assert categorical.value == pytest.approx(binary.value, abs=1e-12)
    assert categorical.interval == pytest.approx(binary.interval, abs=1e-12)
    torch.testing.assert_close(
        categorical.details["impurity_curve"], binary.details["impurity_curve"], atol=1e-12, rtol=0
    )


def test_categorical_nis_matches_a_loop_with_scikit_learn_softmax_probes() -> None:
    codes, emb = _categorical_data(600, leak=1.0, seed=5)
    beta = 0.3
    r = niche_impurity_score(
        emb, codes, categorical=True, betas=[0.0, beta, 1.0], n_seeds=1, n_boot=0, seed=1
    )
    train, test = (t.numpy() for t in train_test_split(600, 0.2, 1))
    x = emb.reshape(600, -1).numpy()  # concept j = features 2j, 2j + 1
    c = codes.numpy()
    aucs = []
    for i, size in enumerate((3, 4, 2)):
        probe = LogisticRegression(tol=1e-10, max_iter=10000).fit(x[train], c[train, i])
        onehot = np.eye(size)[c[train, i]]
        xt = x[test].copy()
        for j in range(3):
            rho = max(
                abs(np.corrcoef(x[train, f], onehot[:, v])[0, 1])
                for f in (2 * j, 2 * j + 1)
                for v in range(size)
            )
            if rho > beta:
                xt[:, 2 * j : 2 * j + 2] = 0.0
        proba = probe.predict_proba(xt)
        auc = roc_auc_score(c[test, i], proba[:, 1] if size == 2 else proba, multi_class="ovo")
        aucs.append(auc)
    assert r.details["impurity_curve"][1].item() == pytest.approx(np.mean(aucs), abs=1e-6)


def test_categorical_leak_raises_nis() -> None:
    codes, emb = _categorical_data(1000, 0.0, 6)
    pure = niche_impurity_score(emb, codes, categorical=True, n_seeds=1, n_boot=30)
    codes, emb = _categorical_data(1000, 2.0, 6)
    leaky = niche_impurity_score(emb, codes, categorical=True, n_seeds=1, n_boot=30)
    assert pure.interval[1] < leaky.interval[0]
