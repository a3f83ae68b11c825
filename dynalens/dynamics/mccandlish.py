"""Reproduction of McCandlish et al. 2018's central figure on a CPU-sized task.

``dynalens reproduce mccandlish`` / :func:`reproduce_mccandlish`: a batch-size sweep
(:func:`~dynalens.dynamics.sweep.batch_size_sweep`) of a small ReLU MLP (64-128-128-10)
trained with plain SGD on scikit-learn's digits (1 500 training images, 8×8; shipped
with scikit-learn, no download), learning rate tuned per batch size on a grid, batches
drawn i.i.d. with replacement, targets on the full training loss (cross-entropy, nats).

Per target loss it fits McCandlish's ``S = S_min (1 + B_crit / B)``
(:func:`~dynalens.dynamics.cbs.fit_critical_batch_size`, bootstrap interval), reports
Zhang et al.'s CBS implied by the fit and interpolated from the data (named apart: it is
about ``0.2 B_crit``), and measures ``B_simple`` along the training runs at the reference
batch size at the same losses. The paper's claim: ``B_crit`` and the noise scale agree
within a small factor and both grow as the loss falls.

Writes to ``out`` (default ``out/mccandlish``): ``pareto.html/.png`` (S-E fronts),
``critical_batch_size.html/.png`` (B_crit vs B_simple), ``mccandlish.html/.png`` (both),
``store.zarr`` (every run's losses and, at the reference batch size, the noise scale), and
``results.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dynalens._provenance import machine
from dynalens.probe.store_writer import is_store_root

CLAIM = (
    "B_crit = E_min/S_min from the sweep and the noise scale B_simple measured along "
    "training agree within a small factor, and both grow as the loss falls "
    "(McCandlish et al. 2018, Fig. 4)"
)


@dataclass(frozen=True)
class McCandlishConfig:
    """The sweep of :func:`reproduce_mccandlish` (full and quick presets below)."""

    batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)
    lr_grid: tuple[float, ...] = tuple(round(0.1 * 2 ** (k / 2), 4) for k in range(11))
    targets: tuple[float, ...] = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
    max_steps: int = 4000
    seeds: int = 3
    width: int = 128
    gns_batch_size: int = 64
    bootstrap: int = 2000
    n_train: int = 1500
    seed: int = 0


FULL = McCandlishConfig()
QUICK = replace(FULL, batch_sizes=(8, 32, 128, 512), lr_grid=(0.2, 0.4, 0.8, 1.6),
                targets=(0.5, 0.2, 0.1, 0.05), max_steps=1500, seeds=1, gns_batch_size=32,
                bootstrap=300)  # fmt: skip


def digits_task(n_train: int = 1500, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits, features standardised: ``(x [n, 64] float32, y [n] int64)``,
    a fixed random subset of ``n_train`` images."""
    from dynalens._optional import require

    digits = require("sklearn.datasets", "the digits task").load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    y = torch.tensor(digits.target, dtype=torch.long)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_train]
    return x[idx], y[idx]


def mlp(width: int = 128) -> nn.Module:
    """The 64-width-width-10 ReLU MLP of the reproduction."""
    return nn.Sequential(
        nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (nats)."""
    return F.cross_entropy(out, y, reduction="none")


def summarize(fits: Any) -> str:
    """One sentence: B_crit and B_simple at the easiest and hardest fitted targets."""
    ok = fits[np.isfinite(fits["b_crit"])].sort_values("target", ascending=False)
    if ok.empty:
        return "no target was reached at enough batch sizes to fit B_crit."
    first, last = ok.iloc[0], ok.iloc[-1]

    def bc(r: Any) -> str:
        return f"{r['b_crit']:.0f} [{r['b_crit_low']:.0f}, {r['b_crit_high']:.0f}]"

    text = (
        f"B_crit grows from {bc(first)} at loss {first['target']:g} to {bc(last)} at loss "
        f"{last['target']:g}"
    )
    if "b_simple" in ok and np.isfinite(ok["b_simple"]).any():
        ratio = ok["b_simple"] / ok["b_crit"]
        text += (
            f"; B_simple at the same losses: {first['b_simple']:.0f} -> {last['b_simple']:.0f} "
            f"(B_simple / B_crit between {np.nanmin(ratio):.2g} and {np.nanmax(ratio):.2g})"
        )
    return text + "."


def reproduce_mccandlish(
    out: str | os.PathLike[str] | None = None, *, quick: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the reproduction; returns what ``results.json`` holds, plus ``files``.

    Args:
        out: output folder (default ``out/mccandlish``); its old store is replaced.
        quick: the small preset (4 batch sizes, 3 learning rates, 1 seed; ~20 s) for tests
            and notebooks; the full one takes a few minutes on 2 CPU cores.
        progress: show progress bars.

    Returns:
        A dict with ``summary`` (one sentence), ``files`` (paths written), ``fits`` (per
        target: ``b_crit`` and interval, ``s_min``, ``e_min``, ``cbs_zhang_model``,
        ``cbs_zhang_data``, ``b_simple`` and interval), ``table``, ``config``, ``claim``.
    """
    from dynalens.dynamics.cbs_figures import (
        plot_critical_batch_size,
        plot_mccandlish,
        plot_pareto_fronts,
    )
    from dynalens.dynamics.sweep import batch_size_sweep
    from dynalens.figures import save_figure

    cfg = QUICK if quick else FULL
    folder = Path(out if out is not None else Path("out") / "mccandlish")
    store_path = folder / "store.zarr"
    if store_path.exists() and is_store_root(store_path):
        shutil.rmtree(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    started = time.time()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and deterministic
    try:
        x, y = digits_task(cfg.n_train, cfg.seed)
        res = batch_size_sweep(
            lambda: mlp(cfg.width), (x, y), cross_entropy, cfg.batch_sizes, cfg.targets,
            lr_rule="grid", lr_grid=cfg.lr_grid, max_steps=cfg.max_steps,
            gns_batch_size=cfg.gns_batch_size, seeds=cfg.seeds, seed=cfg.seed,
            store_path=store_path, progress=progress,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    fits = res.fit(bootstrap=cfg.bootstrap, seed=cfg.seed)
    wall = time.time() - started
    files: list[Path] = []
    files += save_figure(plot_pareto_fronts(res.table, fits), folder / "pareto")
    files += save_figure(
        plot_critical_batch_size(fits, res.b_simple_curve), folder / "critical_batch_size"
    )
    files += save_figure(
        plot_mccandlish(res.table, fits, res.b_simple_curve), folder / "mccandlish"
    )
    results: dict[str, Any] = {
        "name": "mccandlish",
        "title": "McCandlish et al. 2018: critical batch size vs gradient noise scale",
        "claim": CLAIM,
        "task": (
            f"digits (scikit-learn), {cfg.n_train} training images; MLP 64-{cfg.width}-"
            f"{cfg.width}-10 ReLU, SGD, i.i.d. batches; target = full training loss (nats)"
        ),
        "quick": quick,
        "config": asdict(cfg),
        "sweep": res.config,
        "summary": summarize(fits),
        "fits": _records(fits),
        "b_simple": _records(res.b_simple),
        "table": _records(res.table),
        "machine": machine(),
        "wall_s": wall,
        "store": str(store_path),
    }
    results["files"] = [str(f) for f in files] + [str(folder / "results.json")]
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=_json))
    return results


def _records(df: Any) -> list[dict[str, Any]]:
    return [{k: _json(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def _json(v: Any) -> Any:
    """NaN / inf as strings JSON can hold; numpy scalars as Python numbers."""
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else str(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v
