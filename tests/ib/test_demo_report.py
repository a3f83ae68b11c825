"""The main job's report tells the story on its own (issue 11 §6), on a tiny configuration."""

from __future__ import annotations

import re
import warnings

import pytest

from dynalens import figures


@pytest.mark.slow
def test_demo_report_tells_the_story_with_pngs(tmp_path, capsys, monkeypatch):
    from dynalens.demo import run_demo
    from dynalens.estimators.mi import BinningWarning

    monkeypatch.setitem(figures._PNG_STATE, "problem", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run_demo(out=tmp_path / "demo", epochs=3, records=3)
    assert not [w for w in caught if issubclass(w.category, BinningWarning)]  # explained
    printed = capsys.readouterr().out
    assert re.search(r"demo finished in \d+ s \(\d+ s CPU", printed)
    assert "tanh network, binning, 30 bins on [-1, 1] (bits)" in printed
    assert "relu network, noisy (known channel), noise variance 0.01 (bits)" in printed
    html = report.read_text()
    for title in (
        "Information plane: tanh network, binning, 30 bins on [-1, 1]",
        "Information plane: tanh network, noisy (known channel), noise variance 0.01",
        "Information plane: relu network, binning, 30 bins over each layer",
        "Information plane: relu network, noisy (known channel), noise variance 0.01",
        "tanh network: loss and accuracy",
        "relu network: loss and accuracy",
    ):
        assert title in html, title
    assert html.count("plotly-graph-div") >= 6
    assert html.count("<table class='summary'>") == 2
    assert html.count("the last hidden layer ends with I(T;Y) =") == 2  # one per network
    assert "training loss (nats)" in html and "epoch (log scale)" in html
    assert "layer 1 (tanh1)" in html and "it measures the bins" in html  # saturation note
    assert "No PNG copies" not in html
    pngs = sorted(p.name for p in (tmp_path / "demo").glob("*.png"))
    assert pngs == sorted(
        f"{kind}_{net}{est}.png"
        for net in ("tanh", "relu")
        for kind, est in (("plane", "_binning"), ("plane", "_noisy"), ("training", ""))
    )
