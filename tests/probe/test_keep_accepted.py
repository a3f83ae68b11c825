"""What a run accepted is kept: SIGTERM, Ctrl-C, no close(), a full disk, a half-made
store, an error inside a hook (issue: keep what the run accepted)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import zarr
from torch import nn

import dynalens
from dynalens.errors import InvalidInputError, InvalidParameterError, WriterError

from .conftest import hook_count, train

CHILD = Path(__file__).with_name("accepting_process.py")
STEPS = 40


def start(mode, path):
    return subprocess.Popen(
        [sys.executable, str(CHILD), mode, str(path), str(STEPS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_accepted(proc):
    """Block until the child has accepted every step (its writer still lags behind)."""
    line = proc.stdout.readline()
    assert line.startswith("accepted"), (line, proc.stderr.read())


def committed(path):
    store = dynalens.open_store(path)
    return store.committed(), len(store.scalars())


@pytest.mark.slow
def test_sigterm_commits_every_accepted_step_and_ends_with_sigterm(tmp_path):
    proc = start("default", tmp_path / "s")
    wait_accepted(proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGTERM  # the default action still ends the process
    assert committed(tmp_path / "s") == (STEPS, STEPS)


@pytest.mark.slow
def test_sigterm_chains_to_the_users_handler_after_committing(tmp_path):
    proc = start("chained", tmp_path / "s")
    wait_accepted(proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3  # the user's handler ran and chose the exit code
    assert "user handler ran, hooks 0" in out  # hooks were removed before it ran
    assert committed(tmp_path / "s") == (STEPS, STEPS)


@pytest.mark.slow
def test_ctrl_c_commits_every_accepted_step_and_removes_hooks(tmp_path):
    proc = start("default", tmp_path / "s")
    wait_accepted(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "KeyboardInterrupt" in err
    assert "hooks at exit 0" in out
    assert committed(tmp_path / "s") == (STEPS, STEPS)


def test_a_script_that_never_closes_keeps_every_accepted_step(tmp_path):
    proc = start("plain", tmp_path / "s")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "hooks at exit 0" in out
    assert committed(tmp_path / "s") == (STEPS, STEPS)


def test_a_root_left_half_made_by_a_kill_during_creation_is_adopted(tmp_path, mlp, data):
    # the old two-write creation killed between its writes: a bare zarr group
    zarr.open_group(str(tmp_path / "s"), mode="w", zarr_format=3)
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1) as rec:
        train(mlp, rec, x, y, steps=2)
    assert dynalens.open_store(tmp_path / "s").steps().tolist() == [0, 1]
    # killed before the first write: an empty directory
    (tmp_path / "e").mkdir()
    with dynalens.Recorder(mlp, tmp_path / "e", sites="fc1", every=1) as rec:
        train(mlp, rec, x, y, steps=1)
    assert dynalens.open_store(tmp_path / "e").steps().tolist() == [0]


def test_store_creation_is_one_atomic_write(tmp_path, monkeypatch, mlp):
    """Creating a store writes its complete root metadata with one replace, so no kill
    can leave a root without the marker."""
    import dynalens.probe.metadata as metadata

    writes = []
    real = metadata.atomic_write
    monkeypatch.setattr(
        metadata,
        "atomic_write",
        lambda p, d, *a, **k: (writes.append(bytes(d)), real(p, d, *a, **k)),
    )
    dynalens.Recorder(mlp, tmp_path / "s", sites="fc1").close()
    assert len(writes) == 1 and b'"dynalens"' in writes[0]


def test_an_error_inside_a_hook_removes_every_hook(tmp_path, mlp, data):
    x, y = data
    # axes= names three axes for fc2's 2-d output: the hook raises at its first capture
    rec = dynalens.Recorder(
        mlp, tmp_path / "s", sites="fc*", every=[0, 1, 5], axes={"fc2": ("b", "p", "f")}
    )
    assert hook_count(mlp) > 0
    with pytest.raises(InvalidInputError, match="name 3 axes"):
        train(mlp, rec, x, y, steps=1)
    assert hook_count(mlp) == 0
    with pytest.raises(InvalidParameterError, match="stopped after an error in one of its hooks"):
        rec.step(0)


def test_a_ragged_last_batch_is_skipped_with_a_warning_not_an_abort(tmp_path, mlp, data):
    x, y = data
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    for rows in (None, 4):
        path = tmp_path / f"rows{rows}"
        rec = dynalens.Recorder(mlp, path, sites="fc*", every=1, rows=rows, run="r")
        step = 0
        with pytest.warns(UserWarning, match="ragged last batch") as seen:
            for _epoch in range(2):
                for start in range(0, 19, 8):  # batches of 8, 8, 3
                    idx = torch.arange(start, min(start + 8, 19))
                    loss = nn.functional.cross_entropy(mlp(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    rec.step(step, loss=loss.item(), sample_ids=idx)
                    step += 1
        rec.close()
        assert sum("ragged" in str(w.message) for w in seen) == 1  # once per site set
        store = dynalens.open_store(path)
        assert store.steps().tolist() == list(range(6))  # every step is in the table
        assert store.steps("fc1").tolist() == [0, 1, 3, 4]  # the short batches are not
        assert store.activations("fc1", source="batch").shape == (4, rows or 8, 8)
        assert store.sample_ids().shape == (4, rows or 8)
        assert len(store.scalars()) == 6
        assert hook_count(mlp) == 0


def test_an_error_in_the_with_block_comes_out_on_top(tmp_path, mlp, data, monkeypatch):
    from dynalens.probe.store_writer import StoreWriter

    def broken(self, *a, **k):
        raise OSError("disk gone")

    monkeypatch.setattr(StoreWriter, "write_record", broken)
    x, y = data
    with pytest.raises(KeyError, match="the user's own error") as info:
        with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1) as rec:
            train(mlp, rec, x, y, steps=1)
            time.sleep(0.2)
            raise KeyError("the user's own error")
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "disk gone" in notes  # the cleanup error is kept, not raised over it


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a real full disk (needs root; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_leaves_no_temp_files_and_every_committed_step(small_disk):
    model = nn.Sequential(nn.Linear(64, 512))
    path = small_disk / "s"
    rec = dynalens.Recorder(model, path, sites="0", every=1, capture=("activations",))
    with pytest.raises(WriterError, match="No space left"):
        for step in range(100):  # 128 KiB per record: the disk fills after a few
            model(torch.randn(64, 64))
            rec.step(step)
            rec.flush()
    with pytest.raises(WriterError):
        rec.close()
    assert list(small_disk.rglob("*.partial")) == []
    store = dynalens.open_store(path)
    n = store.committed()
    assert 1 <= n < 100
    assert store.activations("0").shape == (n, 64, 512)
    assert store.verify().ok
    assert hook_count(model) == 0


def test_stale_temp_files_are_removed_when_a_recorder_opens_the_store(tmp_path, mlp, data):
    import os

    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1) as rec:
        train(mlp, rec, x, y, steps=1)
    old = tmp_path / "s" / "run-000" / "rank0" / "c.0.0.deadbeef.partial"
    young = tmp_path / "s" / "run-000" / "rank0" / "c.1.0.cafe.partial"
    old.write_bytes(b"x")
    young.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    report = dynalens.open_store(tmp_path / "s").verify()
    assert report.ok and len(report.temp_files) == 2  # listed, but not damage
    dynalens.Recorder(mlp, tmp_path / "s", sites="fc1").close()
    assert not old.exists()  # an interrupted write's leftover
    assert young.exists()  # may belong to a writer still at work
