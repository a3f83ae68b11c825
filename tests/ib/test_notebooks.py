"""The paper notebooks run end to end (quick configurations) in a fresh kernel."""

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tishby", "saxe", "chelombiev", "goldfeld"])
def test_notebook_executes(execute_notebook, name, tmp_path):
    nb = execute_notebook(NOTEBOOKS / f"{name}.ipynb", tmp_path)
    assert (tmp_path / "out" / "notebooks" / name / "results.json").exists()
    last = nb.cells[-1].outputs[-1]
    assert int(last["data"]["text/plain"]) >= 1  # at least one information plane drawn
