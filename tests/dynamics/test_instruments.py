"""Training-dynamics scalars and Hessian tools against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _dyn_models import ce, mlp, mse, per_example_grads
from torch import nn

from dynalens.dynamics.hessian import hvp, top_hessian_eigenvalue
from dynalens.dynamics.instruments import (
    DynamicsMonitor,
    inner_product_test,
    norm_test,
    sgd_temperature,
)
from dynalens.errors import InvalidParameterError


def _quadratic() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Linear regression: H = XᵀX / n for the mean of 0.5 (xᵀw − y)²."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 4, generator=g, dtype=torch.float64) * torch.tensor(
        [3.0, 1.0, 0.5, 0.1], dtype=torch.float64
    )
    Y = torch.randn(20, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    return model, (X, Y), X.T @ X / len(X)


def test_hvp_and_top_eigenvalue() -> None:
    model, batch, H = _quadratic()
    v = [torch.randn(1, 4, dtype=torch.float64)]
    torch.testing.assert_close(hvp(model, mse, batch, v)[0][0], H @ v[0][0])
    lam = float(torch.linalg.eigvalsh(H)[-1])
    lz = top_hessian_eigenvalue(model, mse, batch, method="lanczos", iters=4)
    assert lz["eigenvalue"] == pytest.approx(lam, rel=1e-8)
    pw = top_hessian_eigenvalue(model, mse, batch, method="power", iters=200, tol=1e-12)
    assert pw["eigenvalue"] == pytest.approx(lam, rel=1e-6)


def test_norm_test_matches_definition() -> None:
    out = norm_test(trace_sigma=8.0, grad_sq=2.0, batch_size=4, theta=0.5)
    assert out["statistic"] == pytest.approx(1.0)
    assert out["passed"] == 0.0
    assert out["suggested_batch_size"] == pytest.approx(16.0)  # B_simple / θ² = 4 / 0.25
    assert sgd_temperature(0.1, 32) == pytest.approx(0.1 / 32)


def test_inner_product_test_against_explicit_per_example_grads() -> None:
    model = mlp()
    x, y = torch.randn(9, 7, dtype=torch.float64), torch.randint(0, 4, (9,))
    out = inner_product_test(model, ce, (x, y), theta=0.7)
    G = per_example_grads(model, ce, x, y)
    gb = G.mean(0)
    var = float((G @ gb).var(unbiased=True))
    want = var / (9 * float(gb @ gb) ** 2)
    assert out["statistic"] == pytest.approx(want, rel=1e-9)
    assert out["suggested_batch_size"] == pytest.approx(want * 9 / 0.49, rel=1e-9)


def test_dynamics_monitor_scalars() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logged: list[tuple[int, dict]] = []

    class Rec:
        def log(self, step: int, **s: float) -> None:
            logged.append((step, s))

    init = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 7, dtype=torch.float64), torch.randint(0, 4, (8,))
    with DynamicsMonitor(
        model, opt, batch_size=8, recorder=Rec(), every=2, hessian_every=4,
        loss_fn=ce, hessian_batch=(x, y), per_param=True,
    ) as mon:  # fmt: skip
        for _ in range(5):
            opt.zero_grad()
            ce(model(x), y).mean().backward()
            gn = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
            before = [p.detach().clone() for p in model.parameters()]
            opt.step()
    assert [s for s, _ in logged] == [0, 2, 4]
    last = mon.compute()
    assert last["dyn.grad_norm"] == pytest.approx(gn)
    du = sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(model.parameters(), before))
    dw = sum(float(b.pow(2).sum()) for b in before)
    assert last["dyn.update_ratio"] == pytest.approx(math.sqrt(du / dw))
    dist = sum(float((p.detach() - i).pow(2).sum()) for p, i in zip(model.parameters(), init))
    assert last["dyn.dist_from_init"] == pytest.approx(math.sqrt(dist))
    assert last["dyn.temperature"] == pytest.approx(0.1 / 8)
    assert "dyn.hessian_top" in last and "dyn.update_ratio.0.weight" in last
    assert "dyn.hessian_top" not in logged[1][1]
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert np.isfinite(last["dyn.hessian_top"])


def test_monitor_validation() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InvalidParameterError, match="hessian_batch"):
        DynamicsMonitor(model, opt, hessian_every=10).attach()
