"""Never a wrong record: damaged chunks and metadata are errors that name the file, the
step and the site; `dynalens verify` finds every one (issue: the store never returns a
wrong record)."""

import json

import numpy as np
import pytest
import zarr

import dynalens
from dynalens.cli import main
from dynalens.errors import DamagedStoreError

from .conftest import train

STEPS = 4


@pytest.fixture(params=[None, "zstd"], ids=["raw", "zstd"])
def recorded(request, tmp_path, mlp, data):
    x, y = data
    path = tmp_path / "s"
    with dynalens.Recorder(
        mlp, path, sites="fc*", every=1, probe=(x[:10], y[:10]), compression=request.param
    ) as rec:
        train(mlp, rec, x, y, steps=STEPS)
    return path


def rank_dir(path):
    return path / "run-000" / "rank0"


def chunk(path, kind="activations", site="fc1", record=2):
    return rank_dir(path) / kind / site / f"c.{record}.0.0"


def test_every_chunk_ends_with_a_crc32c_that_zarr_verifies(recorded):
    arr = zarr.open_array(str(rank_dir(recorded) / "activations" / "fc1"), mode="r")
    assert type(arr.compressors[-1]).__name__ == "Crc32cCodec"
    store = dynalens.open_store(recorded)
    np.testing.assert_array_equal(np.asarray(arr[:STEPS]), store.activations("fc1", source="batch"))
    assert store.verify().ok


def test_a_truncated_chunk_is_an_error_naming_file_step_and_site(recorded):
    store = dynalens.open_store(recorded)
    before = store.activations("fc1", source="batch")
    f = chunk(recorded)
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(DamagedStoreError) as info:
        store.activations("fc1", source="batch")
    msg = str(info.value)
    assert "step 2" in msg and "activations/fc1" in msg and str(f) in msg
    np.testing.assert_array_equal(  # the other records stay readable
        store.activations("fc1", [0, 1, 3], source="batch"), before[[0, 1, 3]]
    )


def test_a_deleted_chunk_is_an_error_not_nan(recorded):
    chunk(recorded, "gradients", "fc2", 1).unlink()
    store = dynalens.open_store(recorded)
    with pytest.raises(DamagedStoreError, match="chunk file is missing") as info:
        store.gradients("fc2")
    assert "step 1" in str(info.value) and "gradients/fc2" in str(info.value)


def test_a_flipped_byte_is_a_checksum_error(recorded):
    f = chunk(recorded)
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    f.write_bytes(bytes(raw))
    with pytest.raises(DamagedStoreError, match=r"checksum|zstd"):
        dynalens.open_store(recorded).activations("fc1", 2, source="batch")


def test_a_truncated_step_vector_is_an_error_not_fewer_steps(recorded):
    f = rank_dir(recorded) / "step" / "c.0"
    f.write_bytes(f.read_bytes()[:16])
    with pytest.raises(DamagedStoreError, match="'step'"):
        dynalens.open_store(recorded).steps()


def test_a_damaged_scalar_column_and_probe_set_are_errors(recorded):
    f = rank_dir(recorded) / "scalars" / "loss" / "c.0"
    f.write_bytes(f.read_bytes()[:100])
    store = dynalens.open_store(recorded)
    with pytest.raises(DamagedStoreError, match="scalars/loss"):
        store.scalars()
    (recorded / "run-000" / "probe" / "X" / "c.0.0").unlink()
    with pytest.raises(DamagedStoreError, match="probe set"):
        store.probe()


@pytest.mark.parametrize("where", ["array", "rank", "run", "root"])
def test_corrupt_json_metadata_names_the_file(recorded, where, capsys):
    files = {
        "array": rank_dir(recorded) / "activations" / "fc1" / "zarr.json",
        "rank": rank_dir(recorded) / "zarr.json",
        "run": recorded / "run-000" / "zarr.json",
        "root": recorded / "zarr.json",
    }
    f = files[where]
    f.write_text(f.read_text()[:40])
    with pytest.raises(DamagedStoreError) as info:
        store = dynalens.open_store(recorded, "run-000")
        store.activations("fc1", source="batch")
    assert str(f) in str(info.value) and "backup" in str(info.value)
    assert main(["info", str(recorded)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynalens: error:") and "Traceback" not in err


def test_verify_reports_every_damaged_file_and_exits_1(recorded, capsys):
    assert main(["verify", str(recorded)]) == 0
    assert "no damage found" in capsys.readouterr().out
    chunk(recorded, record=0).unlink()
    f = chunk(recorded, "gradients", "fc2", 3)
    f.write_bytes(f.read_bytes()[:-1])
    (rank_dir(recorded) / "inputs").mkdir()  # harmless extra directory
    assert main(["verify", str(recorded), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"]
    assert sorted(d["file"] for d in report["damaged"]) == sorted(
        [str(chunk(recorded, record=0)), str(f)]
    )
    assert any("step 0" in d["what"] for d in report["damaged"])
    assert main(["verify", str(recorded)]) == 1
    assert "DAMAGED 2 file(s)" in capsys.readouterr().out


def test_verify_on_a_non_store_exits_2(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert main(["verify", str(tmp_path / "x")]) == 2
    assert "not a dynalens store" in capsys.readouterr().err
