"""``dynalens reproduce koh-interventions``: files, store, consistency, notebook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynalens.concepts.koh_interventions import (
    MODES,
    POLICIES,
    QUICK,
    plot_koh_interventions,
    reproduce_koh_interventions,
)

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "koh_interventions.ipynb"
TINY = QUICK.__class__(n_train=120, n_test=80, size=12, epochs=1, batch_size=60,
                       monitor_every=1, probe_rows=80, metrics=("concept_accuracy",))  # fmt: skip


def test_figure_has_a_panel_per_mode_and_a_line_per_policy() -> None:
    curves = {m: {p: {"curve": [0.5, 0.6, 0.7]} for p in POLICIES} for m in MODES}
    fig = plot_koh_interventions(curves)
    assert len(fig.data) == len(MODES) * len(POLICIES)
    assert "Koh" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "concept groups intervened on"
    assert fig.layout.yaxis.title.text == "test task accuracy"


def test_tiny_run_writes_consistent_results_and_store(tmp_path) -> None:
    import dynalens

    res = reproduce_koh_interventions(tmp_path / "k", config=TINY, progress=False, png=False)
    saved = json.loads((tmp_path / "k" / "results.json").read_text())
    assert saved["summary"] == res["summary"] and saved["curves"] == res["curves"]
    for mode in MODES:
        curves = res["curves"][mode]
        assert set(curves) == set(POLICIES)
        for entry in curves.values():
            assert len(entry["curve"]) == 5  # j = 0..4 groups
            # j = 0 is the model's own prediction for every policy
            assert entry["curve"][0] == pytest.approx(res["final"][mode]["task_accuracy"])
        assert curves["random"]["exact"]
    store = dynalens.open_store(res["store"])
    assert sorted(store.runs) == sorted(MODES)
    scal = store.select("joint").scalars()
    logged = scal[["step", "joint.concept_accuracy"]].dropna()
    assert logged["step"].tolist() == list(range(len(logged)))  # every step (monitor_every=1)
    assert (
        logged["joint.concept_accuracy"].tolist()
        == res["monitor"]["joint.concept_accuracy"][: len(logged)]
    )
    assert any(f.endswith("koh_interventions.html") for f in res["files"])


@pytest.mark.slow
def test_cli_quick_run(tmp_path, capsys) -> None:
    from dynalens.cli import main

    assert main(["reproduce", "koh-interventions", "--quick", "--out", str(tmp_path)]) == 0
    assert "Largest gain" in capsys.readouterr().out
    assert (tmp_path / "results.json").exists() and (tmp_path / "store.zarr").exists()


@pytest.mark.slow
def test_notebook_executes(execute_notebook, tmp_path: Path) -> None:
    nb = execute_notebook(NOTEBOOK, tmp_path, timeout=600)
    out = tmp_path / "out" / "notebooks" / "koh_interventions"
    assert (out / "results.json").exists() and (out / "store.zarr").exists()
    assert nb.cells[-1].outputs[-1]["data"]["text/plain"] == "True"  # a figure was shown
