"""The live instrument agrees exactly with the offline function at a fixed point."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from _dyn_models import ce, mlp

from dynalens.dynamics import gradient_noise_scale
from dynalens.dynamics.gns_live import GradientNoiseScaleMonitor
from dynalens.errors import InvalidParameterError


class DuckRecorder:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log(self, step: int, **scalars: Any) -> None:
        assert all(isinstance(v, float) for v in scalars.values())
        self.rows.append((step, scalars))


def _batches(n: int, B: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(B, 7, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (B,), generator=g),
        )
        for _ in range(n)
    ]


def test_matches_offline_at_fixed_point_with_optimizer_hook() -> None:
    model = mlp()
    batches = _batches(6, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # fixed point: parameters never move
    rec = DuckRecorder()
    with GradientNoiseScaleMonitor(model, optimizer=opt, beta=1.0, recorder=rec) as gns:
        for x, y in batches:
            opt.zero_grad()
            ce(model(x), y).mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # measured before this
            opt.step()
    want = gradient_noise_scale(model, ce, batches)
    got = gns.compute()
    assert [s for s, _ in rec.rows] == list(range(6))
    assert got["gns.trace_sigma"] == pytest.approx(want["trace_sigma"], rel=1e-9)
    assert got["gns.grad_sq"] == pytest.approx(want["grad_sq"], rel=1e-9)
    assert got["gns.b_simple"] == pytest.approx(want["b_simple"], rel=1e-9)
    assert got["gns.b_simple_low"] <= got["gns.b_simple"] <= got["gns.b_simple_high"]
    layer = sum(got[f"gns.grad_sq.{k}"] for k in ("0", "2", "4"))
    assert layer == pytest.approx(got["gns.grad_sq"], rel=1e-9)
    assert not opt._optimizer_step_pre_hooks
    for m in model.modules():
        assert not m._forward_hooks


def test_gradient_accumulation_and_schedule() -> None:
    """Two micro-batches of 4 per step (loss scaled by 1/2) = one batch of 8."""
    model = mlp()
    batches = _batches(6, 8, seed=1)
    gns = GradientNoiseScaleMonitor(model, beta=1.0, every=1, loss_scale=0.5).attach()
    for x, y in batches:
        model.zero_grad()
        for k in range(2):
            (ce(model(x[4 * k : 4 * k + 4]), y[4 * k : 4 * k + 4]).mean() * 0.5).backward()
        gns.step()
    gns.detach()
    want = gradient_noise_scale(model, ce, batches)
    assert gns.compute()["gns.trace_sigma"] == pytest.approx(want["trace_sigma"], rel=1e-9)
    assert gns.compute()["gns.batch_size"] == 8.0


def test_microbatch_source_matches_offline_microbatch() -> None:
    model = mlp()
    batches = _batches(5, 8, seed=2)
    gns = GradientNoiseScaleMonitor(
        model, beta=1.0, source="microbatch", batch_size=2, loss_scale=0.25
    ).attach()
    for x, y in batches:
        model.zero_grad()
        for k in range(4):
            (ce(model(x[2 * k : 2 * k + 2]), y[2 * k : 2 * k + 2]).mean() * 0.25).backward()
        gns.step()
    gns.detach()
    want = gradient_noise_scale(model, ce, batches, method="microbatch", n_micro=4)
    assert gns.compute()["gns.trace_sigma"] == pytest.approx(want["trace_sigma"], rel=1e-9)
    assert gns.compute()["gns.grad_sq"] == pytest.approx(want["grad_sq"], rel=1e-9)


def test_every_and_ema() -> None:
    model = mlp()
    rec = DuckRecorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with GradientNoiseScaleMonitor(model, optimizer=opt, every=3, recorder=rec, beta=0.9) as gns:
        for x, y in _batches(8, 8, seed=3):
            opt.zero_grad()
            ce(model(x), y).mean().backward()
            opt.step()
    assert [s for s, _ in rec.rows] == [0, 3, 6]
    assert len(gns.history) == 3 and np.isfinite(gns.compute()["gns.trace_sigma"])


def test_changing_beta_changes_output() -> None:
    def run(beta: float) -> float:
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with GradientNoiseScaleMonitor(model, optimizer=opt, beta=beta) as gns:
            for x, y in _batches(5, 8, seed=4):
                opt.zero_grad()
                ce(model(x), y).mean().backward()
                opt.step()
        return gns.compute()["gns.trace_sigma"]

    assert run(1.0) != run(0.5)


def test_real_recorder_scalar_table(tmp_path: Any) -> None:
    try:
        from dynalens.probe.recorder import Recorder
    except ImportError:  # pragma: no cover - the recorder is optional here
        pytest.skip("dynalens.probe.recorder not available")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    rec = Recorder(model, str(tmp_path / "run.zarr"), sites="0", every=1000)
    with GradientNoiseScaleMonitor(model, optimizer=opt, recorder=rec):
        for step, (x, y) in enumerate(_batches(3, 8, seed=5)):
            opt.zero_grad()
            ce(model(x), y).mean().backward()
            opt.step()
            rec.step(step)
    rec.close()
    store = rec.store() if callable(rec.store) else rec.store
    table = store.scalars()
    columns = list(table.columns) if hasattr(table, "columns") else list(table)
    assert "gns.b_simple" in columns and "gns.b_simple.2" in columns
    assert len(table["gns.b_simple"]) == 3


def test_recorder_flush_and_close_hand_over_pending_steps(tmp_path: Any) -> None:
    """Steps queued by the monitor reach the store when the recorder flushes (a notebook
    reading while training runs) or closes before the monitor is detached."""
    from dynalens.probe.recorder import Recorder
    from dynalens.probe.store import open_store

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    path = str(tmp_path / "run.zarr")
    rec = Recorder(model, path, sites="0", every=1000)
    gns = GradientNoiseScaleMonitor(model, optimizer=opt, recorder=rec, max_delay=3600.0)
    gns.attach()
    for step, (x, y) in enumerate(_batches(5, 8, seed=6)):
        opt.zero_grad()
        ce(model(x), y).mean().backward()
        opt.step()
        rec.step(step)
        if step == 2:
            assert len(gns._queue) == 3  # nothing logged yet
            rec.flush()
            assert not gns._queue
            assert len(open_store(path).scalars()["gns.b_simple"]) == 3
    rec.close()  # the monitor is still attached: its 2 pending steps are written first
    assert len(open_store(path).scalars()["gns.b_simple"]) == 5
    gns.detach()


def test_validation() -> None:
    model = mlp()
    with pytest.raises(InvalidParameterError, match="log"):
        GradientNoiseScaleMonitor(model, recorder=object()).attach()
    with pytest.raises(InvalidParameterError, match="batch_size"):
        GradientNoiseScaleMonitor(model, source="microbatch").attach()
    with pytest.raises(InvalidParameterError, match="not measured"):
        GradientNoiseScaleMonitor(model, groups={"a": ["nope"]}).attach()
    with pytest.raises(InvalidParameterError, match="flush_every"):
        GradientNoiseScaleMonitor(model, flush_every=0).attach()


def test_an_error_inside_the_monitor_block_comes_out_on_top(monkeypatch):
    """Regression (issue 11): an error raised while detaching must not replace the
    user's own error; the hooks are removed all the same."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))

    def failing_flush() -> None:
        raise RuntimeError("cleanup failed")

    with pytest.raises(KeyError, match="the user's error") as info:
        with GradientNoiseScaleMonitor(model) as gns:
            model(torch.randn(4, 3)).sum().backward()
            monkeypatch.setattr(gns, "flush", failing_flush)
            raise KeyError("the user's error")
    assert "cleanup failed" in "".join(info.value.__notes__)
    assert all(not m._forward_hooks for m in model.modules())
