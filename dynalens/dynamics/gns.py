"""Gradient noise scale ``B_simple = tr Σ / |G|²`` (McCandlish et al. 2018, arXiv:1812.06162).

With per-example gradients ``g_i = ∇θ l_i`` (i.i.d. examples), ``G = E g_i`` and
``Σ = Cov g_i``, a mean gradient over ``B`` examples satisfies exactly

    E |G_B|² = |G|² + tr Σ / B                                      (McCandlish App. A.1)

so two batch sizes ``B_small < B_big`` give unbiased estimates (their eqs. A.2-A.3)

    |G|²  ≈ (B_big |G_big|² − B_small |G_small|²) / (B_big − B_small)
    tr Σ  ≈ (|G_small|² − |G_big|²) / (1/B_small − 1/B_big)

Per-example norms are the case ``B_small = 1`` (``|G_small|²`` = mean of ``‖g_i‖²``),
``B_big = B``; micro-batches of gradient accumulation and DDP ranks are the others. The
estimates are averaged over steps (:class:`~dynalens.dynamics.stats.RatioStats`) and only
then divided: ``B_simple = E[tr Σ] / E[|G|²]``. Dividing by the raw ``|G_B|²`` instead
(Cockpit's ``θ²B``) underestimates ``B_simple`` by the factor ``1 / (1 + B_simple/B)``.

Units: ``tr Σ`` and ``|G|²`` in (loss / θ-unit)², ``B_simple`` in examples. The gradient is
that of the per-example loss ``l_i`` returned by ``loss_fn`` (``[B]``): for a per-token
language-model loss, ``l_i`` is whatever per-sequence value you return (sum or mean over
tokens), and the noise scale is counted in those examples.

Options: ``B_noise = tr(HΣ) / (Gᵀ H G)`` (McCandlish eq. 2.7) with Hessian-vector products
(:func:`dynalens.dynamics.hessian.hvp`) evaluated on an independent batch, and a noise
scale in a diagonal metric ``P`` (``tr(PΣ) / GᵀPG``; Adam's preconditioner
``P = 1/(√v̂ + ε)``, see :func:`adam_metric`), which materialises per-example gradients.

Example:
    >>> out = gradient_noise_scale(model, loss_fn, [(x1, y1), (x2, y2)])
    >>> out["b_simple"], out["trace_sigma"], out["grad_sq"]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens._validation import check_bool, check_float, check_int, check_option
from dynalens.dynamics.per_example import PerExampleGradNorms, check_losses
from dynalens.dynamics.stats import RatioStats
from dynalens.errors import InvalidInputError, InvalidParameterError

METHODS = ("per_example", "microbatch")
LossFn = Callable[[Any, Any], torch.Tensor]


def two_batch_estimates(
    small_sq: Any, b_small: Any, big_sq: Any, b_big: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased ``(tr Σ, |G|²)`` from ``|G_small|²`` and ``|G_big|²`` (McCandlish A.2-A.3).

    ``small_sq`` may be a mean of several small-batch squared norms. Array-friendly.
    """
    small_sq, big_sq = np.asarray(small_sq, np.float64), np.asarray(big_sq, np.float64)
    bs, bb = np.asarray(b_small, np.float64), np.asarray(b_big, np.float64)
    if np.any(bb <= bs):
        raise InvalidInputError(
            f"the big batch must be larger than the small one; got B_small={b_small}, "
            f"B_big={b_big}. Use at least 2 examples (or 2 micro-batches) per step."
        )
    trace = (small_sq - big_sq) / (1.0 / bs - 1.0 / bb)
    grad_sq = (bb * big_sq - bs * small_sq) / (bb - bs)
    return trace, grad_sq


def per_example_estimates(
    per_example_sq: Any, batch_grad_sq: Any, batch_size: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``(tr Σ, |G|²)`` from per-example ``‖g_i‖²`` (last axis) and ``|G_B|²``: B_small = 1."""
    small = np.asarray(per_example_sq, np.float64).mean(-1)
    return two_batch_estimates(small, 1.0, batch_grad_sq, batch_size)


def group_by_layer(names: Sequence[str]) -> dict[str, list[str]]:
    """``{"fc1": ["fc1.weight", "fc1.bias"], ...}``: parameters grouped by owning module."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(n.rpartition(".")[0] or n, []).append(n)
    return out


def adam_metric(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Adam's diagonal preconditioner ``1 / (√(v/(1-β₂ᵗ)) + ε)`` per parameter name.

    Pass it as ``metric=`` to measure the noise scale in the metric the update uses.
    Parameters without optimizer state yet get the identity metric.
    """
    out = {}
    eps_of = {id(p): g.get("eps", 1e-8) for g in optimizer.param_groups for p in g["params"]}
    beta2_of = {
        id(p): g.get("betas", (0.9, 0.999))[1] for g in optimizer.param_groups for p in g["params"]
    }
    for name, p in model.named_parameters():
        st = optimizer.state.get(p, {})
        if "exp_avg_sq" not in st:
            out[name] = torch.ones_like(p, dtype=torch.float64)
            continue
        t = float(st["step"])
        v = st["exp_avg_sq"].detach().double() / (1.0 - beta2_of[id(p)] ** t)
        out[name] = 1.0 / (v.sqrt() + eps_of[id(p)])
    return out


class NoiseScaleEstimator:
    """Offline gradient noise scale at a fixed point from i.i.d. batches.

    Args:
        method: ``"per_example"`` (B_small = 1, B_big = B) or ``"microbatch"`` (each batch
            split into ``n_micro`` equal micro-batches: B_small = B/n_micro).
        n_micro: micro-batches per batch for ``"microbatch"`` and for ``hessian=True``.
        hessian: also estimate ``B_noise = tr(HΣ)/(GᵀHG)`` with Hessian-vector products;
            the Hessian of batch k is that of batch k+1 (independent), so ≥ 2 batches.
        metric: optional ``{param name: tensor}`` diagonal metric P (e.g.
            :func:`adam_metric`); materialises per-example gradients with torch.func.
        policy: per-example rule policy, see :class:`PerExampleGradNorms`.
        z: interval half-width in standard errors.
    """

    def __init__(
        self,
        *,
        method: str = "per_example",
        n_micro: int = 4,
        hessian: bool = False,
        metric: dict[str, torch.Tensor] | None = None,
        policy: str = "raise",
        z: float = 1.96,
    ) -> None:
        self.method = method
        self.n_micro = n_micro
        self.hessian = hessian
        self.metric = metric
        self.policy = policy
        self.z = z

    def _validate(self, model: Any, batches: Any) -> list[tuple[Any, Any]]:
        check_option("method", self.method, METHODS)
        check_int("n_micro", self.n_micro, min=2)
        check_bool("hessian", self.hessian)
        check_float("z", self.z, min=0.0)
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(f"model must be an nn.Module; got {type(model).__name__}.")
        batches = list(batches)
        if not batches or not all(isinstance(b, (tuple, list)) and len(b) == 2 for b in batches):
            raise InvalidInputError(
                "batches must be a non-empty list of (inputs, targets) pairs drawn i.i.d.; "
                f"got {type(batches).__name__} of {len(batches)} items."
            )
        if self.hessian and len(batches) < 2:
            raise InvalidInputError(
                "hessian=True needs at least 2 batches (the Hessian of one batch is applied "
                f"to the gradients of another); got {len(batches)}."
            )
        return batches

    def estimate(self, model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> dict:
        """``{"trace_sigma", "grad_sq", "b_simple", "b_simple_low", "b_simple_high",
        "n_batches", "batch_size", "per_param", "left_out", ...}``; parameters and ``.grad``
        untouched. ``left_out``: parameters without per-example norms (see ``policy``),
        left out of every statistic (tr Σ, |G|² and B_simple are those of the others)."""
        batches = self._validate(model, batches)
        self.left_out_: list[str] = []
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        names = [n for n, _ in named]
        stats = RatioStats(len(names) + 1)
        hstats = RatioStats(1) if self.hessian else None
        sizes: list[float] = []
        rows: list[tuple[np.ndarray, np.ndarray, float, float]] = []
        for k, (x, y) in enumerate(batches):
            if self.metric is not None:
                small, big, bs, bb = self._weighted(model, loss_fn, x, y, named)
            elif self.method == "per_example":
                small, big, bs, bb = self._per_example(model, loss_fn, x, y, named)
            else:
                small, big, bs, bb = self._microbatch(model, loss_fn, x, y, named)
            sizes.append(bb)
            rows.append((small, big, bs, bb))
            if hstats is not None:
                from dynalens.dynamics.hessian import noise_quadratic_forms

                hx, hy = batches[(k + 1) % len(batches)]
                qs, qb, b_s, b_b = noise_quadratic_forms(
                    model, loss_fn, (x, y), (hx, hy), self.n_micro
                )
                t, gg = two_batch_estimates(qs, b_s, qb, b_b)
                hstats.update([t], [gg])
        keep = np.array([n not in self.left_out_ for n in names], dtype=np.float64)
        for small, big, bs, bb in rows:  # left out of every batch if left out of one
            small, big = small * keep, big * keep
            tr, g2 = two_batch_estimates(
                np.append(small, small.sum()), bs, np.append(big, big.sum()), bb
            )
            stats.update(tr, g2)
        res = stats.compute(self.z)
        out: dict[str, Any] = {
            "trace_sigma": float(res["x"][-1]),
            "grad_sq": float(res["y"][-1]),
            "b_simple": float(res["ratio"][-1]),
            "b_simple_low": float(res["low"][-1]),
            "b_simple_high": float(res["high"][-1]),
            "n_batches": len(batches),
            "batch_size": float(np.mean(sizes)),
            "left_out": list(self.left_out_),
            "per_param": {
                n: {
                    "trace_sigma": float(res["x"][i]),
                    "grad_sq": float(res["y"][i]),
                    "b_simple": float(res["ratio"][i]),
                }
                for i, n in enumerate(names)
            },
        }
        if hstats is not None:
            h = hstats.compute(self.z)
            out.update(
                trace_h_sigma=float(h["x"][0]),
                ghg=float(h["y"][0]),
                b_noise=float(h["ratio"][0]),
                b_noise_low=float(h["low"][0]),
                b_noise_high=float(h["high"][0]),
            )
        return out

    # ------------------------------------------------------------- one batch
    def _per_example(self, model: nn.Module, loss_fn: LossFn, x: Any, y: Any, named: list) -> Any:
        engine = PerExampleGradNorms(
            model, reduction="sum", policy=self.policy, track_batch_grad=False
        )
        with engine:
            losses = loss_fn(model(x), y)
            check_losses(losses, None)
            B = losses.shape[0]
            grads = torch.autograd.grad(losses.sum(), [p for _, p in named], allow_unused=True)
            cap = engine.collect()
        # a parameter without per-example norms (skipped: no rule under policy='warn';
        # excluded: broadcast batch) is left out of |G_B|² too, never of one side only
        left_out = set(engine.skipped_) | set(engine.excluded_)
        self.left_out_ = sorted(set(getattr(self, "left_out_", [])) | left_out)
        small = np.array(
            [0.0 if n in left_out else cap.per_example[n].mean().item() for n, _ in named]
        )
        big = np.array([0.0 if n in left_out else _sq(g) / B**2 for (n, _), g in zip(named, grads)])
        return small, big, 1.0, float(B)

    def _microbatch(self, model: nn.Module, loss_fn: LossFn, x: Any, y: Any, named: list) -> Any:
        params = [p for _, p in named]
        B = len(x)
        m = self.n_micro
        if B % m:
            raise InvalidInputError(
                f"method='microbatch' splits each batch into n_micro={m} equal parts; a batch "
                f"has {B} examples. Use a batch size divisible by n_micro."
            )
        b = B // m
        total: list[torch.Tensor | None] = [None] * len(params)
        small = np.zeros(len(params))
        for j in range(m):
            losses = loss_fn(model(x[j * b : (j + 1) * b]), y[j * b : (j + 1) * b])
            check_losses(losses, b)
            grads = torch.autograd.grad(losses.sum() / b, params, allow_unused=True)
            small += np.array([_sq(g) for g in grads]) / m
            for i, g in enumerate(grads):
                prev = total[i]
                if g is not None:
                    total[i] = g / m if prev is None else prev + g / m
        big = np.array([_sq(g) for g in total])
        return small, big, float(b), float(B)

    def _weighted(self, model: nn.Module, loss_fn: LossFn, x: Any, y: Any, named: list) -> Any:
        from torch.func import functional_call, grad, vmap

        assert self.metric is not None
        missing = [n for n, _ in named if n not in self.metric]
        if missing:
            raise InvalidParameterError(
                f"metric has no entry for parameters {missing[:5]}; give one tensor per "
                "trainable parameter name, e.g. adam_metric(model, optimizer)."
            )
        params = {n: p.detach() for n, p in named}
        buffers = dict(model.named_buffers())

        def one(p: dict, xi: Any, yi: Any) -> torch.Tensor:
            out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
            return loss_fn(out, yi.unsqueeze(0)).sum()

        per = vmap(grad(one), in_dims=(None, 0, 0), chunk_size=32)(params, x, y)
        small, big = [], []
        for n, _ in named:
            w = self.metric[n].to(per[n].dtype)
            small.append((per[n].pow(2) * w).flatten(1).sum(1).mean().item())
            big.append((per[n].mean(0).pow(2) * w).sum().item())
        return np.array(small), np.array(big), 1.0, float(len(x))


def _sq(g: torch.Tensor | None) -> float:
    return 0.0 if g is None else float(g.detach().double().pow(2).sum())


def gradient_noise_scale(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[tuple[Any, Any]],
    *,
    method: str = "per_example",
    n_micro: int = 4,
    hessian: bool = False,
    metric: dict[str, torch.Tensor] | None = None,
    policy: str = "raise",
    z: float = 1.96,
) -> dict[str, Any]:
    """Gradient noise scale of ``model`` at its current parameters.

    Args:
        model: evaluated in its current mode (``model.eval()`` removes dropout noise).
        loss_fn: ``loss_fn(outputs, targets) -> [B]`` per-example losses ``l_i``.
        batches: list of ``(inputs, targets)`` drawn i.i.d.; more batches, tighter interval.
        method, n_micro, hessian, metric, policy, z: see :class:`NoiseScaleEstimator`.

    Returns:
        dict with ``trace_sigma`` (tr Σ), ``grad_sq`` (|G|²), ``b_simple`` (their ratio,
        averaged before dividing), ``b_simple_low``/``b_simple_high`` (Fieller interval
        over batches), ``n_batches``, ``batch_size``, ``per_param`` (same three per
        parameter), ``left_out`` (parameters left out of every statistic), and with
        ``hessian=True`` also ``trace_h_sigma``, ``ghg``, ``b_noise``.
        The model's parameters and gradients are left as they were.
    """
    est = NoiseScaleEstimator(
        method=method, n_micro=n_micro, hessian=hessian, metric=metric, policy=policy, z=z
    )
    return est.estimate(model, loss_fn, batches)
