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
    gns = GradientNoiseScaleMonitor(model, beta=0.9, max_delay=3600.0).attach()
    outs = _train(gns, model, 5)
    first = outs[0]
    assert isinstance(first, StepScalars)
    assert all(o._block is None for o in outs)  # queued: no statistics computed yet
    assert first["step"] == 0.0 and first["gns.batch_size"] == 8.0  # known at the step
    assert all(o._block is None for o in outs)
    assert np.isfinite(first["gns.step_trace_sigma"])  # computes the pending block
    block = first.block
    assert all(o.block is block for o in outs) and not block.computed  # no interval yet
    gns.detach()
    # computed later, each step still reports the statistics as they were at that step
    assert outs[-1].scalars() == gns.compute() and block.computed
    assert outs[0]["gns.trace_sigma"] == pytest.approx(outs[0]["gns.step_trace_sigma"])
    assert outs[1]["gns.b_simple"] != outs[-1]["gns.b_simple"]
    assert set(first) == {"step", *gns.compute()}
    assert len(gns.history) == 5 and gns.history[2].step == 2


@pytest.mark.parametrize("flush_every", [1, 2, 3, 32])
def test_blocks_do_not_change_the_values(flush_every: int) -> None:
    """Steps computed one at a time, in blocks of 2 or 3 (ragged) or all at the end
    report the same scalars (each step's state, EMA and interval included)."""
    model = mlp()
    gns = GradientNoiseScaleMonitor(model, beta=0.8, flush_every=flush_every).attach()
    outs = _train(gns, model, 7)
    gns.detach()
    ref_model = mlp()
    ref = GradientNoiseScaleMonitor(ref_model, beta=0.8, flush_every=1).attach()
    want = _train(ref, ref_model, 7)
    ref.detach()
    for o, w in zip(outs, want):
        got, exp = o.scalars(), w.scalars()
        assert got.keys() == exp.keys()
        for k in exp:
            assert got[k] == pytest.approx(exp[k], rel=1e-9, abs=1e-12, nan_ok=True), k


def test_pending_steps_are_computed_after_max_delay() -> None:
    model = mlp()
    gns = GradientNoiseScaleMonitor(model, max_delay=0.0).attach()
    outs = _train(gns, model, 2)
    assert all(o._block is not None for o in outs)  # each flushed at its own step
    gns.detach()


def test_reading_stats_or_reset_computes_pending_steps() -> None:
    model = mlp()
    gns = GradientNoiseScaleMonitor(model, beta=1.0, max_delay=3600.0).attach()
    _train(gns, model, 3)
    assert gns._stats.n == 0 and gns.stats.n == 3  # the property computes the queue
    _train(gns, model, 2)
    gns.reset()  # the 2 pending steps are counted before the statistics are forgotten
    assert gns.history[-1]._block is not None and gns.stats.n == 0
    gns.detach()


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
