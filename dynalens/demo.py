"""The main job (``dynalens demo``, ``make demo``) on the embedded default task.

Trains the Shwartz-Ziv & Tishby network (12-10-7-5-4-3-2) with tanh and with ReLU units
on the built-in 12-bit task, with a :class:`~dynalens.Recorder` attached to a plain
training loop (every hidden layer on all 4096 inputs at log-spaced epochs); computes the
information plane of each with 30-bin binning and with the known-channel estimator
(``noisy``: the layer plus Gaussian noise of variance 0.01, one noise draw per input, at
every fourth recorded epoch);
writes ``out/demo/report.html`` (per network: a sentence of conclusion, the compression
table in bits, the two planes, loss and accuracy) with HTML and PNG copies of each
figure, prints the summaries in bits and its own elapsed time.

The default size keeps the story (the tanh network's last layer compresses, the ReLU
network's does not) at about a minute of CPU time on 2 cores; ``epochs`` and ``records``
scale it up.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from dynalens.ib.reproduce import load_task
from dynalens.ib.training import IBConfig

DEMO_EPOCHS = 250
DEMO_RECORDS = 12
NOISE_VAR = 0.01
#: the noisy estimator costs 1.5 n^2 kernel terms per (layer, epoch) (n = 4096 inputs),
#: about 40x binning: it measures every fourth recorded epoch and the last (by default
#: epochs 0, 6, 55 and 250: before training, fitting, near the peak of I(X;T), the end)
NOISY_EVERY = 4


def _estimators(activation: str) -> list[tuple[str, str, float | None, dict[str, Any], int]]:
    """(short label, method, noise_var, params, every k-th recorded epoch) of the two
    planes of a network."""
    rng: Any = (-1.0, 1.0) if activation == "tanh" else "layer"
    return [
        ("binning", "binning", None, {"n_bins": 30, "range": rng}, 1),
        ("noisy", "noisy", NOISE_VAR, {"n_draws": 1}, NOISY_EVERY),
    ]


def _plane(
    store: Any, method: str, noise_var: float | None, params: dict[str, Any], every: int
) -> Any:
    """The information plane at every ``every``-th recorded step (and the last), with
    binning's saturation warning left to the table's ``binning_saturated`` column (the
    report explains it per layer)."""
    from dynalens.estimators.mi import BinningWarning
    from dynalens.ib.plane import information_plane

    recorded = store.steps(store.sites[0]).tolist()
    steps = sorted({*recorded[::every], recorded[-1]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BinningWarning)
        return information_plane(
            store, estimator=method, noise_var=noise_var, params=params, steps=steps,
            chain_rule=method == "noisy",  # 40 % less work; its s.e. is in the table
        )  # fmt: skip


def _ordinal(k: int) -> str:
    return {1: "", 2: "second", 3: "third", 4: "fourth"}.get(k, f"{k}th")


def run_demo(
    out: str | Path = "out/demo", epochs: int | None = None, records: int = DEMO_RECORDS
) -> Path:
    """Train, record, measure, report; returns the report's path.

    Args:
        out: output folder (its old store is replaced).
        epochs: training epochs (default ``DEMO_EPOCHS``).
        records: about this many log-spaced epochs are recorded (``DEMO_RECORDS``).
    """
    from dynalens._threads import limit_threads

    wall0, cpu0 = time.perf_counter(), time.process_time()
    with limit_threads(1):  # small tensor ops: a thread pool only adds spinning under load
        report = _run(Path(out), epochs, records)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"report written to {report}")
    print(f"demo finished in {wall:.0f} s ({cpu:.0f} s CPU in this process)")
    return report


def _run(out: Path, epochs: int | None, records: int) -> Path:
    import shutil

    from dynalens.cli import format_info
    from dynalens.figures import png_problem, save_figure
    from dynalens.ib.figures import plot_information_plane, plot_training_curves
    from dynalens.ib.report import Section, write_report
    from dynalens.ib.summary import (
        conclusion,
        describe_estimator,
        format_summary,
        saturation_note,
        summarize,
        summary_table_html,
    )
    from dynalens.ib.training import train_ib_network
    from dynalens.probe.store_writer import is_store_root

    wall0, cpu0 = time.perf_counter(), time.process_time()
    store_path = out / "store.zarr"
    if store_path.exists() and is_store_root(store_path):
        shutil.rmtree(store_path)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_task()
    base = IBConfig(epochs=DEMO_EPOCHS if epochs is None else epochs, records=records, lr=3e-3)
    sections = []
    se_max = 0.0  # the largest Monte-Carlo standard error of any measurement (nats)
    for activation in ("tanh", "relu"):
        network = f"{activation} network"
        store = train_ib_network(
            x, y, replace(base, activation=activation), store_path, run=activation
        )
        print(format_info(store.info()), "\n")
        summaries, planes, notes = {}, [], []
        for label, method, noise_var, params, every in _estimators(activation):
            table = _plane(store, method, noise_var, params, every)
            words = describe_estimator(method, noise_var, params)
            fig = plot_information_plane(table, title=f"Information plane: {network}, {words}")
            save_figure(fig, out / f"plane_{activation}_{method}")
            planes.append(fig)
            summaries[label] = summarize(table)
            se_max = max(se_max, float(table[["I_XT_stderr", "I_TY_stderr"]].max().max()))
            print(format_summary(summaries[label], f"{network}, {words}"), "\n")
            note = saturation_note(table, f"{network}, {words}", len(x))
            if note:
                notes.append(note)
        curves = plot_training_curves(store, title=f"{network}: loss and accuracy")
        save_figure(curves, out / f"training_{activation}")
        sentence = conclusion(network, summaries)
        print(sentence, "\n")
        sections.append(
            Section(network, sentence, summary_table_html(summaries), notes, [*planes, curves])
        )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n_rec = len(store.steps(store.sites[0]))
    se_bits = se_max / math.log(2.0)
    intro = (
        f"The 12-10-7-5-4-3-2 network of Shwartz-Ziv & Tishby (2017), with tanh and with "
        f"ReLU hidden units, trained for {base.epochs} epochs (Adam, lr {base.lr:g}, batch "
        f"{base.batch_size}) on the built-in 12-bit task; every hidden layer recorded on all "
        f"{len(x)} inputs at {n_rec} log-spaced epochs. I(X;T) and I(T;Y) in bits: binning "
        "with 30 bins at every recorded epoch, and the known-channel estimator of Goldfeld et "
        f"al. (2019) for the layer plus Gaussian noise of variance {NOISE_VAR:g} (one noise "
        f"draw per input) at every {_ordinal(NOISY_EVERY)} recorded epoch and the last, its "
        "I(T;Y) by the chain rule I(X;T) - sum_y p(y) I(X;T|Y=y) (Monte-Carlo standard "
        f"errors up to {se_bits:.2f} bits, in the cached tables). "
        "Compression = peak - final I(X;T): how much information about the input a layer "
        f"dropped after its peak. Computed in {wall:.0f} s ({cpu:.0f} s CPU)."
    )
    end_notes = []
    if png_problem():
        end_notes.append(f"No PNG copies of the figures were written: {png_problem()}")
    report = write_report(
        out / "report.html",
        "dynalens demo: information planes of the 12-bit task",
        sections,
        intro=intro,
        notes=end_notes,
    )
    return report
