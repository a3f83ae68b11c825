"""Regression tests for the lazy per-step scalars of GradientNoiseScaleMonitor (the
interval and per-layer values are computed on access, not at every step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _dyn_models import ce, mlp

from dynalens.dynamics.gns_live import GradientNoiseScaleMonitor, StepScalars


def _train(gns: GradientNoiseScaleMonitor, model: torch.nn.Module, n: int) -> list:
    g = torch.Generator().manual_seed(0)
    outs = []
    for _ in range(n):
        x = torch.randn(8, 7, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (8,), generator=g)
        model.zero_grad()
        ce(model(x), y).mean().backward()
        outs.append(gns.step())
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
    return outs


def test_step_is_lazy_and_snapshots_its_state() -> None:
    model = mlp()
    gns = GradientNoiseScaleMonitor(model, beta=0.9).attach()
    outs = _train(gns, model, 5)
    gns.detach()
    first = outs[0]
    assert isinstance(first, StepScalars)
    assert all(o._values is None for o in outs)  # nothing computed yet
    assert first["step"] == 0.0 and first["gns.batch_size"] == 8.0
    assert np.isfinite(first["gns.step_trace_sigma"]) and first._values is None  # free keys
    # computed later, each step still reports the statistics as they were at that step
    assert outs[-1].scalars() == gns.compute()
    assert outs[0]["gns.trace_sigma"] == pytest.approx(outs[0]["gns.step_trace_sigma"])
    assert outs[1]["gns.b_simple"] != outs[-1]["gns.b_simple"]
    assert set(first) == {"step", *gns.compute()}
    assert len(gns.history) == 5 and gns.history[2].step == 2


def test_recorder_gets_every_scalar_at_each_measured_step() -> None:
    class Rec:
        def __init__(self) -> None:
            self.rows: list = []

        def log(self, step: int, **scalars: float) -> None:
            self.rows.append((step, scalars))

    model = mlp()
    rec = Rec()
    gns = GradientNoiseScaleMonitor(model, recorder=rec, beta=1.0).attach()
    outs = _train(gns, model, 3)
    gns.detach()
    assert [s for s, _ in rec.rows] == [0, 1, 2]
    assert rec.rows[-1][1] == outs[-1].scalars()
    assert "gns.b_simple_low" in rec.rows[-1][1] and "gns.b_simple.2" in rec.rows[-1][1]
