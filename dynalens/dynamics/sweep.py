"""Batch-size sweep: steps and examples to reach target losses, per batch size.

For every batch size ``B`` (and every learning rate of its rule, and every seed) the
harness trains a fresh copy of the model (same initialisation for every run of a seed)
with batches drawn i.i.d. with replacement from the training data -- the sampling
McCandlish et al.'s analysis and the noise scale assume -- and records, for each target
loss ``L``, the steps ``S`` and examples ``E = B·S`` to reach it. The tables feed
:func:`dynalens.dynamics.cbs.fit_critical_batch_size` (``B_crit = E_min / S_min``).

**Which loss crosses the target.** The loss of a fixed evaluation set (default: the whole
training set, i.e. the objective SGD minimises), evaluated in eval mode at geometrically
spaced steps (every ``max(1, ⌈eval_resolution · t⌉)`` steps: a constant *relative*
resolution, about ``ln(S)/eval_resolution`` evaluations per run), with the crossing step
interpolated linearly in log-loss between evaluations. Not an EMA of the training loss:
(i) the EMA lags by about ``1/(1 − β)`` steps for every ``B``, a larger share of the few
steps of large-batch runs, which biases ``S_min`` up; (ii) the mini-batch loss has a
variance ``∝ 1/B``, so a noisy small-batch run crosses a threshold early by chance. The
evaluation set has the same noise for every run and no lag. (Zhang et al. 2024 cross on
an EWA of the weights; here the raw weights are evaluated.)

**Learning rate per batch size** (``lr_rule``): ``"grid"`` trains every learning rate of
``lr_grid`` at every ``B`` and keeps, per (B, target, seed), the fastest -- the steps of a
tuned run, as in McCandlish et al.; the table flags a best rate at the edge of the grid.
``"linear"`` uses ``lr · B / B_base`` (Goyal et al. 2017), ``"sqrt"`` uses
``lr · √(B / B_base)`` (Krizhevsky 2014; Malladi et al. 2022 for adaptive optimisers).

**B_simple along training.** Runs at ``gns_batch_size`` carry a
:class:`~dynalens.dynamics.gns_live.GradientNoiseScaleMonitor` (per-example norms, every
step, before the update). ``B_simple`` at a loss ``L`` is ``Σ tr Σ_s / Σ |G|²_s`` over
the steps ``s ∈ [t_L / w, t_L · w]`` around the crossing step ``t_L`` (``w =
gns_window``; a symmetric window in log-steps, so no lag), with Fieller's interval.

Example:
    >>> res = batch_size_sweep(make_model, (x, y), loss_fn, [16, 64, 256], [0.5, 0.3],
    ...                        lr_rule="grid", lr_grid=[0.05, 0.1, 0.2], max_steps=2000)
    >>> res.table                      # B, target, seed, lr, steps, examples
    >>> res.fit()                      # B_crit per target, with B_simple at that loss
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens._optional import require
from dynalens._validation import check_bool, check_float, check_int, check_option
from dynalens.errors import InvalidInputError, InvalidParameterError

LR_RULES = ("grid", "linear", "sqrt")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Any, float], torch.optim.Optimizer]


@dataclass
class SweepResult:
    """Tables of a :func:`batch_size_sweep` (pandas DataFrames).

    Attributes:
        table: one row per (batch_size, target, seed): the ``lr`` used (the fastest of the
            grid), ``steps`` and ``examples`` to the target (nan: not reached),
            ``lr_at_edge`` (grid: the best rate is the smallest or largest tried).
        runs: one row per (batch_size, lr, seed, target): every run's crossing.
        curves: one row per evaluation: batch_size, lr, seed, step, examples, loss.
        b_simple: one row per (target, seed) for the runs at ``gns_batch_size`` that
            define ``table``: ``b_simple``, ``b_simple_low``, ``b_simple_high``, the window.
        b_simple_curve: ``B_simple`` (same windows) at every evaluation of those runs
            (the reference runs whose rate was the fastest for at least one target).
        config: the sweep's arguments (JSON-friendly).
        store_path: the dynalens store with one run per (batch_size, lr, seed), or None.
    """

    table: Any
    runs: Any
    curves: Any
    b_simple: Any
    b_simple_curve: Any
    config: dict[str, Any] = field(default_factory=dict)
    store_path: str | None = None

    def fit(self, *, bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> Any:
        """McCandlish fit per target (:func:`~dynalens.dynamics.cbs.fit_critical_batch_size`),
        Zhang's CBS (model and data), and ``B_simple`` at the same loss; a DataFrame.

        ``b_simple`` is the median over seeds of the reference runs; ``b_simple_low`` /
        ``b_simple_high`` the lowest and highest ends of their Fieller intervals.
        """
        from dynalens.dynamics.cbs import cbs_zhang_data, fit_critical_batch_size

        pd = require("pandas", "SweepResult.fit")
        rows = []
        for target, part in self.table.groupby("target", sort=True):
            row: dict[str, Any] = {"target": float(target)}
            try:
                f = fit_critical_batch_size(
                    part["batch_size"], part["steps"], bootstrap=bootstrap, seed=seed, level=level
                )
            except InvalidInputError as exc:  # too few batch sizes reached this target
                row.update(b_crit=math.nan, note=str(exc))
                rows.append(row)
                continue
            row.update(
                s_min=f.s_min,
                e_min=f.e_min,
                b_crit=f.b_crit,
                b_crit_low=f.b_crit_interval[0],
                b_crit_high=f.b_crit_interval[1],
                cbs_zhang_model=f.cbs_zhang(),
                cbs_zhang_data=cbs_zhang_data(part["batch_size"], part["steps"]),
                n_points=len(f.steps),
                n_dropped=f.n_dropped,
                max_relative_residual=float(np.abs(f.residuals).max()),
            )
            rows.append(row)
        out = pd.DataFrame(rows)
        if len(self.b_simple):
            gns = self.b_simple.groupby("target", as_index=False).agg(
                b_simple=("b_simple", "median"),
                b_simple_low=("b_simple_low", "min"),
                b_simple_high=("b_simple_high", "max"),
            )
            out = out.merge(gns, on="target", how="left")
        return out


def _eval_loss(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        loss = float(loss_fn(model(x), y).mean())
    model.train(was)
    return loss


def _crossings(steps: list[int], losses: list[float], targets: Sequence[float]) -> list[float]:
    """First step where the loss reaches each target (interpolated in log-loss)."""
    out = []
    for tgt in targets:
        hit = math.nan
        for k, (t, loss) in enumerate(zip(steps, losses)):
            if loss <= tgt:
                if k == 0:
                    hit = 0.0
                else:
                    l0, l1 = math.log(losses[k - 1]), math.log(max(loss, 1e-300))
                    frac = (l0 - math.log(tgt)) / (l0 - l1) if l0 > l1 else 1.0
                    hit = steps[k - 1] + frac * (t - steps[k - 1])
                break
        out.append(hit)
    return out


def _window_ratio(
    steps: np.ndarray, tr: np.ndarray, g2: np.ndarray, center: float, w: float
) -> tuple[float, float, float, float, float]:
    """B_simple over the steps in [center / w, center · w] (at least ±2 steps), Fieller CI."""
    from dynalens.dynamics.stats import RatioStats

    lo, hi = min(center / w, center - 2), max(center * w, center + 2)
    sel = (steps >= lo) & (steps <= hi)
    if sel.sum() < 2:
        return (math.nan,) * 5
    st = RatioStats(1, beta=1.0)
    for a, b in zip(tr[sel], g2[sel]):
        st.update([a], [b])
    res = st.compute()
    return float(res["ratio"][0]), float(res["low"][0]), float(res["high"][0]), lo, hi


def _lrs_for(
    B: int, rule: str, lr: float | None, lr_grid: Any, base: int
) -> list[float]:  # fmt: skip
    if rule == "grid":
        grid = lr_grid(B) if callable(lr_grid) else lr_grid
        return [float(v) for v in grid]
    assert lr is not None
    return [lr * (B / base if rule == "linear" else math.sqrt(B / base))]


def batch_size_sweep(
    make_model: Callable[[], nn.Module],
    data: tuple[torch.Tensor, torch.Tensor],
    loss_fn: LossFn,
    batch_sizes: Sequence[int],
    targets: Sequence[float],
    *,
    lr_rule: str = "grid",
    lr: float | None = None,
    lr_grid: Sequence[float] | Callable[[int], Sequence[float]] | None = None,
    base_batch_size: int | None = None,
    make_optimizer: OptimizerFactory | None = None,
    eval_data: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_resolution: float = 0.02,
    max_steps: int = 10_000,
    max_examples: int | None = None,
    gns_batch_size: int | None = None,
    gns_window: float = 1.25,
    seeds: int = 1,
    seed: int = 0,
    prune: bool = True,
    store_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> SweepResult:
    """Train at several batch sizes and record steps / examples to each target loss.

    Args:
        make_model: returns a fresh model; called after ``torch.manual_seed(seed + k)``
            for seed k, so every batch size starts from the same weights.
        data: training ``(x, y)``; batches are drawn i.i.d. with replacement.
        loss_fn: ``loss_fn(outputs, y)`` -> per-example losses ``[B]``.
        batch_sizes: the batch sizes to train.
        targets: target losses (of ``eval_data``), any order.
        lr_rule: ``"grid"``, ``"linear"`` or ``"sqrt"`` (see the module docstring).
        lr: base learning rate at ``base_batch_size`` for ``"linear"`` / ``"sqrt"``.
        lr_grid: learning rates tried at every B for ``"grid"`` (or ``B -> rates``).
        base_batch_size: reference of the scaling rules (default: the smallest B).
        make_optimizer: ``(params, lr) -> optimizer``; default plain SGD.
        eval_data: fixed evaluation set; default ``data`` (the training objective).
        eval_resolution: relative spacing of evaluations (0.02: every 2 % of the steps).
        max_steps: step budget per run; a run stops when it reaches every target.
        max_examples: optional example budget per run (``steps · B``).
        gns_batch_size: measure ``B_simple`` along the runs at this batch size.
        gns_window: half-width factor of the log-step window of ``B_simple`` at a loss.
        seeds: replicate runs (seeds ``seed, seed + 1, ...``).
        seed: first seed.
        prune: grid only: the rates of a batch size run from the largest down, and a run
            stops once it is slower than an earlier one on every target it has not
            reached (it cannot be the fastest any more; ``runs.pruned``).
        store_path: a dynalens store to log every run's scalars into (one run each).
        progress: show a progress bar.

    Returns:
        A :class:`SweepResult`.
    """
    pd = require("pandas", "batch_size_sweep")
    from tqdm.auto import tqdm

    check_option("lr_rule", lr_rule, LR_RULES)
    bs = [check_int("batch_sizes[i]", b, min=1) for b in batch_sizes]
    if len(set(bs)) < 2:
        raise InvalidParameterError(
            f"batch_sizes needs at least 2 distinct sizes to fit S(B); got {list(batch_sizes)}."
        )
    tg = sorted((check_float("targets[i]", t, min=0.0, min_inclusive=False) for t in targets),
                reverse=True)  # fmt: skip
    if not tg:
        raise InvalidParameterError("targets is empty; pass one or more target losses.")
    check_int("max_steps", max_steps, min=1)
    check_int("seeds", seeds, min=1)
    check_int("seed", seed, min=0)
    check_bool("prune", prune)
    check_float("eval_resolution", eval_resolution, min=0.0, max=1.0, min_inclusive=False)
    check_float("gns_window", gns_window, min=1.0, min_inclusive=False)
    if max_examples is not None:
        check_int("max_examples", max_examples, min=1)
    base = (
        min(bs) if base_batch_size is None else check_int("base_batch_size", base_batch_size, min=1)
    )
    if lr_rule == "grid":
        if lr_grid is None:
            raise InvalidParameterError(
                "lr_rule='grid' needs lr_grid= (learning rates tried at every batch size, or "
                "a callable B -> rates), e.g. lr_grid=[0.03, 0.1, 0.3]; or use "
                "lr_rule='linear' / 'sqrt' with lr=."
            )
    elif lr is None:
        raise InvalidParameterError(
            f"lr_rule={lr_rule!r} scales a base learning rate: pass lr= (the rate at "
            f"base_batch_size={base})."
        )
    else:
        check_float("lr", lr, min=0.0, min_inclusive=False)
    if gns_batch_size is not None and gns_batch_size not in bs:
        raise InvalidParameterError(
            f"gns_batch_size={gns_batch_size} is not one of the swept batch sizes {bs}; "
            "B_simple is measured along the runs at that batch size."
        )
    x, y = data
    if len(x) != len(y) or len(x) < 2:
        raise InvalidInputError(
            f"data must be (x, y) with one target per example and ≥ 2 examples; got "
            f"{len(x)} inputs and {len(y)} targets."
        )
    ex, ey = eval_data if eval_data is not None else data
    make_opt = make_optimizer or (lambda params, rate: torch.optim.SGD(params, lr=rate))
    plan = [(B, r, k) for k in range(seeds) for B in bs
            for r in sorted(_lrs_for(B, lr_rule, lr, lr_grid, base), reverse=True)]  # fmt: skip
    run_rows, curve_rows, gns_hist = [], [], {}
    best: dict[tuple[int, int], dict[float, float]] = {}  # (B, k) -> target -> fewest steps
    for B, rate, k in tqdm(plan, desc="batch-size sweep", disable=not progress):
        torch.manual_seed(seed + k)
        model = make_model()
        opt = make_opt(model.parameters(), rate)
        gen = torch.Generator().manual_seed(10_000 * (seed + k) + B)
        rec = None
        if store_path is not None:
            from dynalens.probe.recorder import Recorder

            first = next(n for n, m in model.named_modules() if list(m.parameters(False)))
            rec = Recorder(model, store_path, sites=first, every=lambda s: False,
                           run=f"B{B}-lr{rate:.4g}-seed{seed + k}",
                           config={"batch_size": B, "lr": rate, "seed": seed + k,
                                   "lr_rule": lr_rule})  # fmt: skip
        mon = None
        if B == gns_batch_size:
            from dynalens.dynamics.gns_live import GradientNoiseScaleMonitor

            mon = GradientNoiseScaleMonitor(model, optimizer=opt, every=1, beta=1.0,
                                            groups="none", recorder=rec,
                                            history=max_steps + 1).attach()  # fmt: skip
        steps, losses = [0], [_eval_loss(model, loss_fn, ex, ey)]
        limit = max_steps if max_examples is None else min(max_steps, max_examples // B)
        t, next_eval, diverged, pruned = 0, 1, False, False
        fastest = best.setdefault((B, k), {})
        try:
            while t < limit and losses[-1] > tg[-1]:
                if prune and all(t >= fastest.get(v, math.inf) for v in tg if losses[-1] > v):
                    pruned = True  # slower than another rate of this B on every open target
                    break
                idx = torch.randint(0, len(x), (B,), generator=gen)
                opt.zero_grad(set_to_none=True)
                train_loss = loss_fn(model(x[idx]), y[idx]).mean()
                train_loss.backward()
                opt.step()
                t += 1
                if t == next_eval or t == limit:
                    steps.append(t)
                    losses.append(_eval_loss(model, loss_fn, ex, ey))
                    next_eval = t + max(1, math.ceil(eval_resolution * t))
                    if rec is not None:
                        rec.log(t, loss=losses[-1], train_loss=train_loss.item())
                    if not math.isfinite(losses[-1]) or losses[-1] > 10 * losses[0]:
                        diverged = True
                        break
        finally:
            if mon is not None:
                mon.detach()
            if rec is not None:
                rec.close()
        hits = _crossings(steps, losses, tg)
        for tgt, h in zip(tg, hits):
            if h > 0:
                fastest[tgt] = min(fastest.get(tgt, math.inf), h)
            run_rows.append({"batch_size": B, "lr": rate, "seed": seed + k, "target": tgt,
                             "steps": h if h > 0 else math.nan,
                             "examples": h * B if h > 0 else math.nan,
                             "diverged": diverged, "pruned": pruned})  # fmt: skip
        curve_rows += [{"batch_size": B, "lr": rate, "seed": seed + k, "step": s,
                        "examples": s * B, "loss": v} for s, v in zip(steps, losses)]  # fmt: skip
        if mon is not None:
            hist = list(mon.history)
            gns_hist[(B, rate, seed + k)] = (
                np.array([e.step for e in hist], np.float64),
                np.array([e.tr[-1] for e in hist]),
                np.array([e.g2[-1] for e in hist]),
                steps,
                losses,
            )
    runs = pd.DataFrame(run_rows)
    table = _best_per_target(pd, runs, lr_rule)
    b_rows, c_rows = [], []
    for (B, rate, sd), (hs, tr, g2, ev_steps, ev_losses) in gns_hist.items():
        used = table[(table["batch_size"] == B) & (table["lr"] == rate) & (table["seed"] == sd)]
        for _, r in used.iterrows():
            if math.isfinite(r["steps"]):
                b, lo, hi, w0, w1 = _window_ratio(hs, tr, g2, r["steps"], gns_window)
                b_rows.append({"target": r["target"], "seed": sd, "batch_size": B, "lr": rate,
                               "step": r["steps"], "b_simple": b, "b_simple_low": lo,
                               "b_simple_high": hi, "window_low": w0,
                               "window_high": w1})  # fmt: skip
        if used.empty:  # this rate was never the fastest: leave its curve out
            continue
        for s, v in zip(ev_steps[1:], ev_losses[1:]):
            b, lo, hi, _, _ = _window_ratio(hs, tr, g2, float(s), gns_window)
            c_rows.append({"batch_size": B, "lr": rate, "seed": sd, "step": s, "loss": v,
                           "b_simple": b, "b_simple_low": lo, "b_simple_high": hi})  # fmt: skip
    cols = ["target", "seed", "batch_size", "lr", "step", "b_simple", "b_simple_low",
            "b_simple_high", "window_low", "window_high"]  # fmt: skip
    config = {"batch_sizes": bs, "targets": tg, "lr_rule": lr_rule, "lr": lr,
              "lr_grid": None if lr_grid is None or callable(lr_grid) else list(lr_grid),
              "base_batch_size": base, "eval_resolution": eval_resolution,
              "max_steps": max_steps, "max_examples": max_examples,
              "gns_batch_size": gns_batch_size, "gns_window": gns_window, "seeds": seeds,
              "seed": seed, "prune": prune,
              "eval": "eval_data" if eval_data is not None else "training set",
              "sampling": "i.i.d. with replacement"}  # fmt: skip
    return SweepResult(
        table=table,
        runs=runs,
        curves=pd.DataFrame(curve_rows),
        b_simple=pd.DataFrame(b_rows, columns=cols),
        b_simple_curve=pd.DataFrame(c_rows),
        config=config,
        store_path=None if store_path is None else os.fspath(store_path),
    )


def _best_per_target(pd: Any, runs: Any, lr_rule: str) -> Any:
    """Per (B, target, seed): the fastest learning rate (grid) or the only one."""
    rows = []
    for (B, tgt, sd), part in runs.groupby(["batch_size", "target", "seed"], sort=True):
        lrs = sorted(part["lr"].unique())
        ok = part[np.isfinite(part["steps"])]
        if len(ok):
            best = ok.loc[ok["steps"].idxmin()]
            rate, s = float(best["lr"]), float(best["steps"])
        else:
            rate, s = math.nan, math.nan
        edge = lr_rule == "grid" and len(lrs) > 1 and rate in (lrs[0], lrs[-1])
        rows.append({"batch_size": int(B), "target": float(tgt), "seed": int(sd), "lr": rate,
                     "steps": s, "examples": s * B, "lr_at_edge": bool(edge)})  # fmt: skip
    return pd.DataFrame(rows)
