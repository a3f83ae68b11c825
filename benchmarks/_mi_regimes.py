"""The hard regimes of issue 15 for bench_mi.py: ground-truth tasks of
dynalens.datasets.mi_tasks at n = 1k and 10k, each estimated by ``auto`` now, by the
estimator ``auto`` used before the issue (with the same hints), and by peers.

Families (error = |estimate - truth| in nats, MAE per family and n):

* undersampled discrete: binned tanh layers 0, 2, 4 of the 12-bit task, deterministic and
  with symbol noise 0.1 (before: plug-in ``binning``; peer: scikit-learn
  ``mutual_info_score`` on the symbols, the same plug-in NPEET's ``midd`` computes);
* mixed: ReLU of correlated Gaussians with 1, 3, 5 units, and a continuous 2-D layer vs a
  binary label (Gaussian classes) (before: ``ksg``, i.e. KSG / Ross; peer: textbook KSG on
  cKDTree for the ReLU rows);
* noisy observed: the noisy tanh layer (1 and 3 units, noise_var 0.01) recorded after the
  noise, with ``noise_var`` given (before: ``noisy`` on the observations as if clean; peer:
  textbook KSG with the inputs as coordinates).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from dynalens.datasets.mi_tasks import (
    binned_layer_task,
    gaussian_classes_task,
    noisy_tanh_task,
    relu_gaussian_task,
)
from dynalens.estimators import mutual_information


def _timed(fn: Callable[[], float]) -> tuple[float, float]:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = float(fn())
    return val, time.perf_counter() - t0


def _tasks(n: int, textbook_ksg: Callable[..., float]) -> list[tuple[str, str, float, dict]]:
    """(family, task, truth, {estimator: callable}) per task at sample size n."""
    from sklearn.metrics import mutual_info_score

    out = []
    for noise in (0.0, 0.1):
        for layer in (0, 2, 4):
            x, t, truth = binned_layer_task(n, layer=layer, noise=noise, seed=layer)
            out.append(
                (
                    "undersampled discrete",
                    f"binned tanh layer {layer}, symbol noise {noise}",
                    truth,
                    {
                        "dynalens.auto": lambda x=x, t=t: mutual_information(x, t),
                        "before: binning (plug-in)": lambda x=x, t=t: mutual_information(
                            x, t, method="binning"
                        ),
                        "sklearn mutual_info_score": lambda x=x, t=t: mutual_info_score(
                            np.unique(x, axis=0, return_inverse=True)[1].ravel(), t
                        ),
                    },
                )
            )
    for d in (1, 3, 5):
        x, t, truth = relu_gaussian_task(n, d, seed=d)
        out.append(
            (
                "mixed",
                f"ReLU of correlated Gaussians, {d} units",
                truth,
                {
                    "dynalens.auto": lambda x=x, t=t: mutual_information(x, t),
                    "before: ksg": lambda x=x, t=t: mutual_information(x, t, method="ksg"),
                    "textbook_ckdtree_ksg": lambda x=x, t=t: textbook_ksg(x, t),
                },
            )
        )
    x, y, truth = gaussian_classes_task(n, d=2, separation=2.0, seed=0)
    out.append(
        (
            "mixed",
            "2-D Gaussian classes vs binary label",
            truth,
            {
                "dynalens.auto": lambda x=x, y=y: mutual_information(x, y),
                "before: ksg (Ross)": lambda x=x, y=y: mutual_information(x, y, method="ksg"),
            },
        )
    )
    for units in (1, 3):
        x, _, t, truth = noisy_tanh_task(n, units, 0.01, seed=units)
        out.append(
            (
                "noisy observed",
                f"noisy tanh layer, {units} unit(s), observed",
                truth,
                {
                    "dynalens.auto": lambda x=x, t=t: mutual_information(x, t, noise_var=0.01),
                    "before: noisy (as if clean)": lambda x=x, t=t: mutual_information(
                        x, t, method="noisy", noise_var=0.01
                    ),
                    "textbook_ckdtree_ksg (x as coords)": lambda x=x, t=t: textbook_ksg(
                        x.astype(float), t
                    ),
                },
            )
        )
    return out


def regime_rows(sizes: tuple[int, ...], textbook_ksg: Callable[..., float]) -> list[dict]:
    rows = []
    for n in sizes:
        for family, task, truth, cands in _tasks(n, textbook_ksg):
            for name, fn in cands.items():
                try:
                    val, sec = _timed(fn)
                except Exception as exc:  # a refusal is a row too
                    val, sec = math.nan, math.nan
                    print(f"  {name}: refused ({type(exc).__name__}: {str(exc)[:80]})")
                rows.append(
                    {
                        "family": family,
                        "task": task,
                        "n": n,
                        "estimator": name,
                        "truth": truth,
                        "estimate": val,
                        "abs_error": abs(val - truth),
                        "seconds": sec,
                    }
                )
                print(
                    f"n={n:>6} {task:<48} {name:<36} est={val:7.3f} truth={truth:6.3f} "
                    f"err={abs(val - truth):6.3f} t={sec:6.2f}s",
                    flush=True,
                )
    return rows


def family_summary(rows: list[dict]) -> dict[str, Any]:
    """MAE per family and n for auto now vs the estimator auto used before."""
    out: dict[str, Any] = {}
    for family in sorted({r["family"] for r in rows}):
        for n in sorted({r["n"] for r in rows}):
            sel = [r for r in rows if r["family"] == family and r["n"] == n]
            now = [r["abs_error"] for r in sel if r["estimator"] == "dynalens.auto"]
            before = [r["abs_error"] for r in sel if r["estimator"].startswith("before")]
            if now and before:
                mn, mb = float(np.mean(now)), float(np.mean(before))
                out[f"{family} n={n}"] = {
                    "mae_auto_now": mn,
                    "mae_before": mb,
                    "ratio": mn / mb if mb > 0 else math.nan,
                    "halved": mn <= 0.5 * mb,
                }
    return out
