"""Chunk files: O_DIRECT for large chunks (exact bytes, any size), buffered fallback."""

import errno
import os

import numpy as np
import pytest

from dynalens.probe import chunk_files
from dynalens.probe.chunk_files import DIRECT_MIN_BYTES, ChunkFileWriter


@pytest.mark.parametrize("nbytes", [DIRECT_MIN_BYTES, DIRECT_MIN_BYTES + 4, 3 * 2**20 + 12, 100])
def test_written_bytes_are_exact(tmp_path, nbytes):
    data = np.random.default_rng(nbytes).integers(0, 255, nbytes, dtype=np.uint8)
    writer = ChunkFileWriter()
    for i in range(2):  # the aligned buffer is reused: no stale bytes may leak
        writer.write(tmp_path / f"c.{i}", memoryview(data[: nbytes - i * 4]))
        assert (tmp_path / f"c.{i}").read_bytes() == data[: nbytes - i * 4].tobytes()
    assert not list(tmp_path.glob("*.partial"))


def test_filesystems_refusing_o_direct_fall_back_once(tmp_path, monkeypatch):
    real_open = os.open
    refused = []

    def fake_open(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(chunk_files.os, "open", fake_open)
    writer = ChunkFileWriter()
    data = np.arange(DIRECT_MIN_BYTES, dtype=np.uint8)
    for i in range(3):
        writer.write(tmp_path / f"c.{i}", memoryview(data))
        assert (tmp_path / f"c.{i}").read_bytes() == data.tobytes()
    assert len(refused) <= 1 and not writer.direct
    assert not list(tmp_path.glob("*.partial"))


def test_other_errors_are_raised(tmp_path):
    writer = ChunkFileWriter()
    with pytest.raises(FileNotFoundError):
        writer.write(tmp_path / "missing-dir" / "c.0", memoryview(bytes(DIRECT_MIN_BYTES)))
