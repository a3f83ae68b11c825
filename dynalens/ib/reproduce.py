"""Paper reproductions: ``dynalens reproduce NAME`` and ``reproduce(NAME, out)``.

==============  =============================================================================
``tishby``      Shwartz-Ziv & Tishby (2017): tanh network, 30 bins on [-1, 1] per unit;
                the layers first fit (I(T;Y) rises) then compress (I(X;T) falls).
``saxe``        Saxe et al. (2018): the same network with ReLU units, binning over each
                layer's range and the Kolchinsky-Tracey KDE bound with noise variance 0.1:
                no compression phase.
``chelombiev``  Chelombiev et al. (2019): adaptive (entropy-based) binning shows
                compression for ReLU too, and an L2 penalty increases it.
``goldfeld``    Goldfeld et al. (2019): a noisy tanh network (beta = 0.1) whose I(X;T) is
                estimated with its known noise (``noisy``): compression goes with the
                clustering of the representations.
==============  =============================================================================

Each writes to its output folder: ``store.zarr`` (one run per network), one information
plane per (run, estimator) as HTML (and PNG when kaleido can render), the training
curves, and ``results.json`` with the configuration, the full tables and a per-layer
summary (peak and final I(X;T): ``compression = peak - final``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dynalens.errors import InvalidParameterError, close_matches
from dynalens.ib.summary import describe_estimator, summarize
from dynalens.ib.training import IBConfig, train_ib_network
from dynalens.probe.store_writer import is_store_root

#: (estimator name, noise_var, params) per label
EstimatorSpec = tuple[str, float | None, dict[str, Any]]


@dataclass(frozen=True)
class Reproduction:
    """A paper's setting: networks to train and estimators to measure them with."""

    title: str
    runs: dict[str, IBConfig]
    estimators: dict[str, EstimatorSpec]
    claim: str
    quick: dict[str, Any] = field(default_factory=lambda: {"epochs": 40, "records": 8})


TANH_BINS: EstimatorSpec = ("binning", None, {"n_bins": 30, "range": (-1.0, 1.0)})

REPRODUCTIONS: dict[str, Reproduction] = {
    "tishby": Reproduction(
        title="Shwartz-Ziv & Tishby 2017: tanh network, binning",
        runs={"tanh": IBConfig(activation="tanh", epochs=3000, lr=1e-3)},
        estimators={"binning": TANH_BINS},
        claim="fitting then compression: I(X;T) of the deeper layers falls late in training",
    ),
    "saxe": Reproduction(
        title="Saxe et al. 2018: ReLU network, binning and KDE",
        runs={"relu": IBConfig(activation="relu", epochs=3000, lr=1e-3)},
        estimators={
            "binning": ("binning", None, {"n_bins": 30, "range": "layer"}),
            "kde": ("kde", 0.1, {}),
        },
        claim="no compression phase for ReLU: I(X;T) does not fall",
    ),
    "chelombiev": Reproduction(
        title="Chelombiev et al. 2019: adaptive binning, ReLU with and without L2",
        runs={
            "relu": IBConfig(activation="relu", epochs=3000, lr=1e-3),
            "relu_l2": IBConfig(activation="relu", epochs=3000, lr=1e-3, weight_decay=5e-3),
        },
        estimators={"adaptive_binning": ("adaptive_binning", None, {"n_bins": 30})},
        claim="adaptive estimators show compression for ReLU too; L2 increases it",
    ),
    "goldfeld": Reproduction(
        title="Goldfeld et al. 2019: noisy tanh network, known-channel estimator",
        runs={"noisytanh": IBConfig(activation="noisytanh", epochs=3000, lr=1e-3, noise_std=0.1)},
        estimators={"noisy": ("noisy", 0.01, {})},
        claim="compression of I(X;T) goes with clustering of the hidden representations",
    ),
}


def load_task(var_u: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The paper's labels from ``var_u.mat`` when a path is given, else the built-in
    comparable 12-bit task."""
    from dynalens.datasets import load_var_u, twelve_bit_task

    return load_var_u(var_u) if var_u is not None else twelve_bit_task()


def reproduce(
    name: str,
    out: str | os.PathLike[str] | None = None,
    *,
    quick: bool = False,
    epochs: int | None = None,
    var_u: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one reproduction; returns what ``results.json`` holds.

    Args:
        name: ``tishby``, ``saxe``, ``chelombiev`` or ``goldfeld``.
        out: output folder (default ``out/NAME``); its old store is replaced.
        quick: a small configuration (tens of epochs) for tests and notebooks.
        epochs: override the number of training epochs.
        var_u: path of the paper's ``var_u.mat``; default the built-in 12-bit task.
    """
    from dynalens.figures import save_figure
    from dynalens.ib.figures import plot_information_plane, plot_training_curves
    from dynalens.ib.plane import information_plane

    if name not in REPRODUCTIONS:
        raise InvalidParameterError(
            f"unknown reproduction {name!r}{close_matches(name, REPRODUCTIONS)} "
            f"Available: {', '.join(REPRODUCTIONS)}."
        )
    spec = REPRODUCTIONS[name]
    folder = Path(out if out is not None else Path("out") / name)
    store_path = folder / "store.zarr"
    if store_path.exists() and is_store_root(store_path):
        shutil.rmtree(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_task(var_u)
    results: dict[str, Any] = {"name": name, "title": spec.title, "claim": spec.claim,
                               "task": "var_u.mat" if var_u else "built-in 12-bit task",
                               "runs": {}, "files": []}  # fmt: skip
    for run, cfg in spec.runs.items():
        if quick:
            cfg = replace(cfg, **spec.quick)
        if epochs is not None:
            cfg = replace(cfg, epochs=epochs)
        store = train_ib_network(x, y, cfg, store_path, run=run, progress=progress)
        scal = store.scalars()
        curves = plot_training_curves(store, title=f"{spec.title}: {run} network, training")
        files = save_figure(curves, folder / f"training_{run}")
        entry: dict[str, Any] = {"config": asdict(cfg), "planes": {}}
        for label, (method, noise_var, params) in spec.estimators.items():
            table = information_plane(store, estimator=method, noise_var=noise_var,
                                      params=params, progress=progress)  # fmt: skip
            fig = plot_information_plane(
                table,
                title=f"Information plane: {run} network, "
                f"{describe_estimator(method, noise_var, params)}",
            )
            files += save_figure(fig, folder / f"plane_{run}_{label}")
            entry["planes"][label] = {
                "summary": summarize(table),
                "table": json.loads(table.to_json(orient="records")),
            }
        final = scal.dropna(subset=["test_accuracy"]).tail(1) if "test_accuracy" in scal else None
        if final is not None and len(final):
            entry["final_test_accuracy"] = float(final["test_accuracy"].iloc[0])
        results["runs"][run] = entry
        results["files"] += [str(f) for f in files]
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))
    results["files"].append(str(folder / "results.json"))
    return results
