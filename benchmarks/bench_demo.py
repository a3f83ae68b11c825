"""CPU time and wall time of the main job, ``dynalens demo`` (README: Quick start).

Runs the demo in a fresh process (as ``make demo`` does), ``--repeat`` times, and writes
``benchmarks/results/demo_cpu.json``: per run the wall time and the CPU time (user +
system) of the demo and of every process it started (the PNG renderer included), the
load average before and after (the CPU time of a process grows when other processes share
the cores), and machine facts. The goal of issue 11: under 60 s of CPU time on 2 cores.

Run: ``.venv/bin/python benchmarks/bench_demo.py [--repeat 2] [--out out/bench_demo]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_info

ROOT = Path(__file__).resolve().parents[1]


def run_once(out: str) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dynalens.cli", "demo", "--out", out], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "out" / "bench_demo"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "demo_cpu.json"))
    args = ap.parse_args()
    runs = [run_once(args.out) for _ in range(args.repeat)]
    for r in runs:
        print(json.dumps(r))
    result = {"runs": runs, "machine": machine_info()}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
