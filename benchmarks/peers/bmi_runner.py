"""Runs benchmark-mi's KSG ensemble (Czyz et al. 2023) on saved tasks; executed by
``bench_mi_bmi.py`` with the python of a separate environment (benchmark-mi needs
numpy < 2 and jax 0.4.30, which must not enter dynalens's environment).

usage: BMI_PYTHON benchmarks/peers/bmi_runner.py TASKS.json  -> JSON rows on stdout
"""

import json
import sys
import time

import numpy as np


def main() -> None:
    import bmi

    tasks = json.loads(open(sys.argv[1]).read())
    est = bmi.estimators.KSGEnsembleFirstEstimator(neighborhoods=(5, 10))
    rows = []
    for t in tasks:
        x, y = np.load(t["x"]), np.load(t["y"])
        best, value = float("inf"), float("nan")
        for _ in range(t.get("repeats", 1)):
            t0 = time.perf_counter()
            value = float(est.estimate(x, y))
            best = min(best, time.perf_counter() - t0)
        rows.append(
            {**{k: t[k] for k in ("task", "n", "truth")}, "estimate": value, "seconds": best}
        )
        print(f"{t['task']} n={t['n']}: {value:.4f} in {best:.2f} s", file=sys.stderr, flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
