"""The main job (``dynalens demo``, ``make demo``) on the embedded default task.

Trains the Shwartz-Ziv & Tishby network (12-10-7-5-4-3-2) with tanh and with ReLU units
on the built-in 12-bit task, with a :class:`~dynalens.Recorder` attached to a plain
training loop (every hidden layer on all 4096 inputs at log-spaced epochs); computes the
information plane of each with 30-bin binning and with the known-channel estimator
(``noisy``: the layer plus Gaussian noise of variance 0.01); writes
``out/demo/report.html`` (planes, loss and accuracy curves) and prints its path.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dynalens.ib.reproduce import load_task, summarize
from dynalens.ib.training import IBConfig

DEMO_EPOCHS = 500
NOISE_VAR = 0.01


def run_demo(out: str | Path = "out/demo", epochs: int | None = None, records: int = 16) -> Path:
    """Train, record, measure, report; returns the report's path."""
    import shutil

    from dynalens.cli import format_info
    from dynalens.figures import plot_scalars, save_figure
    from dynalens.ib.figures import plot_information_plane
    from dynalens.ib.plane import information_plane
    from dynalens.ib.report import write_report
    from dynalens.ib.training import train_ib_network
    from dynalens.probe.store_writer import is_store_root

    out = Path(out)
    store_path = out / "store.zarr"
    if store_path.exists() and is_store_root(store_path):
        shutil.rmtree(store_path)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_task()
    base = IBConfig(epochs=DEMO_EPOCHS if epochs is None else epochs, records=records, lr=3e-3)
    sections = []
    for activation in ("tanh", "relu"):
        store = train_ib_network(
            x, y, replace(base, activation=activation), store_path, run=activation
        )
        figures = []
        text = []
        binning = {"n_bins": 30, "range": (-1.0, 1.0) if activation == "tanh" else "layer"}
        for label, method, noise_var, params in (
            ("binning, 30 bins", "binning", None, binning),
            (f"noisy, noise variance {NOISE_VAR}", "noisy", NOISE_VAR, {"n_draws": 1}),
        ):
            table = information_plane(store, estimator=method, noise_var=noise_var, params=params)
            fig = plot_information_plane(table, title=f"{activation}: {label}")
            save_figure(fig, out / f"plane_{activation}_{method}")
            figures.append(fig)
            comp = {s["site"]: round(s["compression"] / 0.6931, 2) for s in summarize(table)}
            text.append(f"{label}: compression (peak - final I(X;T), bits) per layer {comp}.")
        scal = store.scalars()
        figures.append(plot_scalars(scal, ["loss", "train_accuracy", "test_accuracy"],
                                    title=f"{activation}: training"))  # fmt: skip
        sections.append((f"{activation} network", " ".join(text), figures))
        print(format_info(store.info()), "\n")
    report = write_report(
        out / "report.html",
        "dynalens demo: information planes of the 12-bit task",
        sections,
    )
    print(f"report written to {report}")
    return report
