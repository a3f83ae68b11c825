"""Figures of the scalar table, with the live noise-scale monitor writing through a real
Recorder (the integration of dynalens.dynamics with the store), and saving them as HTML
and PNG on a machine without a browser."""

import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dynalens
from dynalens import figures
from dynalens.dynamics import GradientNoiseScaleMonitor
from dynalens.errors import InvalidParameterError
from dynalens.figures import plot_scalar_panels, plot_scalars, png_problem, save_figure


def test_gns_scalars_reach_the_store_and_plot(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(256, 5), torch.randint(0, 3, (256,))
    with dynalens.Recorder(model, tmp_path / "s", sites="0", every=[0]) as rec:
        with GradientNoiseScaleMonitor(model, optimizer=opt, every=1, recorder=rec) as gns:
            for step in range(6):
                idx = torch.randint(0, 256, (32,))
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.step(step, loss=loss.item())
        final = gns.compute()
    df = dynalens.open_store(tmp_path / "s").scalars()
    assert {"loss", "gns.b_simple", "gns.trace_sigma", "gns.grad_sq"} <= set(df.columns)
    last = df.dropna(subset=["gns.trace_sigma"]).iloc[-1]
    assert last["gns.trace_sigma"] == pytest.approx(final["gns.trace_sigma"])
    fig = plot_scalars(dynalens.open_store(tmp_path / "s"), ["loss", "gns.trace_sigma"])
    assert [t.name for t in fig.data] == ["loss", "gns.trace_sigma"]
    np.testing.assert_allclose(fig.data[0].y, df["loss"].dropna())
    files = save_figure(fig, tmp_path / "fig", png=False)
    assert files[0].read_text().count("plotly") > 10
    with pytest.raises(InvalidParameterError, match=r"did you mean 'gns\.b_simple'"):
        plot_scalars(df, ["gns.b_simpel"])


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _figure():
    go = pytest.importorskip("plotly.graph_objects")
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))
    fig.update_layout(width=300, height=200)
    return fig


def test_save_figure_writes_png_with_the_pinned_renderer(tmp_path):
    files = save_figure(_figure(), tmp_path / "fig")
    assert [f.name for f in files] == ["fig.html", "fig.png"]
    assert _png_size(files[1]) == (600, 400)  # scale 2
    assert png_problem() is None


def test_png_needs_no_chrome_on_the_machine(tmp_path):
    """Regression (issue 11 §6): `make test` failed on a fresh machine, because kaleido 1.x
    renders through an installed Chrome. With only bash and dirname on PATH (no browser
    can be found), the pinned renderer still writes the PNG."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "dirname"):
        (tools / tool).symlink_to(shutil.which(tool))
    code = (
        "import sys, warnings; warnings.simplefilter('error');"
        "import plotly.graph_objects as go; from dynalens.figures import save_figure;"
        "files = save_figure(go.Figure(go.Bar(y=[1, 2])), sys.argv[1]);"
        "print([f.suffix for f in files])"
    )
    env = {**os.environ, "PATH": str(tools)}
    env.pop("BROWSER", None)
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "bar")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['.html', '.png']"
    assert _png_size(tmp_path / "bar.png")[0] > 0


def test_missing_png_renderer_is_explained_once(tmp_path, monkeypatch):
    """Where PNG rendering fails the HTML is still written, a warning says why and how to
    fix it (once), and png_problem() keeps the reason for reports."""
    calls = []

    def fail(fig, path, scale):
        calls.append(path)
        raise RuntimeError("Could not find Chrome")

    monkeypatch.setattr(figures, "_write_png", fail)
    monkeypatch.setitem(figures._PNG_STATE, "problem", None)
    monkeypatch.setattr(pytest.importorskip("kaleido"), "__version__", "1.5.0")
    with pytest.warns(figures.MissingPNGWarning, match=r"Chrome.*kaleido==0\.2\.1"):
        files = save_figure(_figure(), tmp_path / "a")
    assert [f.name for f in files] == ["a.html"] and (tmp_path / "a.html").exists()
    assert "kaleido 1.5.0 renders through an installed Chrome" in png_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = save_figure(_figure(), tmp_path / "b")  # no second warning, no retry
    assert [f.name for f in files] == ["b.html"] and len(calls) == 1


def test_scalar_panels_give_each_quantity_its_own_labelled_axis():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"step": [1, 2, 3], "loss": [2.0, 1.0, 0.5], "acc": [0.2, 0.6, 0.9]})
    fig = plot_scalar_panels(df, {"loss (nats)": ["loss"], "accuracy": ["acc"]},
                             y_ranges={"accuracy": (0, 1)})  # fmt: skip
    assert [t.name for t in fig.data] == ["loss", "acc"]
    assert fig.data[0].yaxis == "y" and fig.data[1].yaxis == "y2"
    assert fig.layout.yaxis.title.text == "loss (nats)"
    assert fig.layout.yaxis2.title.text == "accuracy"
    assert tuple(fig.layout.yaxis2.range) == (0, 1)
    assert fig.layout.xaxis2.title.text == "step"
    np.testing.assert_allclose(fig.data[1].y, [0.2, 0.6, 0.9])
    with pytest.raises(InvalidParameterError, match="did you mean 'loss'"):
        plot_scalar_panels(df, {"x": ["los"]})
