"""The ``dynalens`` command line.

``dynalens info STORE [--run RUN] [--json]``
    What a store holds: runs, sites, steps, shapes, dtypes, bytes.
``dynalens verify STORE [--run RUN] [--json]``
    Check every committed record, checksum and metadata file; exit code 1 when anything
    is damaged, 2 when the path is not a store.
``dynalens demo [--out DIR] [--epochs N]``
    The main job on the embedded default task (see :mod:`dynalens.demo`).
``dynalens reproduce NAME [--out DIR] [--quick] [--var-u PATH]``
    A paper reproduction (see :mod:`dynalens.ib.reproduce`,
    :mod:`dynalens.dynamics.mccandlish`, :mod:`dynalens.circuits.induction_heads`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from dynalens.errors import DynalensError


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_info(info: dict[str, Any]) -> str:
    """The human-readable form of :meth:`Store.info`."""
    steps = info["steps"]
    shown = ", ".join(map(str, steps[:10])) + (", ..." if len(steps) > 10 else "")
    lines = [
        f"store   {info['path']}",
        f"run     {info['run']}   (runs: {', '.join(info['runs'])})",
        f"steps   {info['committed_steps']} committed: [{shown}]",
        f"ranks   {info['world_size']}",
        f"scalars {', '.join(info['scalars']) or '-'}",
    ]
    if info.get("probe"):
        lines.append(
            f"probe   {info['probe']['n']} samples (X{', Y' if info['probe']['has_y'] else ''})"
        )
    lines.append(f"sites   {len(info['sites'])}: {', '.join(info['sites'])}")
    for pattern, names in info.get("site_patterns", {}).items():
        lines.append(f"  {pattern!r} matched {len(names)}: {', '.join(names)}")
    width = max([len(a["site"]) for a in info["arrays"]] + [4])
    lines.append(
        f"  {'site':<{width}}  {'kind':<17} {'steps':>5}  {'shape':<18} {'dtype':<9} bytes"
    )
    for a in info["arrays"]:
        shape = "(" + ", ".join(map(str, a["shape"])) + ")"
        lines.append(
            f"  {a['site']:<{width}}  {a['kind']:<17} {a['steps']:>5}  {shape:<18} "
            f"{a['dtype']:<9} {_human(a['bytes'])}"
        )
    lines.append(f"total   {_human(info['bytes'])}")
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> int:
    from dynalens.probe.store import open_store

    info = open_store(args.store, args.run).info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from dynalens.probe.verify import verify_store

    report = verify_store(args.store, args.run)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from dynalens.demo import run_demo

    run_demo(out=args.out, epochs=args.epochs)
    return 0


# Reproductions outside the information-bottleneck family: name -> (module, function).
# Each function takes (out, quick=...) and returns {"summary": str | dict, "files": [...]}.
OTHER_REPRODUCTIONS = {
    "mccandlish": ("dynalens.dynamics.mccandlish", "reproduce_mccandlish"),
    "induction-heads": ("dynalens.circuits.induction_heads", "reproduce_induction_heads"),
    "koh-interventions": ("dynalens.concepts.koh_interventions", "reproduce_koh_interventions"),
    "posthoc-cbm": ("dynalens.concepts.posthoc_reproduce", "reproduce_posthoc_cbm"),
    "concept-location": ("dynalens.concepts.location_reproduction", "reproduce_concept_location"),
}


def _reproduce_other(args: argparse.Namespace) -> int:
    import importlib

    from dynalens.figures import png_problem

    module, function = OTHER_REPRODUCTIONS[args.name]
    res = getattr(importlib.import_module(module), function)(args.out, quick=args.quick)
    summary = res["summary"]
    print(summary if isinstance(summary, str) else json.dumps(summary, indent=2, default=str))
    print("files:\n  " + "\n  ".join(map(str, res["files"])))
    if png_problem():
        print(f"no PNG figure: {png_problem()}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    if args.name in OTHER_REPRODUCTIONS:
        return _reproduce_other(args)
    from dynalens.figures import png_problem
    from dynalens.ib.reproduce import reproduce
    from dynalens.ib.summary import format_summary

    res = reproduce(args.name, args.out, quick=args.quick, epochs=args.epochs, var_u=args.var_u)
    for run, entry in res["runs"].items():
        for label, plane in entry["planes"].items():
            print(format_summary(plane["summary"], f"{run} network, {label}"), "\n")
    print("files:\n  " + "\n  ".join(res["files"]))
    if png_problem():
        print(f"no PNG figures: {png_problem()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynalens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="what a store holds")
    p.add_argument("store", help="path of the store directory")
    p.add_argument("--run", default=None, help="run name (default: the latest)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)
    p = sub.add_parser(
        "verify", help="check every committed record and checksum (exit 1 when damaged)"
    )
    p.add_argument("store", help="path of the store directory")
    p.add_argument("--run", default=None, help="one run (default: every run)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_verify)
    p = sub.add_parser("demo", help="the main job on the embedded default task")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    p.set_defaults(func=_demo)
    from dynalens.ib.reproduce import REPRODUCTIONS

    p = sub.add_parser("reproduce", help="reproduce a paper's figure")
    p.add_argument(
        "name",
        choices=sorted([*REPRODUCTIONS, *OTHER_REPRODUCTIONS]),
        help="which paper",
    )
    p.add_argument("--out", default=None, help="output folder (default out/NAME)")
    p.add_argument("--quick", action="store_true", help="a small configuration (minutes)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (IB papers)")
    p.add_argument("--var-u", default=None, help="path of the paper's var_u.mat (IB papers)")
    p.set_defaults(func=_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynalens`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DynalensError as exc:
        print(f"dynalens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
