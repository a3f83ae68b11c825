"""Adds benchmark-mi (``bmi``, Czyz et al. NeurIPS 2023) to ``results/mi_cpu.json``.

benchmark-mi needs its own environment (numpy < 2, jax 0.4.30; see the guide), so it runs
as a separate process on the very arrays ``bench_mi.py`` measures (saved to .npy), and
its rows are merged into the results, marked as measured in another process.

    python3 -m venv /tmp/bmi-venv
    /tmp/bmi-venv/bin/pip install benchmark-mi jax==0.4.30 jaxlib==0.4.30
    .venv/bin/python benchmarks/bench_mi_bmi.py --bmi-python /tmp/bmi-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_mi import RESULTS, task

NAME = "benchmark-mi KSG ensemble k=5,10 (separate process)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bmi-python", required=True, help="python of the benchmark-mi environment")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dynalens-bmi-"))
    tasks = []
    for n in (1000, 10000):
        for d in (1, 5, 25):
            x, y, truth = task(n, d)
            px, py = work / f"x{n}_{d}.npy", work / f"y{n}_{d}.npy"
            np.save(px, x)
            np.save(py, y)
            tasks.append({"task": f"gauss d={d}+{d}", "n": n, "truth": truth,
                          "x": str(px), "y": str(py), "repeats": args.repeats})  # fmt: skip
    (work / "tasks.json").write_text(json.dumps(tasks))
    runner = Path(__file__).parent / "peers" / "bmi_runner.py"
    out = subprocess.run([args.bmi_python, str(runner), str(work / "tasks.json")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    peer_rows = json.loads(out.stdout.strip().splitlines()[-1])
    results = json.loads(RESULTS.read_text())
    results["rows"] = [r for r in results["rows"] if r["estimator"] != NAME]
    for r in peer_rows:
        results["rows"].append(
            {**r, "estimator": NAME, "abs_error": abs(r["estimate"] - r["truth"])}
        )
    results["benchmark_mi"] = {"python": args.bmi_python, "note": "timed in its own process"}
    RESULTS.write_text(json.dumps(results, indent=1))
    for r in results["rows"]:
        if r["estimator"] == NAME:
            print(
                f"{r['task']:>16} n={r['n']:>6}: error {r['abs_error']:.3f} in {r['seconds']:.2f} s"
            )


if __name__ == "__main__":
    main()
