"""Noise-scale estimators against problems whose tr Σ and |G|² are exactly known.

Statistical checks: the mean of the per-batch unbiased estimates over R seeded replicate
batches lies within ``Z_TOL`` standard errors (of that mean) of the exact value. With
Z_TOL = 4 a correct estimator fails with probability < 1e-4 per check; the seeds are fixed,
so the tests are deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _dyn_models import mse, per_example_grads
from torch import nn
from torch.nn import functional as F

from dynalens.dynamics import gradient_noise_scale
from dynalens.dynamics.gns import per_example_estimates, two_batch_estimates
from dynalens.errors import InvalidInputError, InvalidParameterError

Z_TOL = 4.0


def _within(values: np.ndarray, exact: float, z: float = Z_TOL) -> None:
    mean = float(np.mean(values))
    se = float(np.std(values, ddof=1) / np.sqrt(len(values)))
    assert abs(mean - exact) <= z * se + 1e-12, (mean, exact, se)


# ----------------------------------------------------------------- linear regression
def _linreg(d: int, delta: torch.Tensor) -> nn.Module:
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((W_STAR + delta)[None])
    return model


D, SIGMA = 4, 0.7
W_STAR = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)


def _linreg_batches(R: int, B: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(R):
        x = torch.randn(B, D, generator=g, dtype=torch.float64)
        y = x @ W_STAR[:, None] + SIGMA * torch.randn(B, 1, generator=g, dtype=torch.float64)
        out.append((x, y))
    return out


def _linreg_exact(delta: torch.Tensor) -> tuple[float, float]:
    """g = (xᵀδ − ε) x, x ~ N(0, I): G = δ, Σ = (|δ|² + σ²) I + δδᵀ (Isserlis)."""
    d2 = float(delta.pow(2).sum())
    return D * (d2 + SIGMA**2) + d2, d2


def _closed_form_estimates(model: nn.Module, batches: list, micro: int | None = None) -> tuple:
    """Per-batch (tr Σ, |G|²) estimates from the closed-form per-example gradients."""
    trs, g2s = [], []
    w = model.weight.detach()[0]
    for x, y in batches:
        g = ((x @ w)[:, None] - y) * x  # [B, D] per-example gradients of 0.5 (xᵀw − y)²
        if micro is None:
            tr, g2 = per_example_estimates(g.pow(2).sum(1).numpy(), g.mean(0).pow(2).sum(), len(g))
        else:
            parts = g.reshape(micro, -1, D).mean(1)
            small = parts.pow(2).sum(1).mean()
            tr, g2 = two_batch_estimates(small, len(g) // micro, g.mean(0).pow(2).sum(), len(g))
        trs.append(float(tr))
        g2s.append(float(g2))
    return np.array(trs), np.array(g2s)


@pytest.mark.parametrize("at_optimum", [False, True])
def test_linear_regression_gaussian_inputs(at_optimum: bool) -> None:
    delta = (
        torch.zeros(D, dtype=torch.float64)
        if at_optimum
        else torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=torch.float64)
    )
    model = _linreg(D, delta)
    batches = _linreg_batches(R=300, B=16, seed=1)
    out = gradient_noise_scale(model, mse, batches)
    trs, g2s = _closed_form_estimates(model, batches)
    # the engine's averages are exactly the averages of the closed-form estimates ...
    assert out["trace_sigma"] == pytest.approx(trs.mean(), rel=1e-9)
    assert out["grad_sq"] == pytest.approx(g2s.mean(), rel=1e-9, abs=1e-12)
    # ... which are within statistical error of the exact values
    tr_exact, g2_exact = _linreg_exact(delta)
    _within(trs, tr_exact)
    _within(g2s, g2_exact)
    if at_optimum:
        assert out["b_simple_high"] == np.inf or out["b_simple_high"] > 1e3
    else:
        assert out["b_simple_low"] <= tr_exact / g2_exact <= out["b_simple_high"]


def test_microbatch_two_batch_estimator_unbiased() -> None:
    delta = torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=torch.float64)
    model = _linreg(D, delta)
    batches = _linreg_batches(R=300, B=16, seed=2)
    out = gradient_noise_scale(model, mse, batches, method="microbatch", n_micro=4)
    trs, g2s = _closed_form_estimates(model, batches, micro=4)
    assert out["trace_sigma"] == pytest.approx(trs.mean(), rel=1e-9)
    tr_exact, g2_exact = _linreg_exact(delta)
    _within(trs, tr_exact)
    _within(g2s, g2_exact)


def test_dividing_by_raw_batch_norm_is_biased() -> None:
    """Regression guard for the common shortcut tr Σ̂ / |G_B|²: it converges to
    B_simple / (1 + B_simple / B), not B_simple."""
    delta = torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=torch.float64)
    model = _linreg(D, delta)
    B = 16
    batches = _linreg_batches(R=400, B=B, seed=3)
    trs, _ = _closed_form_estimates(model, batches)
    w = model.weight.detach()[0]
    raw = np.array([float((((x @ w)[:, None] - y) * x).mean(0).pow(2).sum()) for x, y in batches])
    tr_exact, g2_exact = _linreg_exact(delta)
    b_simple = tr_exact / g2_exact
    naive = trs.mean() / raw.mean()
    assert naive == pytest.approx(b_simple / (1 + b_simple / B), rel=0.1)
    assert naive < 0.7 * b_simple


def test_b_noise_equals_b_simple_when_hessian_is_identity() -> None:
    """Linear regression with x ~ N(0, I): H = I, so tr(HΣ) = tr Σ and GᵀHG = |G|²."""
    delta = torch.tensor([0.3, -0.2, 0.1, 0.4], dtype=torch.float64)
    model = _linreg(D, delta)
    batches = _linreg_batches(R=150, B=16, seed=4)
    out = gradient_noise_scale(model, mse, batches, hessian=True, n_micro=4)
    tr_exact, g2_exact = _linreg_exact(delta)
    per = [
        gradient_noise_scale(model, mse, batches[i : i + 2], hessian=True) for i in range(0, 150, 2)
    ]
    _within(np.array([p["trace_h_sigma"] for p in per]), tr_exact)
    _within(np.array([p["ghg"] for p in per]), g2_exact)
    assert out["b_noise_low"] <= tr_exact / g2_exact <= out["b_noise_high"]


# ----------------------------------------------------------- finite populations
def _finite_population_check(model: nn.Module, loss_fn, X, Y, B: int, R: int, seed: int) -> None:
    G_all = per_example_grads(model, loss_fn, X, Y)  # [N, P], the whole population
    G = G_all.mean(0)
    tr_exact = float((G_all - G).pow(2).sum(1).mean())
    g2_exact = float(G.pow(2).sum())
    gen = torch.Generator().manual_seed(seed)
    trs, g2s = [], []
    for _ in range(R):
        idx = torch.randint(0, len(X), (B,), generator=gen)  # i.i.d. draws (with replacement)
        out = gradient_noise_scale(model, loss_fn, [(X[idx], Y[idx])])
        trs.append(out["trace_sigma"])
        g2s.append(out["grad_sq"])
        assert sum(v["grad_sq"] for v in out["per_param"].values()) == pytest.approx(
            out["grad_sq"], rel=1e-9, abs=1e-12
        )
    _within(np.array(trs), tr_exact)
    _within(np.array(g2s), g2_exact)


def _logistic(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out[:, 0], y, reduction="none")


def test_logistic_regression_finite_population() -> None:
    g = torch.Generator().manual_seed(5)
    X = torch.randn(64, 3, generator=g, dtype=torch.float64)
    Y = X[:, 0] - 0.5 * X[:, 1] + 0.8 * torch.randn(64, generator=g, dtype=torch.float64) > 0
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    _finite_population_check(model, _logistic, X, Y.double(), B=8, R=250, seed=6)


def test_small_mlp_finite_population() -> None:
    g = torch.Generator().manual_seed(7)
    X = torch.randn(40, 3, generator=g, dtype=torch.float64)
    Y = torch.sin(X.sum(1, keepdim=True)) + 0.1 * torch.randn(
        40, 1, generator=g, dtype=torch.float64
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    _finite_population_check(model, mse, X, Y, B=10, R=250, seed=8)


# ------------------------------------------------------------------- contract
def test_contract_keys_and_state_untouched() -> None:
    model = _linreg(D, torch.full((D,), 0.1, dtype=torch.float64))
    model.weight.grad = torch.full_like(model.weight, 3.0)
    before = model.weight.detach().clone()
    out = gradient_noise_scale(model, mse, _linreg_batches(R=3, B=8, seed=9))
    assert {"trace_sigma", "grad_sq", "b_simple", "per_param"} <= set(out)
    assert out["b_simple"] == pytest.approx(out["trace_sigma"] / out["grad_sq"])
    assert torch.equal(model.weight, before)
    assert torch.equal(model.weight.grad, torch.full_like(model.weight, 3.0))
    assert not model._forward_hooks and not model.weight._backward_hooks


def test_metric_scaling() -> None:
    """A uniform metric c·I scales tr Σ and |G|² by c and leaves B_simple unchanged."""
    model = _linreg(D, torch.full((D,), 0.2, dtype=torch.float64))
    batches = _linreg_batches(R=4, B=8, seed=10)
    plain = gradient_noise_scale(model, mse, batches)
    scaled = gradient_noise_scale(
        model, mse, batches, metric={"weight": torch.full((1, D), 2.5, dtype=torch.float64)}
    )
    assert scaled["trace_sigma"] == pytest.approx(2.5 * plain["trace_sigma"], rel=1e-9)
    assert scaled["b_simple"] == pytest.approx(plain["b_simple"], rel=1e-9)


def test_validation_messages() -> None:
    model = _linreg(D, torch.zeros(D, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="non-empty list"):
        gradient_noise_scale(model, mse, [])
    with pytest.raises(InvalidParameterError, match="did you mean"):
        gradient_noise_scale(model, mse, _linreg_batches(1, 8, 0), method="per_exampel")
    with pytest.raises(InvalidInputError, match="divisible"):
        gradient_noise_scale(model, mse, _linreg_batches(1, 7, 0), method="microbatch")
    with pytest.raises(InvalidInputError, match="at least 2 batches"):
        gradient_noise_scale(model, mse, _linreg_batches(1, 8, 0), hessian=True)
