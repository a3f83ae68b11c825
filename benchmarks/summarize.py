# ruff: noqa: E501  (markdown table rows read best on one line)
"""Print README's Performance tables from benchmarks/results/*.json (markdown).

usage: python benchmarks/summarize.py > /tmp/perf.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def recording(d: dict[str, Any]) -> list[str]:
    o, w, r = d["overhead"], d["write"], d["read"]
    return [
        "**Recording** (`bench_recording.py`; MLP 784-1024-1024-1024-10, batch 512, 4 sites, "
        "activations + gradients = 16 MiB every 10 steps):",
        "",
        "| measure | dynalens | baseline | ratio | goal |",
        "|---|---|---|---|---|",
        f"| step time, interleaved blocks, writer drain included | {f(o['total_s_recording_incl_drain'])} s | "
        f"{f(o['total_s_plain'])} s without recording | {f(o['step_time_ratio'], 3)} | <= 1.05 |",
        f"| write throughput | {w['store_mib_s']:.0f} MiB/s | raw O_DIRECT files "
        f"{w['raw_direct_files_mib_s']:.0f} MiB/s | {f(w['throughput_ratio_vs_raw_direct_files'])} | >= 0.5 |",
        f"| (same, against buffered raw writes into the page cache) | | raw files "
        f"{w['raw_files_mib_s']:.0f} / one flat file {w['raw_flat_mib_s']:.0f} MiB/s | "
        f"{f(w['throughput_ratio_vs_raw_files'])} / {f(w['throughput_ratio_vs_raw_flat'])} | |",
        f"| read one site, all {r['records']} steps ({r['mib']:.0f} MiB) | {f(r['read_one_site_all_steps_s'], 3)} s | "
        f"flat file {f(r['raw_flat_read_s'], 3)} s | {f(r['ratio_store_over_raw'])} | |",
    ]


def plane(d: dict[str, Any]) -> list[str]:
    return [
        f"**Information plane** (`bench_plane.py`): a full Tishby plane with binning, "
        f"{d['layers']} layers x {d['samples']} samples x {d['recorded_epochs']} recorded epochs "
        f"({d['measurements']} (layer, epoch) pairs) read from the store: "
        f"**{f(d['dynalens_s'], 1)} s** (goal < 60 s); an IDNNs-style numpy loop over the same "
        f"arrays {f(d['numpy_idnns_style_s'], 1)} s ({f(d['speedup_vs_numpy'], 1)}x); values "
        f"identical (max difference {d['max_abs_difference_nats']:.0e} nats).",
    ]


def mi(d: dict[str, Any]) -> list[str]:
    rows = [
        "**MI estimators** (`bench_mi.py`, n = 10k; error = |estimate - truth| in nats, "
        "time in s):",
        "",
        "| task (truth) | estimator | error | time |",
        "|---|---|---|---|",
    ]
    for r in d["rows"]:
        if r.get("n") == 10000 and r.get("abs_error") is not None:
            rows.append(
                f"| {r['task']} ({f(r['truth'], 3)}) | {r['estimator']} | "
                f"{f(r['abs_error'], 3)} | {f(r['seconds'], 2)} |"
            )
    for dims, g in d.get("goal_3x", {}).items():
        rows.append("")
        rows.append(
            f"KSG at {dims}: {f(g['speedup_vs_textbook'], 1)}x faster than a textbook KSG on "
            f"scipy's cKDTree at equal error ({f(g['error_ours'], 3)} vs "
            f"{f(g['error_textbook'], 3)} nats); goal >= 3x: "
            f"{'met' if g['met_3x_at_equal_or_lower_error'] else 'not met'}."
        )
    return rows


def gns(d: dict[str, Any]) -> list[str]:
    rows = [
        "**Per-example gradient norms** (`bench_gns.py`; CPU-time ratio to a plain forward + "
        "backward, median of rounds):",
        "",
        "| shape | dynalens | every 10 steps | hand-written floor | BackPACK | Opacus ghost "
        "| torch.func vmap | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in d["shapes"].items():
        r = s["ratio"]
        floor = r.get("floor_handwritten")
        rows.append(
            f"| {name} | {f(r['dynalens'])} | {f(r['dynalens_every10'])} | "
            f"{'-' if floor is None else f(floor)} | "
            f"{f(r.get('backpack_BatchL2Grad', float('nan')))} | {f(r.get('opacus_ghost', float('nan')))} | "
            f"{f(r.get('torch_func_vmap', float('nan')))} | {s['goal']} ({'met' if s['goal_met'] else 'not met'}) |"
        )
    return rows


def kernels(d: dict[str, Any]) -> list[str]:
    rows = [
        f"**Kernels, CPU fallbacks** (`bench_kernels.py`, n = {d['n']}; wall-time ratio, "
        "below 1 = dynalens faster):",
        "",
        "| op | case | fastest peer | vs fastest peer | vs torch.cdist |",
        "|---|---|---|---|---|",
    ]
    for r in d["results"]:
        cd = r.get("ratio_to_torch_cdist")
        rows.append(
            f"| {r['op']} | {r['case']} | {r.get('fastest_peer', '-')} | "
            f"{f(r['ratio_to_fastest_peer'])} | {'-' if cd is None else f(cd)} |"
        )
    return rows


def patching(d: dict[str, Any]) -> list[str]:
    t = d["task"]
    rows = [
        f"**Activation patching** (`bench_patching.py`; full sweeps, {t['positions']} tokens, "
        f"corrupt token at position {t['corrupt_position']}, {t['metric']}; CPU ms per "
        "sweep, min of interleaved rounds, 1 thread; speed-up = peer / dynalens):",
        "",
        "| model | sweep | cells | dynalens | per-cell loop | TL helper | nnsight loop | pyvene loop "
        "| vs TL (goal 4) | vs fastest wrapper (goal 2) | max err |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in d["configs"].items():
        for sweep, r in c["sweeps"].items():
            ms = r["ms"]
            wrap = r.get("speedup_vs_fastest_wrapper")
            rows.append(
                f"| {name} | {sweep} | {r['cells']} | {f(ms['dynalens'], 1)} | "
                f"{f(ms['dynalens_loop'], 1)} | {f(ms['tl_helper'], 1)} | "
                f"{f(ms['nnsight_loop'], 1) if 'nnsight_loop' in ms else '-'} | "
                f"{f(ms['pyvene_loop'], 1) if 'pyvene_loop' in ms else '-'} | "
                f"{f(r['speedup_vs_tl_helper'], 1)} | {'-' if wrap is None else f(wrap, 1)} | "
                f"{max(r['max_abs_err_vs_loop'].values()):.0e} |"
            )
    rows += ["", "| model | EAP-IG m=16, all edges | exact, all nodes (all positions) | "
             "exact, all nodes by position | same, one forward per cell |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, c in d["configs"].items():
        ms = c["eap_ig"]["ms"]
        rows.append(
            f"| {name} | {f(ms['eap_ig_m16_all_edges'], 1)} | "
            f"{f(ms['exact_nodes_all_pos'], 1)} | {f(ms['exact_nodes_by_pos'], 1)} | "
            f"{f(ms['exact_nodes_by_pos_per_cell_loop'], 1)} |"
        )
    return rows


def separation_rows(sep: dict[str, Any]) -> list[str]:
    rows = [
        "",
        f"Pure vs leaky representation (n = {sep['n']}, k = {sep['k']}, leak {sep['leak']}, "
        f"{sep['seeds']} split seeds; separation = difference of means / pooled seed sd):",
        "",
        "| score | probe | pure | leaky | separation | every pure < every leaky |",
        "|---|---|---|---|---|---|",
    ]
    for key, score, probe in (
        ("ois_dynalens", "OIS", "dynalens: converged logistic (closed form)"),
        ("ois_cem_probe", "OIS", "cem: 1-32-1 MLP, Adam, 25 epochs (reimplemented)"),
        ("nis_dynalens", "NIS", "dynalens: Newton logistic"),
        ("nis_cem_probe", "NIS", "cem: MLPClassifier((20, 20)) (reimplemented)"),
    ):
        s = sep.get(key)
        if s is None:
            continue
        mp, ml = sum(s["pure"]) / len(s["pure"]), sum(s["leaky"]) / len(s["leaky"])
        rows.append(
            f"| {score} | {probe} | {f(mp, 3)} | {f(ml, 3)} | {f(s['separation'], 1)} | "
            f"{'yes' if s['pure_max_below_leaky_min'] else 'no'} |"
        )
    return rows


def concepts(d: dict[str, Any]) -> list[str]:
    rows = [
        f"**Concept metrics** (`bench_concepts.py`; n = {d['n']} samples x {d['k']} concepts, "
        "one thread, min of interleaved repeats; dynalens with its defaults: 200-replicate "
        "intervals, 5 split seeds where a probe enters; goal <= 10 s and faster than the "
        "reference):",
        "",
        "| metric | dynalens | reference | reference time | ratio |",
        "|---|---|---|---|---|",
    ]

    def sec(x: float) -> str:
        return f"{f(x * 1000, 2)} ms" if x < 0.01 else f"{f(x, 3)} s"

    for r in d["timings"]:
        ref = r.get("reference", "none")
        t_ref = sec(r["reference_s"]) if "reference_s" in r else "-"
        ratio = f(r["ratio"], 3) if "ratio" in r else "-"
        rows.append(f"| {r['metric']} | {sec(r['dynalens_s'])} | {ref} | {t_ref} | {ratio} |")
    for sep in d["separation"]:
        rows += separation_rows(sep)
    rows += ["", f"References: PyC {d['references']['pyc']}; cem {d['references']['cem']}."]
    return rows


def main() -> None:
    out: list[str] = []
    for name, fn in (("recording_cpu", recording), ("plane_cpu", plane), ("mi_cpu", mi),
                     ("gns_cpu", gns), ("kernels_cpu", kernels),
                     ("patching_cpu", patching), ("concepts_cpu", concepts)):  # fmt: skip
        d = load(name)
        if d is not None:
            out += [*fn(d), ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
