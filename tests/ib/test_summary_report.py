"""The demo's report and `dynalens reproduce` tell the story in bits (issue 11 §6): per-layer
summaries, one sentence of conclusion per network, binning saturation explained, loss and
accuracy on separate labelled axes, PNG copies or a plain reason why there are none."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest

from dynalens import figures
from dynalens.errors import InvalidParameterError
from dynalens.ib.report import Section, write_report
from dynalens.ib.summary import (
    conclusion,
    describe_estimator,
    format_summary,
    saturation_note,
    summarize,
    summary_table_html,
)

pd = pytest.importorskip("pandas")
LN2 = math.log(2.0)


def _table(i_xt_bits, i_ty_bits, saturated=None, site="tanh5", layer=5):
    n = len(i_xt_bits)
    return pd.DataFrame({
        "layer": [layer] * n, "site": [site] * n, "step": list(range(n)),
        "I_XT": np.array(i_xt_bits) * LN2, "I_TY": np.array(i_ty_bits) * LN2,
        "binning_saturated": saturated if saturated is not None else [False] * n,
    })  # fmt: skip


def test_summary_prints_bits_not_nats():
    summ = summarize(_table([1.0, 7.0, 3.5], [0.1, 0.9, 0.99]))
    assert summ[0]["compression"] == pytest.approx(3.5 * LN2)  # the table's unit: nats
    text = format_summary(summ, "tanh network, binning")
    assert text.splitlines()[0] == "tanh network, binning (bits)"
    assert re.search(r"5 tanh5\s+7\.00\s+3\.50\s+3\.50\s+0\.99$", text.splitlines()[-1])


def test_conclusion_says_whether_the_last_layer_compresses():
    comp = summarize(_table([2.0, 7.0, 3.0], [0.1, 0.9, 1.0]))
    flat = summarize(_table([2.0, 5.0, 5.0], [0.1, 0.9, 1.0]))
    both = conclusion("tanh network", {"binning": comp, "noisy": comp})
    assert both.startswith(
        "tanh network: the last hidden layer ends with I(T;Y) = 1.00 bits (binning) and "
        "1.00 bits (noisy), and it compresses: its I(X;T) falls 7.00 -> 3.00 bits (binning) "
        "and 7.00 -> 3.00 bits (noisy);"
    )
    mixed = conclusion("relu network", {"binning": comp, "noisy": flat})
    assert "compresses by binning (7.00 -> 3.00 bits) but not by noisy (5.00 -> 5.00 bits)" in (
        mixed
    )
    assert mixed.endswith(
        "the most any layer loses after its peak is 4.00 bits (layer 5, binning)."
    )
    none = conclusion("relu network", {"noisy": flat})
    assert "does not compress (I(X;T) peak -> final: 5.00 -> 5.00 bits (noisy))" in none
    assert none.endswith("is 0.00 bits (layer 5, noisy).")
    # the threshold: a loss of 0.2 bits is not compression, 0.3 bits is
    assert "does not compress" in conclusion("n", {"b": summarize(_table([5.0, 4.8], [0, 1]))})
    assert "compresses:" in conclusion("n", {"b": summarize(_table([5.0, 4.7], [0, 1]))})


def test_saturated_binning_is_explained_per_layer_and_marked():
    t = pd.concat([
        _table([12.0, 12.0], [1.0, 1.0], [True, True], site="tanh1", layer=1),
        _table([3.0, 2.0], [0.5, 0.9], site="tanh5", layer=5),
    ])  # fmt: skip
    note = saturation_note(t, "tanh network, binning", 4096)
    assert note.startswith("tanh network, binning: layer 1 (tanh1) at 2 of 2 epochs:")
    assert "log2 4096 = 12.0 bits" in note and "tanh5" not in note
    assert saturation_note(t[t["layer"] == 5], "x", 4096) is None
    html = summary_table_html({"binning": summarize(t)})
    assert "<td class='num'>12.00</td><td class='num'>12.00*</td>" in html  # final only
    assert "<td class='num'>2.00</td>" in html
    assert html.count("<tr>") == 4  # two heading rows, one row per layer


def test_describe_estimator_names_the_setting():
    assert describe_estimator("binning", None, {"n_bins": 30, "range": (-1, 1)}) == (
        "binning, 30 bins on [-1, 1]"
    )
    assert describe_estimator("binning", None, {"range": "layer"}).endswith("each layer's range")
    assert describe_estimator("noisy", 0.01, {}) == "noisy (known channel), noise variance 0.01"
    assert describe_estimator("kde", 0.1, {}) == "KDE bound, noise variance 0.1"


def test_training_curves_put_loss_and_accuracy_on_separate_labelled_axes():
    from dynalens.ib.figures import plot_training_curves

    spe = 3  # steps 0-2 are epoch 1, 3-5 epoch 2; test accuracy logged at each epoch's end
    df = pd.DataFrame({
        "step": range(6), "loss": [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        "train_accuracy": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "epoch": [None, None, 1.0, None, None, 2.0],
        "test_accuracy": [None, None, 0.25, None, None, 0.75],
    })  # fmt: skip
    fig = plot_training_curves(df, steps_per_epoch=spe, title="t")
    loss, train, test = fig.data
    np.testing.assert_allclose(loss.x, [1, 2])
    np.testing.assert_allclose(loss.y, [5.0, 2.0])  # epoch means
    np.testing.assert_allclose(train.y, [0.2, 0.5])
    np.testing.assert_allclose(test.y, [0.25, 0.75])
    assert loss.yaxis == "y" and train.yaxis == test.yaxis == "y2"
    assert fig.layout.yaxis.title.text == "training loss (nats)"
    assert fig.layout.yaxis2.title.text == "accuracy"
    assert fig.layout.xaxis2.title.text.startswith("epoch")
    with pytest.raises(InvalidParameterError, match="steps_per_epoch"):
        plot_training_curves(df)


def test_report_sections_escape_text_and_keep_notes(tmp_path):
    go = pytest.importorskip("plotly.graph_objects")
    sec = Section("tanh <network>", "a & b", "<table class='summary'></table>", ["note 1"],
                  [go.Figure(), go.Figure()])  # fmt: skip
    out = write_report(tmp_path / "r.html", "T", [sec], intro="i", notes=["No PNG copies: why"])
    html = out.read_text()
    assert "<h2>tanh &lt;network&gt;</h2><p>a &amp; b</p>" in html.replace("\n", "")
    assert "<table class='summary'></table>" in html
    assert "<p class='note'>note 1</p>" in html and "No PNG copies: why" in html
    assert html.count("plotly-graph-div") == 2 and html.count("plotly.js v") == 1


def test_plane_marks_saturated_binning(tmp_path):
    """The table says which measurements saturated (the report names those layers)."""
    from dynalens.ib.plane import information_plane
    from dynalens.ib.reproduce import load_task
    from dynalens.ib.training import IBConfig, train_ib_network

    x, y = load_task()
    store = train_ib_network(x, y, IBConfig(epochs=1, records=2), tmp_path / "s",
                             progress=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = information_plane(store, estimator="binning", progress=False,
                              params={"n_bins": 30, "range": (-1, 1)})  # fmt: skip
        coarse = information_plane(store, estimator="binning", progress=False,
                                   params={"n_bins": 2, "range": (-1, 1)})  # fmt: skip
    first = t[t["layer"] == 1]
    assert first["binning_saturated"].all()  # 10 units x 30 bins: one pattern per input
    assert (first["I_XT"] > math.log(4096) - 0.05).all()
    assert not t[t["layer"] == 5]["binning_saturated"].any()
    assert not coarse["binning_saturated"].any()  # at most 2^10 patterns < 4096 / 2


def test_cli_reproduce_prints_bits(tmp_path, capsys, monkeypatch):
    """Regression (issue 11 §6): `dynalens reproduce` printed compression in nats while the
    README speaks bits; it prints each layer's peak and final I(X;T), compression and final
    I(T;Y) in bits, and says plainly why PNG figures are missing."""
    from dynalens.cli import main

    monkeypatch.setitem(figures._PNG_STATE, "problem", "kaleido is not installed (test).")
    out = tmp_path / "tishby"
    assert main(["reproduce", "tishby", "--quick", "--epochs", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    summ = saved["runs"]["tanh"]["planes"]["binning"]["summary"]
    assert "tanh network, binning (bits)" in text
    for s in summ:
        row = re.search(rf"{s['layer']} {s['site']}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", text)
        assert row, text
        assert float(row[1]) == pytest.approx(s["I_XT_peak"] / LN2, abs=0.006)
        assert float(row[3]) == pytest.approx(s["compression"] / LN2, abs=0.006)
    assert "no PNG figures: kaleido is not installed (test)." in text
    assert not list(out.glob("*.png"))
