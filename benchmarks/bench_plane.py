"""A full Shwartz-Ziv & Tishby information plane with binning (issue: information
bottleneck, section 5): every layer of the 12-10-7-5-4-3-2 tanh network (5 hidden + the
output layer) on all 4096 inputs at the paper's log-spaced epochs (400 log-spaced indices
over 8000 epochs, deduplicated), 30 bins on [-1, 1]. Goal: under a minute.

Timed: ``information_plane(store, estimator="binning")`` from a store on disk (reading
included), against a plain numpy loop in the style of IDNNs (digitize, unique rows,
plug-in entropies) over the same arrays, in the same process; the two tables must agree.

usage: python benchmarks/bench_plane.py [--epochs 8000] [--samples 400]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_info

import dynalens
from dynalens.datasets import twelve_bit_task
from dynalens.ib.networks import tishby_network
from dynalens.ib.plane import information_plane
from dynalens.probe.schedules import LogSpaced


def paper_epochs(epochs: int, samples: int) -> list[int]:
    return LogSpaced(num=samples, stop=epochs).steps


def record(path: Path, epochs: list[int]) -> list[str]:
    """A store with the network's layers at each epoch. The weights take a random walk
    between records (the cost of the plane does not depend on how they were trained)."""
    x, y = twelve_bit_task()
    model = tishby_network("tanh")
    model.add_module("tanh6", nn.Tanh())  # the output layer's units, squashed like the rest
    sites = [n for n, m in model.named_children() if isinstance(m, nn.Tanh)]
    with dynalens.Recorder(model, path, sites=sites, every=epochs, capture=(),
                           probe=(torch.from_numpy(x).float(), torch.from_numpy(y)),
                           probe_batch_size=4096) as rec:  # fmt: skip
        gen = torch.Generator().manual_seed(0)
        for step in range(epochs[-1]):
            if step + 1 in set(epochs):
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.05 * torch.randn(p.shape, generator=gen))
            rec.step(step)
    return sites


def numpy_plane(
    store: dynalens.Store, sites: list[str]
) -> dict[tuple[str, int], tuple[float, float]]:
    """IDNNs-style: per layer and epoch, 30 bins on [-1, 1], unique rows, plug-in."""
    _, y = store.probe()
    edges = np.linspace(-1, 1, 31)

    def h(rows: np.ndarray) -> float:
        _, counts = np.unique(rows, axis=0, return_counts=True)
        p = counts / counts.sum()
        return float(-(p * np.log(p)).sum())

    out = {}
    for site in sites:
        acts = store.activations(site, source="probe")
        for step, t in zip(store.steps(site).tolist(), acts):
            digit = np.clip(np.digitize(t, edges[1:-1]), 0, 29)
            h_t = h(digit)
            h_ty = sum((y == k).mean() * h(digit[y == k]) for k in np.unique(y))
            out[(site, step)] = (h_t, h_t - h_ty)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8000)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    epochs = paper_epochs(args.epochs, args.samples)
    work = Path(tempfile.mkdtemp(prefix="dynalens-plane-"))
    try:
        sites = record(work / "s.zarr", epochs)
        store = dynalens.open_store(work / "s.zarr")
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        table = information_plane(store, estimator="binning", cache=False, progress=False,
                                  params={"n_bins": 30, "range": (-1.0, 1.0)})  # fmt: skip
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = numpy_plane(store, sites)
        t_numpy = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    diff = max(
        max(abs(r.I_XT - ref[(r.site, r.step)][0]), abs(r.I_TY - ref[(r.site, r.step)][1]))
        for r in table.itertuples()
    )
    result = {
        "benchmark": "information_plane_binning",
        "machine": machine_info(),
        "layers": len(sites),
        "samples": 4096,
        "recorded_epochs": len(epochs),
        "measurements": len(table),
        "dynalens_s": t_ours,
        "numpy_idnns_style_s": t_numpy,
        "speedup_vs_numpy": t_numpy / t_ours,
        "max_abs_difference_nats": diff,
        "goal": "< 60 s",
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "plane_cpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
