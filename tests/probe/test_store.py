"""The reader: formats, clear errors, multi-run stores, dask, cached results."""

import json

import numpy as np
import pytest
import torch
import zarr

import dynalens
from dynalens.errors import (
    ReadOnlyStoreError,
    SiteNotFoundError,
    StepNotRecordedError,
    StoreError,
    WriterError,
)
from dynalens.probe.store_writer import StoreWriter

from .conftest import train


@pytest.fixture
def store(tmp_path, mlp, data):
    x, y = data
    with dynalens.Recorder(
        mlp, tmp_path / "s", sites=["fc1", "fc2"], every=2, probe=(x, y), config={"lr": 0.1}
    ) as rec:
        train(mlp, rec, x, y, steps=5)
    return dynalens.open_store(tmp_path / "s")


def test_chunks_written_directly_are_plain_zarr(store):
    """Another zarr reader sees the same data as the store API."""
    arr = zarr.open_array(str(store.path / store.run / "rank0" / "activations" / "fc1"), mode="r")
    n = store.committed()
    np.testing.assert_array_equal(arr[:n], store.activations("fc1", source="batch"))
    assert arr.chunks == (1, 8, 8)


def test_one_step_across_sites_and_one_site_across_steps(store):
    at = store.at_step(2)
    assert set(at) == {"fc1", "fc2"}
    np.testing.assert_array_equal(at["fc1"], store.activations("fc1", 2, source="batch"))
    stacked = store.gradients("fc2")
    assert stacked.shape == (3, 8, 8)
    np.testing.assert_array_equal(stacked[1], store.gradients("fc2", 2))


def test_as_dask_matches_eager_reads(store):
    lazy = store.as_dask("gradients", "fc1")
    np.testing.assert_array_equal(lazy.compute(), store.gradients("fc1"))


def test_scalars_table(store):
    df = store.scalars()
    assert list(df.columns) == ["step", "loss"]
    assert df["step"].tolist() == [0, 1, 2, 3, 4]
    assert np.isfinite(df["loss"]).all()


def test_meta_and_info(store):
    meta = store.meta
    assert meta["config"] == {"lr": 0.1}
    assert meta["schedule"] == {"kind": "every", "n": 2, "start": 0}
    assert meta["versions"]["torch"] == torch.__version__
    info = store.info()
    assert info["committed_steps"] == 3
    assert info["steps"] == [0, 2, 4]
    rows = {(a["kind"], a["site"]): a for a in info["arrays"]}
    assert rows[("activations", "fc1")]["steps"] == 3
    assert rows[("probe_activations", "fc2")]["shape"] == [40, 8]
    assert rows[("probe_activations", "fc2")]["bytes"] == 3 * 40 * 8 * 4
    json.dumps(info)  # JSON-serialisable for `dynalens info --json`


def test_unknown_site_and_kind_and_step_errors(store):
    with pytest.raises(SiteNotFoundError, match="did you mean 'fc1'"):
        store.activations("fc11")
    with pytest.raises(SiteNotFoundError, match="no 'inputs' were recorded"):
        store.inputs("fc1")
    with pytest.raises(StepNotRecordedError, match="step 3 holds no"):
        store.gradients("fc1", 3)
    with pytest.raises(KeyError):  # the builtin still catches it
        store.gradients("fc1", 3)


def test_not_a_store_errors(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("x")
    with pytest.raises(StoreError, match="is not a dynalens store"):
        dynalens.open_store(tmp_path / "other")
    with pytest.raises(StoreError, match="does not exist"):
        dynalens.open_store(tmp_path / "missing")
    with pytest.raises(StoreError, match="is a file"):
        StoreWriter(tmp_path / "other" / "data.txt", "r")
    with pytest.raises(StoreError, match="is not a dynalens store"):
        StoreWriter(tmp_path / "other", "r")


def test_unknown_run(store):
    with pytest.raises(StoreError, match="Runs: run-000"):
        store.select("run-9")


def test_results_need_append_mode(store):
    with pytest.raises(ReadOnlyStoreError, match="mode='a'"):
        store.put_result("plane", {"x": [1.0]})
    appendable = dynalens.open_store(store.path, mode="a")
    appendable.put_result(
        "plane", {"site": ["fc1", "fc2"], "value": [0.5, 1.5]}, {"estimator": "b"}
    )
    cols, attrs = appendable.get_result("plane")
    assert cols["site"].tolist() == ["fc1", "fc2"] and attrs["estimator"] == "b"
    appendable.put_result("plane", {"value": [2.0]})  # replaces
    assert appendable.get_result("plane")[0]["value"].tolist() == [2.0]
    assert store.get_result("missing") is None


def test_writer_errors_surface_in_the_training_thread(tmp_path, mlp, data, monkeypatch):
    x, y = data
    rec = dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1)
    train(mlp, rec, x, y, steps=1)
    rec.flush()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rec._writer, "write_record", broken)
    with pytest.raises(WriterError, match="disk full") as info:
        train(mlp, rec, x, y, steps=3, start=1)
        rec.flush()
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(WriterError):
        rec.close()
    assert dynalens.open_store(tmp_path / "s").steps().tolist() == [0]  # committed step kept


def test_back_pressure_bounds_pending_records(tmp_path, mlp, data, monkeypatch):
    """A slow disk makes step() wait instead of queueing without bound."""
    import threading

    x, y = data
    rec = dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1, max_pending=2)
    real = rec._writer.write_record
    gate = threading.Event()
    peak = []

    def slow(*args):
        gate.wait(0.05)
        peak.append(rec._bg._queue.qsize())
        real(*args)

    monkeypatch.setattr(rec._writer, "write_record", slow)
    train(mlp, rec, x, y, steps=8)
    rec.close()
    assert max(peak) <= 2
    assert dynalens.open_store(tmp_path / "s").steps().tolist() == list(range(8))
