"""``dynalens reproduce induction-heads``: the CLI writes its files, and the quick run
(executed through the notebook) shows the phase change (issue 12, section 4)."""

import functools
import json
from dataclasses import replace
from pathlib import Path

import pytest

from dynalens import figures
from dynalens.circuits import induction_heads
from dynalens.cli import main

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "induction_heads.ipynb"
TINY = replace(
    induction_heads.FULL, seq_len=24, k=4, max_gap=4, d_vocab=16, d_model=16, n_heads=2,
    steps=12, batch=8, log_checkpoints=3, every_checkpoint=6, eval_batch=8, patch_batch=4,
)  # fmt: skip


def test_cli_writes_store_figure_and_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(induction_heads, "QUICK", TINY)  # the CLI path, in seconds
    # HTML only: the PNG renderer is tested in tests/test_figures.py and by the notebook
    monkeypatch.setattr(figures, "save_figure", functools.partial(figures.save_figure, png=False))
    assert main(["reproduce", "induction-heads", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["name"] == "induction-heads" and res["quick"] is True
    assert res["config"]["steps"] == 12 and res["checkpoints"] == TINY.checkpoint_steps()
    assert {"phase_change_step", "loss", "accuracy", "max_induction_score_layer1",
            "max_previous_token_score_layer0", "largest_patching_effect",
            "top_induction_head"} <= set(res["summary"])  # fmt: skip
    assert set(res["tables"]) == {"performance", "induction", "previous_token", "patching"}
    steps = TINY.checkpoint_steps()
    assert [r["step"] for r in res["tables"]["performance"]] == steps
    assert len(res["tables"]["induction"]) == len(steps) * 2 * 2  # step x layer x head
    assert (tmp_path / "induction_heads.html").exists() and (tmp_path / "store.zarr").is_dir()
    assert "phase_change_step" in capsys.readouterr().out
    import dynalens

    store = dynalens.open_store(tmp_path / "store.zarr")
    assert store.checkpoint_steps().tolist() == steps
    assert len(store.scalars()) == 12  # loss and accuracy at every step


@pytest.mark.slow
def test_notebook_quick_run_shows_the_phase_change(execute_notebook, tmp_path):
    nb = execute_notebook(NOTEBOOK, tmp_path, timeout=600)
    out = tmp_path / "out" / "notebooks" / "induction_heads"
    s = json.loads((out / "results.json").read_text())["summary"]
    # induction heads: near chance at step 0, dominant at the end; previous-token heads too
    assert s["max_induction_score_layer1"][0] < 0.15 < 0.5 < s["max_induction_score_layer1"][1]
    assert (
        s["max_previous_token_score_layer0"][0]
        < 0.15
        < 0.3
        < s["max_previous_token_score_layer0"][1]
    )
    assert s["top_induction_head"]["head"].startswith("L1")
    assert s["top_previous_token_head"]["head"].startswith("L0")
    # the loss drops with them, at the same checkpoint, and the heads become causally needed
    assert s["loss"][0] > 4.0 and s["loss"][1] < 1.5 and s["accuracy"][1] > 0.7
    assert 0 < s["phase_change_step"] < s["last_step"]
    assert abs(s["phase_change_step"] - s["loss_halfway_step"]) <= 100
    assert s["largest_patching_effect"][0] > -0.1 and s["largest_patching_effect"][1] < -1.0
    assert int(nb.cells[-1].outputs[-1]["data"]["text/plain"]) == 1  # the figure was shown


def test_figure_has_a_title_labelled_axes_and_one_trace_per_head():
    import pandas as pd

    from dynalens.circuits.figures import plot_induction_heads

    steps = [0, 5, 10]
    heads = pd.DataFrame(
        [(s, lay, h, 0.1 * s / 10 + 0.01 * h) for s in steps for lay in (0, 1) for h in (0, 1)],
        columns=["step", "layer", "head", "score"],
    )
    tables = {
        "performance": pd.DataFrame(
            {"step": steps, "loss": [4.0, 2.0, 0.5], "accuracy": [0, 0.5, 0.9]}
        ),
        "induction": heads,
        "previous_token": heads,
        "patching": heads.rename(columns={"score": "effect"}),
    }
    fig = plot_induction_heads(tables, phase_change_step=5)
    assert "phase change" in fig.layout.title.text
    assert [fig.layout[a].title.text for a in ("yaxis", "yaxis2", "yaxis3")] == [
        "loss (nats)", "attention weight", "Δ log-prob (nats)",
    ]  # fmt: skip
    assert fig.layout.xaxis3.title.text == "training step"
    assert len(fig.data) == 1 + 2 + 2 + 4  # loss, L1 induction, L0 previous-token, all heads
    assert fig.layout.shapes[0].x0 == 5
