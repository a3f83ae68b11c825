"""Figures of the scalar table, with the live noise-scale monitor writing through a real
Recorder (the integration of dynalens.dynamics with the store)."""

import numpy as np
import pytest
import torch
from torch import nn

import dynalens
from dynalens.dynamics import GradientNoiseScaleMonitor
from dynalens.errors import InvalidParameterError
from dynalens.figures import plot_scalars, save_figure


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
