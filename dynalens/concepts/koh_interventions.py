"""Reproduction of Koh et al. 2020's intervention experiment on synthetic shapes.

``dynalens reproduce koh-interventions`` / :func:`reproduce_koh_interventions`: a concept
bottleneck model (a small CNN encoder to the 12 concepts of
:func:`~dynalens.concepts.make_shapes`, an MLP head to the 4 classes of its rule) trained
in each of Koh et al.'s modes (independent, sequential, joint;
:func:`~dynalens.concepts.models.fit_cbm`), then intervened on by concept group (shape,
colour, size, position) with each policy of
:func:`~dynalens.estimators.concepts.intervention_curve`: the random policy's exact
expectation, Koh's released random curve (the max over 5 non-nested trials,
``compat="koh"``), cem's uncertainty, Koh's expected entropy reduction and the greedy
oracle. Koh et al. ("Concept Bottleneck Models", ICML 2020, §5 and Fig. 4) find that test
accuracy rises as concepts are corrected and that the independent model, whose head was
trained on true concepts, gains the most.

Over training (issue 13, §4) a :class:`~dynalens.concepts.monitor.ConceptMonitor` logs
concept accuracy, task accuracy, the concept -> task leakage gap and the Oracle Impurity
Score on a fixed probe set to each mode's run of the store.

Writes to ``out`` (default ``out/koh-interventions``): ``koh_interventions.html/.png``
(curves per mode and policy), ``training.html/.png`` (the monitored metrics per mode),
``store.zarr`` (one run per mode, the monitored scalars) and ``results.json``.
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

import torch
from torch import nn

from dynalens._provenance import machine
from dynalens.probe.store_writer import is_store_root

__all__ = ["FULL", "QUICK", "KohConfig", "reproduce_koh_interventions"]

CLAIM = (
    "correcting concepts at test time raises task accuracy, and the independent model, "
    "whose head was trained on true concepts, gains the most (Koh et al. 2020, Fig. 4)"
)
MODES = ("independent", "sequential", "joint")
POLICIES = ("random", "random_koh", "uncertainty", "entropy", "oracle")
GROUP_NAMES = ("shape", "colour", "size", "position")


@dataclass(frozen=True)
class KohConfig:
    """Settings of :func:`reproduce_koh_interventions` (full and quick presets below)."""

    n_train: int = 4000
    n_test: int = 1000
    size: int = 24
    epochs: int = 6
    batch_size: int = 128
    lr: float = 3e-3
    concept_loss_weight: float = 1.0
    monitor_every: int = 16
    probe_rows: int = 1000
    metrics: tuple[str, ...] = ("concept_accuracy", "task_accuracy", "leakage", "ois")
    seed: int = 0


FULL = KohConfig()
QUICK = replace(
    FULL, n_train=600, n_test=500, epochs=3, batch_size=100, monitor_every=4, probe_rows=500
)


def shapes_cbm(size: int = 24, seed: int = 0) -> Any:
    """The CBM of the reproduction: convs 8/16/16 (3×3, two 2×2 max-pools) -> 12 concept
    logits; head 12-32-4 ReLU MLP; probability bottleneck."""
    from dynalens.concepts.models import ConceptBottleneckModel

    torch.manual_seed(seed)
    side = size // 4
    encoder = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * side * side, 12),
    )
    head = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    return ConceptBottleneckModel(encoder, head, bottleneck="prob")


def _curves(model: Any, test: Any) -> dict[str, dict[str, Any]]:
    from dynalens.estimators.concepts import intervention_curve

    groups = [list(g) for g in test.groups]
    with torch.no_grad():
        p = model.concepts(test.x)
    task = model.concept_task(test.x)
    out = {}
    for policy in POLICIES:
        kw: dict[str, Any] = {"groups": groups, "seed": 0}
        if policy == "random_koh":
            kw.update(policy="random", compat="koh", n_trials=5)
        else:
            kw["policy"] = policy
        res = intervention_curve(task, p, test.c, test.y, **kw)
        out[policy] = {
            "curve": [float(v) for v in res.details["curve"]],
            "area": res.details["area"],
            "gain_at_1": res.details["gain_at_1"],
            "exact": bool(res.details.get("exact", False)),
        }
    return out


def plot_koh_interventions(curves: dict[str, dict[str, dict[str, Any]]]) -> Any:
    """Intervention curves: one panel per training mode, one line per policy."""
    from dynalens._optional import require

    go = require("plotly.graph_objects", "plot_koh_interventions")
    subplots = require("plotly.subplots", "plot_koh_interventions")
    modes = list(curves)
    fig = subplots.make_subplots(
        rows=1, cols=len(modes), shared_yaxes=True, subplot_titles=[f"{m} CBM" for m in modes]
    )
    colours = dict(zip(POLICIES, ("#1f77b4", "#aec7e8", "#ff7f0e", "#2ca02c", "#d62728")))
    names = {
        "random": "random (exact expectation)",
        "random_koh": "random (Koh: max of 5)",
        "uncertainty": "uncertainty",
        "entropy": "entropy (Koh)",
        "oracle": "greedy oracle",
    }
    for col, mode in enumerate(modes, start=1):
        for policy, entry in curves[mode].items():
            fig.add_trace(
                go.Scatter(
                    x=list(range(len(entry["curve"]))),
                    y=entry["curve"],
                    mode="lines+markers",
                    name=names[policy],
                    legendgroup=policy,
                    showlegend=col == 1,
                    line={
                        "color": colours[policy],
                        "dash": "dot" if policy == "random_koh" else "solid",
                    },
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="concept groups intervened on", dtick=1, row=1, col=col)
    fig.update_yaxes(title_text="test task accuracy", row=1, col=1)
    fig.update_layout(
        title=(
            "Test-time interventions by training mode and policy "
            "(Koh et al. 2020, synthetic shapes)"
        ),
        template="plotly_white",
        width=1100,
        height=430,
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
    )
    return fig


def plot_training(table: Any, metrics: tuple[str, ...]) -> Any:
    """The monitored metrics per mode: one panel per metric, one colour per mode
    (independent dashed: its first phase is the sequential model's)."""
    from dynalens.figures import plot_scalar_panels

    labels = {
        "concept_accuracy": "concept accuracy",
        "task_accuracy": "task accuracy",
        "leakage": "leakage gap (AUC)",
        "ois": "OIS",
    }
    order = ("sequential", "joint", "independent")  # the dashed line on top
    panels = {labels.get(m, m): [f"{mode}.{m}" for mode in order] for m in metrics}
    names = {f"{mode}.{m}": mode for mode in MODES for m in metrics}
    fig = plot_scalar_panels(
        table,
        panels,
        title="Concept metrics over training by mode (fixed probe set)",
        x_title="optimizer step",
        log_x=False,
        names=names,
    )
    colours = dict(zip(MODES, ("#2ca02c", "#1f77b4", "#d62728")))
    seen: set[str] = set()
    for trace in fig.data:
        trace.update(
            line={
                "color": colours[trace.name],
                "dash": "dash" if trace.name == "independent" else "solid",
            },
            legendgroup=trace.name,
            showlegend=trace.name not in seen,
        )
        seen.add(trace.name)
    return fig


def reproduce_koh_interventions(
    out: str | os.PathLike[str] | None = None,
    *,
    quick: bool = False,
    progress: bool = True,
    config: KohConfig | None = None,
    png: bool = True,
) -> dict[str, Any]:
    """Run the reproduction; returns what ``results.json`` holds, plus ``files``.

    Args:
        out: output folder (default ``out/koh-interventions``); its old store is replaced.
        quick: the small preset (600 training images, 2 epochs; ~1 min on 2 CPU cores)
            for tests and notebooks; the full one takes several minutes.
        progress: show a progress bar over the modes.
        config: explicit settings (overrides ``quick``).
        png: also write PNG copies of the figures (kaleido).
    """
    import dynalens
    from dynalens.concepts import make_shapes
    from dynalens.concepts.models import fit_cbm
    from dynalens.concepts.monitor import ConceptMonitor
    from dynalens.figures import save_figure

    cfg = config or (QUICK if quick else FULL)
    folder = Path(out if out is not None else Path("out") / "koh-interventions")
    store_path = folder / "store.zarr"
    if store_path.exists() and is_store_root(store_path):
        shutil.rmtree(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    started = time.time()
    train = make_shapes(cfg.n_train, size=cfg.size, seed=cfg.seed)
    test = make_shapes(cfg.n_test, size=cfg.size, seed=cfg.seed + 1)
    rows = slice(0, cfg.probe_rows)
    probe = (test.x[rows], test.c[rows], test.y[rows])
    curves: dict[str, Any] = {}
    final: dict[str, Any] = {}
    tables = []
    torch.set_num_threads(1)
    try:
        from tqdm.auto import tqdm

        for mode in tqdm(MODES, desc="koh-interventions", disable=not progress):
            model = shapes_cbm(cfg.size, cfg.seed)
            rec = dynalens.Recorder(
                model,
                store_path,
                sites="encoder",
                every=[0],
                run=mode,
                capture=("activations",),
                config={"mode": mode, **asdict(cfg)},
            )
            mon = ConceptMonitor(
                model, probe, list(cfg.metrics), every=cfg.monitor_every, recorder=rec, prefix=mode
            ).attach()
            history = fit_cbm(
                model,
                train.x,
                train.c,
                train.y,
                mode=mode,
                epochs=cfg.epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                concept_loss_weight=cfg.concept_loss_weight,
                callback=_both(rec, mon),
            )
            rec.close()
            tables.append(mon.table().set_index("step"))
            curves[mode] = _curves(model, test)
            with torch.no_grad():
                logits, task = model(test.x)
            final[mode] = {
                "concept_accuracy": float(((logits > 0).float() == test.c).float().mean()),
                "task_accuracy": float((task.argmax(1) == test.y).float().mean()),
                "final_concept_loss": _finite(history.concept_loss),
                "final_task_loss": _finite(history.task_loss),
            }
    finally:
        torch.set_num_threads(threads)
    wall = time.time() - started
    files: list[Path] = []
    files += save_figure(plot_koh_interventions(curves), folder / "koh_interventions", png=png)
    table = tables[0].join(tables[1:], how="outer").reset_index()
    fig = plot_training(table, cfg.metrics)
    files += save_figure(fig, folder / "training", png=png)
    results: dict[str, Any] = {
        "name": "koh-interventions",
        "title": "Koh et al. 2020: test-time concept interventions by training mode and policy",
        "claim": CLAIM,
        "task": (
            f"make_shapes {cfg.size}x{cfg.size}: {cfg.n_train} training / {cfg.n_test} test "
            "images, 12 concepts in 4 groups (shape, colour, size, position), 4 classes"
        ),
        "quick": quick and config is None,
        "config": asdict(cfg),
        "groups": list(GROUP_NAMES),
        "curves": curves,
        "final": final,
        "summary": summarize(curves, final),
        "monitor": {c: [_num(v) for v in table[c]] for c in table.columns},
        "machine": machine(),
        "wall_s": wall,
        "store": str(store_path),
    }
    results["files"] = [str(f) for f in files] + [str(folder / "results.json")]
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    return results


def summarize(curves: dict[str, Any], final: dict[str, Any]) -> str:
    """One sentence per mode: accuracy before and after intervening on every group."""
    parts = []
    for mode, by_policy in curves.items():
        c = by_policy["random"]["curve"]
        parts.append(
            f"{mode}: task accuracy {c[0]:.3f} -> {c[-1]:.3f} with all groups corrected "
            f"(concept accuracy {final[mode]['concept_accuracy']:.3f})"
        )
    gains = {m: v["random"]["curve"][-1] - v["random"]["curve"][0] for m, v in curves.items()}
    best = max(gains, key=lambda m: gains[m])
    return "; ".join(parts) + f". Largest gain: {best} (+{gains[best]:.3f})."


def _both(rec: Any, mon: Any) -> Any:
    """The fit callback: the Recorder's step, then the monitor's."""

    def callback(step: int) -> None:
        rec.step(step)
        mon.step(step)

    return callback


def _finite(values: list[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return vals[-1] if vals else float("nan")


def _num(v: Any) -> Any:
    v = float(v)
    return v if math.isfinite(v) else None
