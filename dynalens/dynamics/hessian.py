"""Hessian-vector products, the top Hessian eigenvalue and B_noise's quadratic forms.

``H v`` by double backward (Pearlmutter 1994): ``H v = ∇θ (∇θ L · v)``, with ``L`` the
mean per-example loss over a batch. Cost: about two backward passes per product.

* :func:`top_hessian_eigenvalue`: power iteration (the eigenvalue of largest magnitude)
  or Lanczos with full reorthogonalisation (the largest algebraic eigenvalue, from the
  Ritz values of a k-step tridiagonal; Lanczos 1950, as in Ghorbani et al. 2019 and the
  edge-of-stability work of Cohen et al. 2021, where it is compared with 2/lr). Granziol et
  al. (2022, JMLR "Learning rates as a function of batch size") relate the spectrum to the
  batch size. Units: loss / θ-unit².
* :func:`noise_quadratic_forms`: ``vᵀ Ĥ v`` for micro-batch and batch mean gradients, with
  ``Ĥ`` from an independent batch, so ``E[G_bᵀ Ĥ G_b] = GᵀHG + tr(HΣ)/b`` exactly and the
  two-batch formulas give unbiased ``tr(HΣ)`` and ``GᵀHG`` (McCandlish et al. 2018, eq. 2.7
  defines ``B_noise = tr(HΣ)/GᵀHG``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens._validation import check_float, check_int, check_option
from dynalens.dynamics.per_example import check_losses

Vec = list[torch.Tensor]


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _dot(a: Vec, b: Vec) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))  # type: ignore[return-value]


class HVP:
    """``v -> H v`` for the mean loss of one batch (the graph of ∇L is kept and reused)."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], batch: Any):
        x, y = batch
        self.params = _params(model)
        losses = loss_fn(model(x), y)
        check_losses(losses, None)
        self.grads = torch.autograd.grad(losses.mean(), self.params, create_graph=True)
        self.calls = 0

    def __call__(self, v: Vec) -> Vec:
        self.calls += 1
        out = torch.autograd.grad(
            self.grads, self.params, grad_outputs=v, retain_graph=True, allow_unused=True
        )
        return [torch.zeros_like(p) if o is None else o.detach() for o, p in zip(out, v)]


def hvp(model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], batch: Any, v: Vec) -> Vec:
    """One Hessian-vector product ``H v`` (H of the mean loss of ``batch``)."""
    return HVP(model, loss_fn, batch)(v)


def noise_quadratic_forms(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Any,
    hbatch: Any,
    n_micro: int,
) -> tuple[float, float, float, float]:
    """``(mean_j G_jᵀĤG_j, G_BᵀĤG_B, b, B)`` with ``G_j`` micro-batch means of ``batch``."""
    x, y = batch
    B = len(x)
    b = B // n_micro
    params = _params(model)
    micro: list[Vec] = []
    for j in range(n_micro):
        losses = loss_fn(model(x[j * b : (j + 1) * b]), y[j * b : (j + 1) * b])
        grads = torch.autograd.grad(losses.mean(), params, allow_unused=True)
        micro.append([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)])
    big = [sum(gs) / n_micro for gs in zip(*micro)]
    H = HVP(model, loss_fn, hbatch)
    q_small = float(np.mean([float(_dot(g, H(g))) for g in micro]))
    q_big = float(_dot(big, H(big)))
    return q_small, q_big, float(b), float(b * n_micro)


def top_hessian_eigenvalue(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Any,
    *,
    method: str = "lanczos",
    iters: int = 20,
    tol: float = 1e-4,
    seed: int = 0,
) -> dict[str, float]:
    """Top Hessian eigenvalue of the mean loss on ``batch``.

    Args:
        method: ``"lanczos"`` (largest algebraic eigenvalue; ``iters`` Krylov steps) or
            ``"power"`` (largest magnitude; stops when the relative change < ``tol``).
        iters: maximum number of Hessian-vector products.

    Returns:
        ``{"eigenvalue": λ, "hvps": number of products}``.
    """
    check_option("method", method, ("lanczos", "power"))
    iters = check_int("iters", iters, min=1)
    check_float("tol", tol, min=0.0)
    H = HVP(model, loss_fn, batch)
    gen = torch.Generator().manual_seed(int(seed))
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in H.params]
    norm = float(_dot(v, v)) ** 0.5
    v = [x / norm for x in v]
    if method == "power":
        lam = 0.0
        for _ in range(iters):
            hv = H(v)
            new = float(_dot(v, hv))
            n = float(_dot(hv, hv)) ** 0.5
            if n == 0.0:
                return {"eigenvalue": 0.0, "hvps": float(H.calls)}
            v = [x / n for x in hv]
            if abs(new - lam) <= tol * max(abs(new), 1e-30):
                lam = new
                break
            lam = new
        return {"eigenvalue": lam, "hvps": float(H.calls)}
    return {"eigenvalue": _lanczos_top(H, v, iters), "hvps": float(H.calls)}


def _lanczos_top(H: HVP, v: Vec, k: int) -> float:
    basis: list[Vec] = [v]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(k):
        w = H(basis[j])
        a = float(_dot(w, basis[j]))
        alphas.append(a)
        for q in basis:  # full reorthogonalisation (numerically safe for small k)
            c = _dot(w, q)
            w = [wi - c * qi for wi, qi in zip(w, q)]
        bnorm = float(_dot(w, w)) ** 0.5
        if j == k - 1 or bnorm < 1e-10 * max(abs(a), 1.0):
            break
        betas.append(bnorm)
        basis.append([wi / bnorm for wi in w])
    T = np.diag(alphas)
    for i, bv in enumerate(betas[: len(alphas) - 1]):
        T[i, i + 1] = T[i + 1, i] = bv
    return float(np.linalg.eigvalsh(T)[-1])


def flatten(vs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate a list of tensors into one flat vector."""
    return torch.cat([v.reshape(-1) for v in vs])
