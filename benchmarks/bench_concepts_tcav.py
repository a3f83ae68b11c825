"""TCAV on the CPU: dynalens against captum's TCAV, one process, interleaved.

Setting: an MLP 64-128-128-10 (tanh), the layer is the second hidden layer (128 features);
n = 10 000 target inputs; one concept of 200 examples shifted along a direction, a random
pool; R = 20 runs, each a concept-vs-random CAV and a random-vs-random CAV (the t-test's
null), so 40 CAVs and 40 TCAV scores. Both sides get the same random sets.

- captum 0.8: ``TCAV(model, [layer]).interpret(inputs, experimental_sets, target)`` with
  its default classifier (SGD) and LayerGradientXActivation (gradients), a fresh
  ``save_path`` per repeat (captum caches CAVs and activations on disk and would reuse
  them).
- dynalens: ``TCAV(model, layer, n_runs=20, compat="captum").fit(...).estimate(...)`` (SGD
  CAVs as captum, plus the t-test) and the default (batched Newton logistic CAVs, Welch +
  BH).

Time: min of ``--repeats`` (default 3) interleaved runs on one thread. Writes
``benchmarks/results/concepts_tcav_cpu.json`` with the times and their ratios, and the
mean TCAV score of each side (same sign convention: share of positive logit derivatives).

Run: ``.venv/bin/python benchmarks/bench_concepts_tcav.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _machine import machine_info
from torch import nn

from dynalens.estimators.concepts.tcav import TCAV

ROOT = Path(__file__).resolve().parents[1]
LAYER = "2"


def setup(n: int, m: int, runs: int, seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 10)
    ).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 64, generator=g)
    pool = torch.randn(4 * m * runs // 2 + 2 * m, 64, generator=g)
    concept = torch.randn(m, 64, generator=g) + 1.5 * torch.randn(64, generator=g) / 8**0.5
    draws = TCAV.random_draws(len(pool), m, runs, seed)
    return {"model": model, "x": x, "pool": pool, "concept": concept, "draws": draws, "m": m}


def _summary(v: list[float]) -> dict[str, float]:
    t = torch.tensor(v, dtype=torch.float64)
    return {"mean": float(t.mean()), "sd": float(t.std()), "min": float(t.min()),
            "max": float(t.max())}  # fmt: skip


def run_captum(s: dict[str, Any], runs: int) -> tuple[float, dict[str, float]]:
    from captum.concept import TCAV as CaptumTCAV
    from captum.concept import Concept

    def loader(t: torch.Tensor) -> Any:
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(t), batch_size=256,
            collate_fn=lambda b: torch.stack([r[0] for r in b]),
        )  # fmt: skip

    m = s["m"]
    concept = Concept(0, "concept", loader(s["concept"]))
    sets = []
    for r, d in enumerate(s["draws"]):
        a = Concept(1 + 2 * r, f"a{r}", loader(s["pool"][d[:m]]))
        b = Concept(2 + 2 * r, f"b{r}", loader(s["pool"][d[m:]]))
        sets += [[concept, b], [a, b]]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        tc = CaptumTCAV(s["model"], [LAYER], save_path=tmp)
        scores = tc.interpret(s["x"], sets, target=3)
        wall = time.perf_counter() - t0
    concept_scores = [float(scores[f"0-{2 + 2 * r}"][LAYER]["sign_count"][0]) for r in range(runs)]
    return wall, _summary(concept_scores)


def run_dynalens(
    s: dict[str, Any], runs: int, compat: str | None
) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    est = TCAV(s["model"], LAYER, n_runs=runs, n_random=s["m"], compat=compat)
    report = est.fit({"concept": s["concept"]}, s["pool"]).estimate(s["x"], 3)
    wall = time.perf_counter() - t0
    return wall, _summary(report["concept", LAYER].per_concept.tolist())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--m", type=int, default=200)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--results", default=str(ROOT / "benchmarks" / "results" / "concepts_tcav_cpu.json")
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = setup(args.n, args.m, args.runs)
    info = machine_info()
    info["loadavg_start"] = os.getloadavg()
    times: dict[str, list[float]] = {"captum": [], "dynalens_captum_compat": [], "dynalens": []}
    scores: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        times["captum"].append((r := run_captum(s, args.runs))[0])
        scores["captum"] = r[1]
        times["dynalens_captum_compat"].append((r := run_dynalens(s, args.runs, "captum"))[0])
        scores["dynalens_captum_compat"] = r[1]
        times["dynalens"].append((r := run_dynalens(s, args.runs, None))[0])
        scores["dynalens"] = r[1]
    info["loadavg_end"] = os.getloadavg()
    best = {k: min(v) for k, v in times.items()}
    out = {
        "what": "TCAV (CAV training + directional derivatives + scores), one concept, R runs",
        "setting": {
            "n": args.n,
            "concept_examples": args.m,
            "random_set_size": args.m,
            "runs": args.runs,
            "cavs": 2 * args.runs,
            "layer_features": 128,
            "model": "MLP 64-128-128-10 tanh",
            "target": 3,
        },
        "seconds_min": best,
        "seconds_all": times,
        "ratio_captum_over_dynalens_captum_compat": best["captum"] / best["dynalens_captum_compat"],
        "ratio_captum_over_dynalens_default": best["captum"] / best["dynalens"],
        "tcav_score_over_runs": scores,
        "note": "captum's SGD CAVs are unseeded, so its scores differ from the seeded "
        "compat run by the CAVs' randomness (see the spread over runs); interleaved "
        "repeats, min taken; 1 thread",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": info,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("seconds_min", "tcav_score_over_runs")}, indent=2))
    print(
        f"captum / dynalens (compat captum): {out['ratio_captum_over_dynalens_captum_compat']:.2f}x"
    )
    print(f"captum / dynalens (default): {out['ratio_captum_over_dynalens_default']:.2f}x")


if __name__ == "__main__":
    main()
