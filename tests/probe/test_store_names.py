"""Never outside itself: run, site and scalar names that become paths are checked where
the user passes them, and names read from a store's metadata are checked again."""

import json

import pytest
import torch
from torch import nn

import dynalens
from dynalens.cli import main
from dynalens.errors import DamagedStoreError, InvalidInputError, InvalidParameterError

from .conftest import hook_count, train


@pytest.mark.parametrize("run", ["/abs/dir", "a/b", "..", ".", "", "zarr.json", "x" * 300])
def test_unsafe_run_names_are_refused_before_anything_is_written(tmp_path, mlp, run):
    if run == "/abs/dir":
        run = str(tmp_path / "outside")
    with pytest.raises(InvalidParameterError, match="run name"):
        dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", run=run)
    assert not (tmp_path / "outside").exists() and not (tmp_path / "s").exists()
    assert hook_count(mlp) == 0


def test_a_scalar_named_with_slashes_reads_back_under_its_name(tmp_path, mlp, data, capsys):
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1) as rec:
        train(mlp, rec, x, y, steps=3)
        rec.log(2, **{"train/loss": 0.5, "eval/acc%": 0.25})
    df = dynalens.open_store(tmp_path / "s").scalars()
    assert {"train/loss", "eval/acc%", "loss"} <= set(df.columns)
    assert df.loc[df["step"] == 2, "train/loss"].tolist() == [0.5]
    assert main(["info", str(tmp_path / "s")]) == 0
    assert "train/loss" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["../x", "a/../b", "zarr.json", "a/zarr.json", "x" * 300, "a\nb"])
def test_unsafe_scalar_names_are_refused_in_log(tmp_path, mlp, name):
    rec = dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1)
    with pytest.raises(InvalidParameterError, match="scalar"):
        rec.log(0, **{name: 1.0})
    with pytest.raises(InvalidParameterError, match="scalar"):
        rec.step(0, **{name: 1.0})
    rec.close()  # the writer never saw the name: closing is clean
    assert not any("zarr.json" in p.name and p.is_dir() for p in (tmp_path / "s").rglob("*"))


def test_a_module_name_with_a_slash_is_refused_as_a_site(tmp_path):
    model = nn.Sequential()
    model.add_module("a/b", nn.Linear(2, 2))
    with pytest.raises(InvalidParameterError, match="site 'a/b'"):
        dynalens.Recorder(model, tmp_path / "s", sites="a/b")


def test_a_crafted_store_naming_a_site_outside_is_refused_on_read(tmp_path, mlp, data):
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1) as rec:
        train(mlp, rec, x, y, steps=1)
    meta_file = tmp_path / "s" / "run-000" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["attributes"]["dynalens_run"]["sites"]["../../x"] = {"module": "Linear"}
    meta_file.write_text(json.dumps(meta))
    store = dynalens.open_store(tmp_path / "s")
    with pytest.raises(DamagedStoreError, match="crafted"):
        store.activations("../../x")
    assert not store.verify().ok


def test_boundary_checks_raise_where_the_user_passes_the_value(tmp_path, mlp, data):
    x, _ = data
    with pytest.raises(InvalidParameterError, match="max_pending must be >= 1"):
        dynalens.Recorder(mlp, tmp_path / "a", sites="fc1", max_pending=0)
    rec = dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1)
    mlp(x[:8]).sum().backward()
    with pytest.raises(InvalidParameterError, match="step must be <="):
        rec.step(2**63)
    with pytest.raises(InvalidParameterError, match="step must be <="):
        rec.log(2**64, loss=1.0)
    with pytest.raises(InvalidInputError, match="has 5 entries but the recorded batch has 8"):
        rec.step(0, sample_ids=torch.arange(5))
    with pytest.raises(InvalidInputError, match="must be integers"):
        rec.step(0, sample_ids=["a"] * 8)
    rec.step(0, sample_ids=torch.arange(8))
    rec.close()
    assert dynalens.open_store(tmp_path / "s").sample_ids().tolist() == [list(range(8))]


def test_a_model_on_the_meta_device_is_refused(tmp_path):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(InvalidInputError, match="meta device"):
        dynalens.Recorder(model, tmp_path / "s", sites="0")
