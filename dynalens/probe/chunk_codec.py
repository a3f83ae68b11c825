"""How a chunk file of a dynalens array is laid out, and how it is checked when read.

Every array the Recorder writes has zarr v3's codec chain ``bytes`` (little-endian) ->
[``zstd`` level 1, activations only, when asked for] -> ``crc32c``: a chunk file is the
record's raw bytes (or their zstd frame) followed by the 4-byte little-endian CRC-32C
(Castagnoli) of everything before it. zarr-python, tensorstore and dask read the same
files and verify the same checksums. Reading here checks, for every chunk of a committed
record: that the file exists, that its size is exactly what the codecs give for one
record, that the checksum matches, and that a zstd frame decodes to exactly one record.
Any failure is a :class:`~dynalens.errors.DamagedStoreError` naming the file and the
record, never a value. Stores written before checksums (schema 1) have no ``crc32c``
codec; their chunks are checked for existence and size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np

from dynalens.errors import DamagedStoreError
from dynalens.probe.layout import chunk_key

CRC_BYTES = 4


def crc32c_trailer(data: Any) -> bytes:
    """The 4 bytes zarr's ``crc32c`` codec appends to ``data`` (a bytes-like object)."""
    raw = np.frombuffer(data, dtype=np.uint8)  # google_crc32c refuses memoryviews
    return np.uint32(google_crc32c.value(raw)).tobytes()  # little-endian on every host


class ChunkDamage(Exception):
    """Why one chunk file is unusable (internal; callers add which record it held)."""


@dataclass(frozen=True)
class ChunkFormat:
    """The codecs of an array, as far as reading its chunk files directly needs them."""

    dtype: np.dtype  # on-disk (little-endian) dtype
    zstd: bool
    checksum: bool

    @classmethod
    def of(cls, arr: Any) -> ChunkFormat | None:
        """The format of a zarr array, or ``None`` when its codecs are not ours (then
        read it through zarr)."""
        names = [type(c).__name__ for c in arr.compressors]
        checksum = bool(names) and names[-1] == "Crc32cCodec"
        rest = names[:-1] if checksum else names
        if arr.filters or rest not in ([], ["ZstdCodec"]):
            return None
        if type(arr.serializer).__name__ != "BytesCodec":
            return None
        dtype = np.dtype(str(arr.dtype)).newbyteorder("<")
        return cls(dtype=dtype, zstd=rest == ["ZstdCodec"], checksum=checksum)

    def read(self, path: Path, nbytes: int, into: memoryview | None = None) -> memoryview:
        """The ``nbytes`` decoded bytes of the chunk file ``path``, checked.

        ``into`` (a writable buffer of ``nbytes``) receives uncompressed data without a
        copy. Raises :class:`ChunkDamage` with the reason."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ChunkDamage("the chunk file is missing") from None
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(fd).st_size
            if not self.zstd:
                expected = nbytes + (CRC_BYTES if self.checksum else 0)
                if size != expected:
                    raise ChunkDamage(
                        f"the chunk file holds {size} bytes where a record has {expected}"
                        + (" (truncated)" if size < expected else "")
                    )
                buf = into if into is not None else memoryview(bytearray(nbytes))
                f.readinto(buf)
                if self.checksum:
                    self._check(buf, f.read(CRC_BYTES))
                return buf
            frame = f.read()
        if self.checksum:
            if len(frame) < CRC_BYTES:
                raise ChunkDamage(f"the chunk file holds only {len(frame)} bytes (truncated)")
            self._check(memoryview(frame)[:-CRC_BYTES], frame[-CRC_BYTES:])
            frame = frame[:-CRC_BYTES]
        from numcodecs import Zstd

        try:
            data = Zstd().decode(frame)
        except Exception as exc:
            raise ChunkDamage(f"its zstd frame does not decode ({exc}; truncated?)") from None
        if len(data) != nbytes:
            raise ChunkDamage(f"its zstd frame decodes to {len(data)} bytes, not {nbytes}")
        view = memoryview(data).cast("B")
        if into is not None:
            into[:] = view
            return into
        return view

    @staticmethod
    def _check(data: memoryview, stored: bytes) -> None:
        if crc32c_trailer(data) != stored:
            raise ChunkDamage(
                "its CRC-32C checksum does not match its bytes (the file was changed or "
                "corrupted after it was written)"
            )


def damaged(record: str, path: Path, reason: str) -> DamagedStoreError:
    """The error for one unusable chunk: what it held, which file, why, what to do."""
    return DamagedStoreError(
        f"{record} is damaged: {reason}: {path}. dynalens returns no value for it. The other "
        "records stay readable; `dynalens verify STORE` lists every damaged record. Read "
        "around it (pass the steps you need), or restore the file from a backup.",
        file=str(path),
        what=record,
        reason=reason,
    )


def read_chunk(fmt: ChunkFormat, path: Path, out: np.ndarray, what: Callable[[], str]) -> None:
    """Decode the chunk file ``path`` into ``out`` (a C-contiguous block of the on-disk
    dtype), checked; ``what()`` names its content for the error message."""
    flat = out.reshape(-1)  # a view: ``out`` is C-contiguous
    try:
        fmt.read(path, flat.nbytes, memoryview(flat).cast("B"))  # type: ignore[arg-type]
    except ChunkDamage as exc:
        raise damaged(what(), path, str(exc)) from None


def read_records(
    fmt: ChunkFormat,
    directory: Path,
    record_shape: tuple[int, ...],
    indices: np.ndarray,
    describe: Callable[[int], str],
) -> np.ndarray:
    """Records ``indices`` of a record array (one chunk per record), stacked, checked.

    ``describe(i)`` names record ``i`` for error messages."""
    out = np.empty((len(indices), *record_shape), dtype=fmt.dtype)
    zeros = (0,) * len(record_shape)
    for j, i in enumerate(indices):
        path = directory / chunk_key((int(i), *zeros))
        read_chunk(fmt, path, out[j : j + 1], lambda i=int(i): describe(i))  # type: ignore[misc]
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def read_vector(
    fmt: ChunkFormat, directory: Path, chunk: int, n: int, describe: Callable[[int], str]
) -> np.ndarray:
    """The first ``n`` elements of a 1-D array of ``chunk``-element chunks, checked.

    ``describe(c)`` names chunk ``c`` for error messages."""
    out = np.empty(-(-n // chunk) * chunk, dtype=fmt.dtype)
    for c in range(len(out) // chunk):
        path = directory / chunk_key((c,))
        read_chunk(fmt, path, out[c * chunk : (c + 1) * chunk], lambda c=c: describe(c))  # type: ignore[misc]
    return out[:n].astype(out.dtype.newbyteorder("="), copy=False)
