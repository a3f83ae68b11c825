"""``dynalens reproduce posthoc-cbm`` and its notebook run end to end (quick settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "posthoc_cbm.ipynb"


@pytest.mark.slow
def test_notebook_executes_and_writes_store_figures_results(
    execute_notebook, tmp_path: Path
) -> None:
    execute_notebook(NOTEBOOK, tmp_path, timeout=600)
    out = tmp_path / "out" / "notebooks" / "posthoc-cbm"
    res = json.loads((out / "results.json").read_text())
    assert (out / "store.zarr").exists() and (out / "accuracy.html").exists()
    assert (out / "head_weights.html").exists()
    for study in res["studies"].values():
        assert len(study["per_seed"]) == res["config"]["bank_seeds"]
        pcbm = study["pcbm"]
        # pruning the spurious background concepts helps on flipped backgrounds
        assert pcbm["flipped_pruned"]["mean"] > pcbm["flipped"]["mean"]
        assert pcbm["in_distribution"]["mean"] > 0.5
        assert len(study["sgd_head"]["accuracies"]) == res["config"]["sgd_seeds"]


def test_cli_lists_the_reproduction() -> None:
    from dynalens.cli import build_parser

    args = build_parser().parse_args(["reproduce", "posthoc-cbm", "--quick", "--out", "x"])
    assert args.name == "posthoc-cbm" and args.quick
