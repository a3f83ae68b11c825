"""Cheap per-step training-dynamics scalars, logged beside the noise scale.

* gradient norm ``‖∇L‖`` (before clipping: read in the optimizer pre-step hook, after any
  ``clip_grad_norm_`` -- pass ``clip_aware=False`` semantics are not needed: the value is
  what the optimizer receives);
* update-to-weight ratio ``‖θ_{t+1} − θ_t‖ / ‖θ_t‖`` per step (total and per parameter);
* distance from initialisation ``‖θ_t − θ_0‖`` with ``log t`` beside it: Hoffer, Hubara &
  Soudry (2017, "Train longer, generalize better", NeurIPS) find it grows like ``log t``;
* SGD temperature ``T = lr / B`` (Sclocchi, Geiger & Wyart 2023, "Dissecting the effects of
  SGD noise in distinct regimes of deep learning", ICML);
* top Hessian eigenvalue (power iteration or Lanczos on HVPs; compare with ``2/lr``, the
  edge of stability of Cohen et al. 2021; Granziol et al. 2022 for its batch dependence);
* adaptive-batch tests: the norm test (Byrd, Chin, Nocedal & Wu 2012, Math. Prog.) and the
  inner-product test (Bollapragada, Byrd & Nocedal 2018, SIAM J. Optim.; AdAdaGrad, Lau et
  al. 2024), driven by unbiased statistics.

:class:`DynamicsMonitor` hooks ``optimizer.step`` (pre and post), so the loop needs no new
calls. Units: norms in θ units; ratios dimensionless; ``T`` in lr-units per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dynalens._validation import check_float, check_int
from dynalens.dynamics.per_example import check_losses
from dynalens.errors import InvalidParameterError, exit_context
from dynalens.probe.schedules import as_schedule


def grad_norm(model: nn.Module) -> float:
    """``‖∇L‖`` over all parameters with a gradient."""
    sq = sum(float(p.grad.detach().double().pow(2).sum()) for p in model.parameters()
             if p.grad is not None)  # fmt: skip
    return math.sqrt(sq)


def sgd_temperature(lr: float, batch_size: float) -> float:
    """``T = lr / B`` (Sclocchi et al. 2023)."""
    return float(lr) / float(batch_size)


def norm_test(
    trace_sigma: float, grad_sq: float, batch_size: float, theta: float = 0.9
) -> dict[str, float]:
    """Norm test (Byrd et al. 2012, eq. 3.3 in expectation): ``tr Σ / B ≤ θ² |G|²``.

    Returns ``statistic = tr Σ / (B |G|²)`` (= B_simple / B), ``passed`` (1.0 / 0.0) and
    ``suggested_batch_size = tr Σ / (θ² |G|²)`` (= B_simple / θ²). Use unbiased
    ``tr Σ``, ``|G|²`` (e.g. from the noise-scale instrument), not Cockpit's biased θ.
    """
    check_float("theta", theta, min=0.0, min_inclusive=False)
    stat = trace_sigma / (batch_size * grad_sq) if grad_sq > 0 else math.inf
    return {
        "statistic": stat,
        "passed": float(stat <= theta**2),
        "suggested_batch_size": stat * batch_size / theta**2,
    }


def inner_product_test(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Any,
    theta: float = 0.9,
) -> dict[str, float]:
    """Inner-product test (Bollapragada et al. 2018, eq. 3.7):
    ``Var_i(g_iᵀ G_B) / B ≤ θ² |G_B|⁴``.

    The per-example ``g_iᵀ G_B`` come from one forward-mode pass (a JVP of the per-example
    losses along ``G_B``), so no per-example gradient is materialised. Returns
    ``statistic = Var/(B |G_B|⁴)``, ``passed`` and ``suggested_batch_size = Var/(θ²|G_B|⁴)``.
    """
    from torch.func import functional_call, jvp

    check_float("theta", theta, min=0.0, min_inclusive=False)
    x, y = batch
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    losses = loss_fn(model(x), y)
    check_losses(losses, None)
    B = losses.shape[0]
    grads = torch.autograd.grad(losses.mean(), list(named.values()))
    v = {n: g.detach() for n, g in zip(named, grads)}
    gsq = float(sum(g.double().pow(2).sum() for g in v.values()))
    params = {n: p.detach() for n, p in named.items()}
    buffers = dict(model.named_buffers())

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(model, (p, buffers), (x,)), y)

    dots = jvp(f, (params,), (v,))[1]
    var = float(dots.double().var(unbiased=True))
    stat = var / (B * gsq * gsq) if gsq > 0 else math.inf
    return {
        "statistic": stat,
        "passed": float(stat <= theta**2),
        "suggested_batch_size": stat * B / theta**2,
    }


class DynamicsMonitor:
    """Per-step scalars from optimizer hooks: grad norm, update/weight, distance from
    init, temperature, and (optionally) the top Hessian eigenvalue.

    Args:
        model, optimizer: the training pair; ``optimizer.step`` is hooked.
        batch_size: examples per optimizer step (for ``T = lr/B``); optional.
        every: schedule of measured steps.
        recorder: anything with ``log(step, **scalars)``.
        hessian_every: schedule for the top eigenvalue (None: never); needs
            ``loss_fn`` and ``hessian_batch`` (a fixed ``(x, y)``).
        hessian_iters: Lanczos steps.
        per_param: also log update/weight per parameter.
        prefix: scalar name prefix.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        batch_size: int | None = None,
        every: Any = 1,
        recorder: Any = None,
        hessian_every: Any = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        hessian_batch: Any = None,
        hessian_iters: int = 10,
        per_param: bool = False,
        prefix: str = "dyn",
        start_step: int = 0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.every = every
        self.recorder = recorder
        self.hessian_every = hessian_every
        self.loss_fn = loss_fn
        self.hessian_batch = hessian_batch
        self.hessian_iters = hessian_iters
        self.per_param = per_param
        self.prefix = prefix
        self.start_step = start_step
        self._handles: list[Any] = []

    def attach(self) -> DynamicsMonitor:
        """Validate, snapshot θ_0 and hook the optimizer; returns self."""
        self.schedule_ = as_schedule(self.every)
        self.hessian_schedule_ = (
            as_schedule(self.hessian_every) if self.hessian_every is not None else None
        )
        if self.hessian_schedule_ is not None and (
            self.loss_fn is None or self.hessian_batch is None
        ):
            raise InvalidParameterError(
                "hessian_every needs loss_fn= (per-example losses [B]) and hessian_batch=(x, y)."
            )
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, min=1)
        check_int("hessian_iters", self.hessian_iters, min=1)
        self._named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self._init = [p.detach().clone() for _, p in self._named]
        self._prev: list[torch.Tensor] | None = None
        self._step = self.start_step
        self._latest: dict[str, float] = {}
        self._handles = [
            self.optimizer.register_step_pre_hook(lambda o, a, k: self._pre()),
            self.optimizer.register_step_post_hook(lambda o, a, k: self._post()),
        ]
        return self

    def detach(self) -> None:
        """Remove the optimizer hooks."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> DynamicsMonitor:
        return self.attach()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        exit_context(self.detach, exc)  # an error raised inside the block comes out on top

    def _pre(self) -> None:
        self._prev = None
        if self.schedule_(self._step):
            self._gnorm = grad_norm(self.model)
            self._prev = [p.detach().clone() for _, p in self._named]

    def _post(self) -> None:
        step, self._step = self._step, self._step + 1
        if self._prev is None:
            return
        P = self.prefix
        du = dw = dist = 0.0
        out: dict[str, float] = {f"{P}.grad_norm": self._gnorm}
        for (name, p), before, init in zip(self._named, self._prev, self._init):
            now = p.detach()
            d = float((now - before).double().pow(2).sum())
            w = float(before.double().pow(2).sum())
            du, dw = du + d, dw + w
            dist += float((now - init).double().pow(2).sum())
            if self.per_param:
                out[f"{P}.update_ratio.{name}"] = math.sqrt(d / w) if w > 0 else math.inf
        out[f"{P}.update_ratio"] = math.sqrt(du / dw) if dw > 0 else math.inf
        out[f"{P}.dist_from_init"] = math.sqrt(dist)
        out[f"{P}.log_step"] = math.log(step + 1)
        lr = float(self.optimizer.param_groups[0]["lr"])
        out[f"{P}.lr"] = lr
        if self.batch_size is not None:
            out[f"{P}.temperature"] = sgd_temperature(lr, self.batch_size)
        if self.hessian_schedule_ is not None and self.hessian_schedule_(step):
            from dynalens.dynamics.hessian import top_hessian_eigenvalue

            assert self.loss_fn is not None
            lam = top_hessian_eigenvalue(
                self.model, self.loss_fn, self.hessian_batch, iters=self.hessian_iters
            )["eigenvalue"]
            out[f"{P}.hessian_top"] = lam
            out[f"{P}.hessian_top_x_lr"] = lam * lr  # 2 = edge of stability for GD
        self._prev = None
        self._latest = out
        if self.recorder is not None:
            self.recorder.log(step, **out)

    def compute(self) -> dict[str, float]:
        """Scalars of the latest measured step."""
        return dict(self._latest)
