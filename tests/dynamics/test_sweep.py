"""The batch-size sweep harness on a tiny teacher-student regression (seconds)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dynalens
from dynalens.dynamics.sweep import _crossings, batch_size_sweep
from dynalens.errors import InvalidInputError, InvalidParameterError

TARGETS = [1.0, 0.3, 0.15]


def task() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.3 * torch.randn(256, 1, generator=g)
    return x, y


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - y).pow(2).sum(1)


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory: pytest.TempPathFactory) -> object:
    store = tmp_path_factory.mktemp("sweep") / "store.zarr"
    return batch_size_sweep(
        make_model, task(), mse, [4, 16, 64], TARGETS, lr_rule="grid",
        lr_grid=[0.003, 0.03, 0.1], max_steps=1500, gns_batch_size=16, store_path=store,
        progress=False,
    )  # fmt: skip


def test_table_is_tidy_and_consistent(grid_sweep: object) -> None:
    t = grid_sweep.table  # type: ignore[attr-defined]
    assert list(t.columns) == ["batch_size", "target", "seed", "lr", "steps", "examples",
                               "lr_at_edge"]  # fmt: skip
    assert len(t) == 3 * len(TARGETS)
    np.testing.assert_allclose(t["examples"], t["steps"] * t["batch_size"])
    for _, part in t.groupby("batch_size"):  # harder targets take more steps
        s = part.sort_values("target", ascending=False)["steps"].to_numpy()
        assert np.all(np.isfinite(s)) and np.all(np.diff(s) > 0)
    easy = t[t["target"] == 0.15].set_index("batch_size")["steps"]
    assert easy[64] < easy[4]  # larger batches need fewer steps ...
    ex = t[t["target"] == 0.15].set_index("batch_size")["examples"]
    assert ex[64] > ex[4]  # ... and more examples
    assert set(t["lr"]) <= {0.003, 0.03, 0.1}


def test_grid_keeps_the_fastest_rate_and_prunes(grid_sweep: object) -> None:
    runs, t = grid_sweep.runs, grid_sweep.table  # type: ignore[attr-defined]
    for _, row in t.iterrows():
        same = runs[(runs["batch_size"] == row["batch_size"]) & (runs["target"] == row["target"])]
        assert row["steps"] == pytest.approx(same["steps"].min())
    assert runs["pruned"].any()  # lr=0.003 cannot beat the faster rates: stopped early
    curves = grid_sweep.curves  # type: ignore[attr-defined]
    slow = curves[(curves["batch_size"] == 4) & (curves["lr"] == 0.003)]["step"].max()
    assert slow < 1500


def test_b_simple_along_training_and_fit(grid_sweep: object) -> None:
    res = grid_sweep
    bs = res.b_simple  # type: ignore[attr-defined]
    assert len(bs) == len(TARGETS) and (bs["batch_size"] == 16).all()
    assert (bs["b_simple"] > 0).all()
    assert (bs["b_simple_low"] <= bs["b_simple"]).all()
    assert ((bs["window_low"] <= bs["step"]) & (bs["step"] <= bs["window_high"])).all()
    assert len(res.b_simple_curve) > 5  # type: ignore[attr-defined]
    fits = res.fit(bootstrap=100)  # type: ignore[attr-defined]
    assert list(fits["target"]) == sorted(TARGETS)
    ok = fits[np.isfinite(fits["b_crit"])]
    assert len(ok) >= 2
    assert (ok["cbs_zhang_model"] < ok["b_crit"] + 1.2 * 4 + 1e-9).all()
    assert {"b_simple", "b_simple_low", "b_simple_high"} <= set(fits.columns)


def test_store_holds_one_run_per_batch_size_and_rate(grid_sweep: object) -> None:
    path = grid_sweep.store_path  # type: ignore[attr-defined]
    store = dynalens.open_store(path)
    runs = store.runs
    n_runs = len(grid_sweep.curves.groupby(["batch_size", "lr", "seed"]))  # type: ignore[attr-defined]
    assert len(runs) == n_runs
    ref = next(r for r in runs if r.startswith("B16-lr0.1-"))
    scal = store.select(ref).scalars()
    assert {"loss", "train_loss", "gns.b_simple"} <= set(scal.columns)
    other = store.select(next(r for r in runs if r.startswith("B4-"))).scalars()
    assert "loss" in other.columns and "gns.b_simple" not in other.columns


@pytest.mark.parametrize("rule", ["linear", "sqrt"])
def test_scaling_rules(rule: str) -> None:
    res = batch_size_sweep(make_model, task(), mse, [4, 16], [1.0], lr_rule=rule, lr=0.01,
                           max_steps=300, progress=False)  # fmt: skip
    lrs = res.table.set_index("batch_size")["lr"]
    want = 0.04 if rule == "linear" else 0.02
    assert lrs[4] == pytest.approx(0.01) and lrs[16] == pytest.approx(want)
    assert res.config["lr_rule"] == rule


def test_crossing_interpolates_in_log_loss() -> None:
    losses = [1.0, math.exp(-1), math.exp(-2)]
    assert _crossings([0, 10, 20], losses, [math.exp(-1.5)]) == [pytest.approx(15.0)]
    assert _crossings([0, 10, 20], losses, [2.0]) == [0.0]  # already below at the start
    assert math.isnan(_crossings([0, 10, 20], losses, [0.01])[0])  # never reached


def test_budget_and_unreached_targets() -> None:
    res = batch_size_sweep(make_model, task(), mse, [4, 16], [1.0, 1e-4], lr_rule="sqrt",
                           lr=0.03, max_steps=50, max_examples=400, progress=False)  # fmt: skip
    assert res.curves.groupby("batch_size")["step"].max().to_dict() == {4: 50, 16: 25}
    assert res.table[res.table["target"] == 1e-4]["steps"].isna().all()


def test_validation(tmp_path: Path) -> None:
    args = (make_model, task(), mse)
    with pytest.raises(InvalidParameterError, match="lr_grid"):
        batch_size_sweep(*args, [4, 16], [1.0], lr_rule="grid")
    with pytest.raises(InvalidParameterError, match="pass lr="):
        batch_size_sweep(*args, [4, 16], [1.0], lr_rule="linear")
    with pytest.raises(InvalidParameterError, match="lr_rule"):
        batch_size_sweep(*args, [4, 16], [1.0], lr_rule="cubic", lr=0.1)
    with pytest.raises(InvalidParameterError, match="2 distinct"):
        batch_size_sweep(*args, [4, 4], [1.0], lr_rule="linear", lr=0.1)
    with pytest.raises(InvalidParameterError, match="gns_batch_size"):
        batch_size_sweep(*args, [4, 16], [1.0], lr_rule="linear", lr=0.1, gns_batch_size=8)
    x, y = task()
    with pytest.raises(InvalidInputError, match="one target per example"):
        batch_size_sweep(make_model, (x, y[:10]), mse, [4, 16], [1.0], lr_rule="linear", lr=0.1)
