"""Critical batch size vs gradient noise scale on the CPU (McCandlish et al. 2018).

Runs the full ``dynalens reproduce mccandlish`` sweep (digits MLP, 8 batch sizes x 11
learning rates x 3 seeds), then writes ``benchmarks/results/cbs_cpu.json``: per target
loss ``B_crit`` with its bootstrap interval, ``S_min``, ``E_min``, Zhang et al.'s CBS
(implied by the fit and interpolated), ``B_simple`` at the same loss, and machine facts;
and copies the two-panel figure to ``docs/figures/mccandlish.png`` (the README figure).

Run: ``.venv/bin/python benchmarks/bench_cbs.py [--out out/mccandlish]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from _machine import machine_info

from dynalens.dynamics.mccandlish import reproduce_mccandlish

ROOT = Path(__file__).resolve().parents[1]
KEEP = ["target", "b_crit", "b_crit_low", "b_crit_high", "s_min", "e_min", "cbs_zhang_model",
        "cbs_zhang_data", "b_simple", "b_simple_low", "b_simple_high", "n_points",
        "max_relative_residual"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "out" / "mccandlish"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "cbs_cpu.json"))
    ap.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "mccandlish.png"))
    args = ap.parse_args()
    info = machine_info()
    info["loadavg_start"] = os.getloadavg()
    res = reproduce_mccandlish(args.out, quick=False, progress=False)
    info["loadavg_end"] = os.getloadavg()
    info["torch_threads"] = 1  # the reproduction trains on one thread
    per_target = [{k: row.get(k) for k in KEEP} for row in res["fits"]]
    for row in per_target:
        b, s = row["b_crit"], row["b_simple"]
        ok = isinstance(b, float) and isinstance(s, float) and b > 0
        row["b_simple_over_b_crit"] = s / b if ok else None
    out = {
        "what": "B_crit from a batch-size sweep vs B_simple measured along training",
        "task": res["task"],
        "claim": res["claim"],
        "summary": res["summary"],
        "per_target": per_target,
        "config": res["config"],
        "sweep": res["sweep"],
        "wall_s": res["wall_s"],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": info,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2))
    png = next(f for f in res["files"] if f.endswith("mccandlish.png"))
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, args.figure)
    print(res["summary"])
    print(f"wrote {args.results} and {args.figure} ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
