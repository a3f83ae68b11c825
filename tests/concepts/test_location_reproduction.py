"""`dynalens reproduce concept-location --quick` runs end to end: store, figure, JSON;
the notebook executes in a fresh kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynalens.cli import main

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "concept_location.ipynb"


def test_cli_quick_writes_store_figure_and_results(tmp_path: Path, capsys) -> None:
    pytest.importorskip("plotly")
    assert main(["reproduce", "concept-location", "--quick", "--out", str(tmp_path)]) == 0
    assert "pointing game" in capsys.readouterr().out
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["runs"]) == {"instance_rho0", "instance_rho1", "class_rho0"}
    for run in res["runs"].values():
        for name in ("concept_accuracy", "ois", "pointing", "mass_own", "clm", "mass_partner"):
            low, high = run[name]["interval"]
            assert low <= run[name]["value"] <= high
        assert len(run["pointing"]["per_concept"]) == 4
    assert (tmp_path / "concept_location.html").exists()
    import dynalens

    store = dynalens.open_store(tmp_path / "store.zarr")
    assert sorted(store.runs) == ["class_rho0", "instance_rho0", "instance_rho1"]
    scalars = store.select("instance_rho1").scalars()
    assert "final/pointing" in scalars.columns and "concept_loss" in scalars.columns


@pytest.mark.slow
def test_notebook_executes(execute_notebook, tmp_path: Path) -> None:
    nb = execute_notebook(NOTEBOOK, tmp_path, timeout=300)
    out = tmp_path / "out" / "notebooks" / "concept_location"
    assert (out / "results.json").exists() and (out / "store.zarr").exists()
    assert int(nb.cells[-1].outputs[-1]["data"]["text/plain"]) == 1  # the figure was shown
