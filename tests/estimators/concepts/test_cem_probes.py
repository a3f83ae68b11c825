"""compat="cem" probes of OIS / NIS: equal to explicit per-pair / scikit-learn loops of
the same probes with the same seeds; the cem OIS probe does not separate pure from leaky
at n = 500 (the default does) but does at n = 10k (bench_concepts' finding); bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier

from dynalens.concepts import soft_concepts
from dynalens.errors import InvalidParameterError
from dynalens.estimators.concepts import niche_impurity_score, oracle_impurity_score
from dynalens.estimators.concepts._split import train_test_split


def _data(n: int, k: int, leak: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(n, k, generator=g) < 0.5).double()
    return soft_concepts(c, signal=2.0, leak=leak, noise=1.0, seed=seed + 1), c


def _loop_purity(x: torch.Tensor, c: torch.Tensor, seed: int) -> np.ndarray:
    """cem's OIS probe trained pair by pair, each network with its own Adam: the seeded
    draws of the library (all W1, then all W2, then one shuffle per epoch)."""
    train, test = train_test_split(len(c), 0.2, seed)
    k_x, k = x.shape[1], c.shape[1]
    g = torch.Generator().manual_seed(seed)
    w1_all = torch.randn(k_x * k, 1, 32, generator=g) * 2**0.5
    w2_all = torch.randn(k_x * k, 32, 1, generator=g) / 32**0.5
    perms = [train[torch.randperm(len(train), generator=g)] for _ in range(25)]
    batch = min(512, len(train))
    out = np.zeros((k_x, k))
    for i in range(k_x):
        for j in range(k):
            p = i * k + j
            w1, w2 = w1_all[p].clone().requires_grad_(), w2_all[p].clone().requires_grad_()
            b1, b2 = torch.zeros(1, 32, requires_grad=True), torch.zeros(1, 1, requires_grad=True)
            opt = torch.optim.Adam([w1, b1, w2, b2], lr=1e-3)
            xi, yj = x[:, i : i + 1].float(), c[:, j : j + 1].float()
            for perm in perms:
                for lo in range(0, len(perm), batch):
                    rows = perm[lo : lo + batch]
                    logit = torch.relu(xi[rows] @ w1 + b1) @ w2 + b2
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, yj[rows])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            with torch.no_grad():
                score = (torch.relu(xi[test] @ w1 + b1) @ w2 + b2)[:, 0]
            out[i, j] = roc_auc_score(c[test, j].numpy(), score.numpy())
    return out


@pytest.mark.parametrize("n", [300, 1500])  # one full batch; 512-row mini-batches
def test_cem_ois_equals_explicit_loop(n: int) -> None:
    soft, c = _data(n, 2, 0.5, seed=n)
    r = oracle_impurity_score(soft, c, compat="cem", seed=4, n_seeds=1, n_boot=0)
    purity = _loop_purity(soft, c, 4)
    oracle = _loop_purity(c, c, 4 + 1_000_000)
    np.fill_diagonal(oracle, 1.0)
    np.testing.assert_allclose(r.details["purity"].numpy(), purity, atol=1e-6)
    np.testing.assert_allclose(r.details["oracle"].numpy(), oracle, atol=1e-6)
    assert r.value == pytest.approx(np.linalg.norm(oracle - purity) / 1.0, abs=1e-6)
    assert r.params["compat"] == "cem"
    kw = {"compat": "cem", "seed": 4, "n_seeds": 1, "n_boot": 0}
    off = oracle_impurity_score(soft, c, include_diagonal=False, **kw)
    np.fill_diagonal(purity, 1.0)
    assert off.value == pytest.approx(np.linalg.norm(oracle - purity), abs=1e-6)


def test_cem_nis_equals_scikit_learn_loop() -> None:
    soft, c = _data(600, 3, 0.5, seed=2)
    r = niche_impurity_score(soft, c, compat="cem", seed=1, n_seeds=1, n_boot=0)
    train, test = train_test_split(600, 0.2, 1)
    probe = MLPClassifier((20, 20), random_state=1, max_iter=1000)
    with warnings.catch_warnings():  # cem uses an unconverged probe as it is
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(soft[train].numpy(), c[train].numpy())
    rho = np.corrcoef(soft[train].numpy().T, c[train].numpy().T)[:3, 3:]
    betas = np.arange(20) / 20
    curve = []
    for beta in betas:
        aucs = []
        for i in range(3):
            masked = soft[test].numpy().copy()
            masked[:, np.abs(rho[:, i]) > beta] = 0.0
            aucs.append(roc_auc_score(c[test, i].numpy(), probe.predict_proba(masked)[:, i]))
        curve.append(np.mean(aucs))
    np.testing.assert_allclose(r.details["impurity_curve"].numpy(), curve, atol=1e-12)
    assert r.value == pytest.approx(float(np.trapezoid(curve, betas)), abs=1e-12)


def _separates(n: int, compat: str | None, seeds: int) -> bool:
    pure, leaky = _data(n, 4, 0.0), _data(n, 4, 0.5)
    kw = {"compat": compat, "n_seeds": seeds, "n_boot": 0}
    vp = oracle_impurity_score(*pure, **kw).seed_spread["values"]
    vl = oracle_impurity_score(*leaky, **kw).seed_spread["values"]
    return max(vp) < min(vl)


def test_cem_ois_probe_separates_only_at_large_n() -> None:
    assert _separates(500, None, 4)
    assert not _separates(500, "cem", 4)
    assert _separates(10_000, None, 3)
    assert _separates(10_000, "cem", 3)


def test_cem_compat_refuses_what_cem_does_not_handle() -> None:
    soft, c = _data(200, 2, 0.0)
    with pytest.raises(InvalidParameterError, match="compat='cem'"):
        oracle_impurity_score(soft[:, :, None], c, compat="cem")
    with pytest.raises(InvalidParameterError, match="compat"):
        oracle_impurity_score(soft, c, compat="kerras")
    with pytest.raises(InvalidParameterError, match="compat='cem'"):
        niche_impurity_score(soft, c.long(), compat="cem", categorical=True)
