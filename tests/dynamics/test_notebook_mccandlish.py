"""The McCandlish notebook runs end to end (quick configuration) in a fresh kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "mccandlish.ipynb"


@pytest.mark.slow
def test_notebook_executes(execute_notebook, tmp_path: Path) -> None:
    nb = execute_notebook(NOTEBOOK, tmp_path, timeout=300)
    out = tmp_path / "out" / "notebooks" / "mccandlish"
    assert (out / "results.json").exists() and (out / "store.zarr").exists()
    assert int(nb.cells[-1].outputs[-1]["data"]["text/plain"]) == 1  # the figure was shown
