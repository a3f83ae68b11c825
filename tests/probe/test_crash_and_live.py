"""Crash safety and live reading, with real processes (see probe/layout.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dynalens
from dynalens.errors import StoreError

WRITER = Path(__file__).with_name("writer_process.py")


def start_writer(path, steps, rows=256, cols=1024, pause=0.0):
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(steps), str(rows), str(cols), str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_committed(path):
    """Every committed record is complete and correct; returns how many there are."""
    store = dynalens.open_store(path)
    steps = store.steps()
    assert steps.tolist() == list(range(len(steps)))
    if len(steps):
        acts = store.activations("0")
        grads = store.gradients("0")
        for s in steps:
            assert np.all(acts[s] == s + 1), f"record {s} is torn or zero-filled"
            assert np.all(grads[s] == 1.0)
        df = store.scalars()
        assert np.array_equal(df["loss"].to_numpy(), df["step"].to_numpy().astype(float))
    return len(steps)


def check_newest(path):
    """The newest committed record is complete (a cheap check for every poll)."""
    store = dynalens.open_store(path)
    n = store.committed()
    if n:
        assert np.all(store.activations("0", n - 1) == n), f"record {n - 1} is torn"
        assert np.all(store.gradients("0", n - 1) == 1.0)
    return n


@pytest.mark.slow
def test_sigkill_at_any_point_keeps_every_committed_step(tmp_path):
    rng = np.random.default_rng(0)
    survived = []
    for trial in range(4):
        path = tmp_path / f"s{trial}"
        proc = start_writer(path, steps=10_000)
        line = proc.stdout.readline()  # wait until training runs
        assert line.strip() == "0", proc.stderr.read()
        time.sleep(float(rng.uniform(0.05, 1.0)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        try:
            survived.append(check_committed(path))
        except StoreError:
            survived.append(0)  # killed before the run existed: nothing was committed
    assert max(survived) > 0, "the writer never committed before being killed"


@pytest.mark.slow
def test_live_reader_never_sees_torn_or_zero_filled_steps(tmp_path):
    path = tmp_path / "live"
    proc = start_writer(path, steps=60, pause=0.02)
    polls, seen = 0, set()
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            n = check_newest(path) if polls % 10 else check_committed(path)
        except StoreError:
            continue  # the run group is not created yet
        polls += 1
        seen.add(n)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert check_committed(path) == 60
    assert polls >= 3 and len(seen) >= 2, (polls, seen)  # really read while it grew
