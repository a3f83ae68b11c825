"""The McCandlish notebook runs end to end (quick configuration) in a fresh kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "mccandlish.ipynb"


@pytest.mark.slow
def test_notebook_executes(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    out = tmp_path / "out" / "notebooks" / "mccandlish"
    assert (out / "results.json").exists() and (out / "store.zarr").exists()
    assert int(nb.cells[-1].outputs[-1]["data"]["text/plain"]) == 1  # the figure was shown
