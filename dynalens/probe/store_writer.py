"""The writing side of the store: records, the scalar table, the probe set, commits.

Runs on the background writer thread (see :mod:`dynalens.probe.background`). Chunks of
uncompressed arrays are written straight to their zarr v3 chunk files (temp file +
``os.replace``): the same bytes zarr-python would write, at a fraction of its per-chunk
CPU cost. zarr-python handles metadata (creation, resize, attributes) and compressed
arrays. The commit protocol is described in :mod:`dynalens.probe.layout`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dynalens.errors import ShapeMismatchError, StoreError
from dynalens.probe import layout
from dynalens.probe.chunk_codec import ChunkFormat, crc32c_trailer
from dynalens.probe.chunk_files import ChunkFileWriter, fsync_dir, remove_stale_temp_files
from dynalens.probe.metadata import ensure_store_root, is_store_root
from dynalens.probe.names import check_path_name, scalar_key

_ARRAY_CONFIG: Any = {"write_empty_chunks": True}


def _compressors(zstd: bool) -> list[Any]:
    """The bytes-to-bytes codecs of a dynalens array: [zstd level 1,] crc32c (see
    :mod:`dynalens.probe.chunk_codec`)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=1), Crc32cCodec()] if zstd else [Crc32cCodec()]


_SCALAR_CHUNK = 4096
_STEP_CHUNK = 1024


def create_or_open_root(path: Path) -> zarr.Group:
    """Open the store at ``path`` for appending runs, creating it when absent or empty
    (atomically, see :func:`~dynalens.probe.metadata.ensure_store_root`), and remove the
    temp files that interrupted writes left there."""
    ensure_store_root(path)
    remove_stale_temp_files(path)
    return zarr.open_group(str(path), mode="r+")


class _RawArray:
    """A zarr v3 array whose chunks this process writes directly (uncompressed) or
    through zarr (compressed)."""

    def __init__(self, arr: zarr.Array, directory: Path, files: ChunkFileWriter) -> None:
        self.arr = arr
        self.dir = directory
        self.files = files
        fmt = ChunkFormat.of(arr)
        self.raw = fmt is not None and not fmt.zstd
        self.checksum = fmt is not None and fmt.checksum
        self.dtype = arr.dtype if isinstance(arr.dtype, np.dtype) else np.dtype(str(arr.dtype))
        self.record_shape = tuple(arr.shape[1:])
        self.cap = int(arr.shape[0])

    def ensure_capacity(self, n: int) -> None:
        if n > self.cap:
            self.cap = max(n, 2 * self.cap)
            self.arr.resize((self.cap, *self.record_shape))

    def write_chunk(self, coords: tuple[int, ...], block: np.ndarray, sel: Any) -> None:
        """Write one whole chunk; ``sel`` is the zarr selection it covers."""
        if self.raw:
            data = np.ascontiguousarray(block, dtype=self.dtype.newbyteorder("<"))
            key = self.dir / layout.chunk_key(coords)
            view = memoryview(data).cast("B")  # type: ignore[arg-type]
            self.files.write(key, view, crc32c_trailer(view) if self.checksum else b"")
        else:
            self.arr[sel] = block


class _Vector:
    """A 1-D zarr array appended to element by element, its current chunk kept in memory."""

    def __init__(self, raw: _RawArray, chunk: int, fill: Any) -> None:
        self.raw, self.chunk, self.fill = raw, chunk, fill
        self.n = 0
        self.buf = np.full(chunk, fill, dtype=raw.dtype)

    def extend(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=self.raw.dtype)
        while len(values):
            pos = self.n % self.chunk
            take = min(len(values), self.chunk - pos)
            self.buf[pos : pos + take] = values[:take]
            self.n += take
            values = values[take:]
            self._flush_chunk()
            if self.n % self.chunk == 0:
                self.buf = np.full(self.chunk, self.fill, dtype=self.raw.dtype)

    def _flush_chunk(self) -> None:
        c = (self.n - 1) // self.chunk
        self.raw.ensure_capacity((c + 1) * self.chunk)
        self.raw.write_chunk((c,), self.buf, slice(c * self.chunk, (c + 1) * self.chunk))


class StoreWriter:
    """Writes one rank's shard of one run. Not thread-safe: one writer thread owns it.

    Args:
        path: the store directory.
        run: run name (a group inside the store).
        rank: this process's rank; its shard is ``<run>/rank<r>``.
        run_meta: the run's metadata (JSON); written by the rank that creates the run.
        create_run: create the run group (rank 0) or expect it to exist (other ranks).
        compression: ``None`` or ``"zstd"`` (level 1, activations only).
        durability: ``"none"`` (survives process death) or ``"commit"`` (fsync the
            record's files before each commit: survives power loss too, slower).
        direct_io: write large chunks with O_DIRECT where the filesystem allows (see
            :mod:`dynalens.probe.chunk_files`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        run: str,
        *,
        rank: int = 0,
        run_meta: dict[str, Any] | None = None,
        create_run: bool = True,
        compression: str | None = None,
        durability: str = "none",
        direct_io: bool = True,
    ) -> None:
        self.path = Path(path)
        check_path_name("run name", run)
        self.fsync = durability == "commit"
        self.files = ChunkFileWriter(fsync=self.fsync, direct=direct_io)
        self.compression = compression
        if create_run:
            root = create_or_open_root(self.path)
            if run in root:
                raise StoreError(
                    f"run {run!r} already exists in store {str(self.path)!r}; pass another "
                    "run name, or run=None for the next free one."
                )
            self.run_group = root.create_group(run)
            self.run_group.attrs[layout.RUN_ATTR] = run_meta or {}
        else:
            self.run_group = zarr.open_group(str(self.path / run), mode="r+")
        self.group = self.run_group.create_group(layout.rank_group(rank))
        self.group_dir = self.path / run / layout.rank_group(rank)
        self.group.attrs.update({"committed": 0, "missing": {}, "scalar_rows": 0, "rank": rank})
        self.committed = 0
        self.scalar_rows = 0
        self.missing: dict[str, list[int]] = {}
        self.arrays: dict[str, _RawArray] = {}
        self.steps = _Vector(self._create("step", (), np.int64, _STEP_CHUNK, -1), _STEP_CHUNK, -1)
        self.scalar_cols: dict[str, _Vector] = {}
        self.pending_scalars: list[tuple[int, dict[str, float]]] = []

    # -- arrays ---------------------------------------------------------------------
    def _create(
        self,
        path: str,
        record_shape: tuple[int, ...],
        dtype: Any,
        cap: int,
        fill: Any,
        *,
        attrs: dict[str, Any] | None = None,
        dims: tuple[str, ...] | None = None,
        compress: bool = False,
    ) -> _RawArray:
        chunks = (cap, *record_shape) if not record_shape else (1, *record_shape)
        arr = self.group.create_array(
            path,
            shape=(cap, *record_shape),
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            config=_ARRAY_CONFIG,
            attributes=attrs or {},
            dimension_names=("record", *dims) if dims else None,
            chunk_key_encoding=layout.CHUNK_KEY_ENCODING,
            compressors=_compressors(compress),
        )
        return _RawArray(arr, self.group_dir / path, self.files)

    def _record_array(self, path: str, data: np.ndarray, attrs: dict[str, Any]) -> _RawArray:
        ra = self.arrays.get(path)
        if ra is None:
            axes = tuple(attrs.get("axes", ())) or None
            if axes is not None and len(axes) != data.ndim:
                axes = None
            compress = self.compression == "zstd" and path.startswith(
                (layout.ACTIVATIONS, layout.PROBE_ACTIVATIONS)
            )
            fill: Any = float("nan") if data.dtype.kind == "f" else 0
            ra = self._create(
                path,
                tuple(data.shape),
                data.dtype,
                max(64, self.committed + 1),
                fill,
                attrs={**attrs, "first_record": self.committed},
                dims=axes,
                compress=compress,
            )
            self.arrays[path] = ra
        elif tuple(data.shape) != ra.record_shape or data.dtype != ra.dtype:
            raise ShapeMismatchError(
                f"{path!r} changed from shape {ra.record_shape} ({ra.dtype}) to "
                f"{tuple(data.shape)} ({data.dtype}) at step record {self.committed}; "
                "every record of a site must have the same shape. Use rows=N to record a "
                "fixed number of rows, or drop_last=True in your DataLoader."
            )
        return ra

    # -- records --------------------------------------------------------------------
    def write_record(
        self,
        step: int,
        arrays: dict[str, tuple[np.ndarray, dict[str, Any]]],
        sample_ids: np.ndarray | None = None,
    ) -> None:
        """Write every array of one record, then commit it."""
        i = self.committed
        if sample_ids is not None:
            ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)
            arrays = {**arrays, "sample_ids": (ids, {"axes": ["row"]})}
        for path, (data, attrs) in arrays.items():
            self._write_record_chunk(path, data, attrs, i)
        for path in self.arrays.keys() - arrays.keys():
            self.missing.setdefault(path, []).append(i)
        self.steps.extend(np.asarray([step], dtype=np.int64))
        self.committed = i + 1
        self._flush_scalars()
        self._commit()

    def _write_record_chunk(
        self, path: str, data: np.ndarray, attrs: dict[str, Any], i: int
    ) -> None:
        ra = self._record_array(path, data, attrs)
        ra.ensure_capacity(i + 1)
        ra.write_chunk((i, *([0] * data.ndim)), data, i)

    # -- scalars --------------------------------------------------------------------
    def add_scalars(self, step: int, values: dict[str, float]) -> None:
        """Queue a row of the scalar table; rows of the same step are merged."""
        if self.pending_scalars and self.pending_scalars[-1][0] == step:
            self.pending_scalars[-1][1].update(values)
        else:
            self.pending_scalars.append((step, dict(values)))

    def flush_scalars(self) -> None:
        """Write and commit the queued scalar rows."""
        if self.pending_scalars:
            self._flush_scalars()
            self._commit()

    def _flush_scalars(self) -> None:
        rows = self.pending_scalars
        if not rows:
            return
        self.pending_scalars = []
        names = {n for _, vals in rows for n in vals}
        if "step" not in self.scalar_cols:
            self.scalar_cols["step"] = self._scalar_column("step", np.int64, -1)
        for name in sorted(names - self.scalar_cols.keys()):
            col = self._scalar_column(name, np.float64, float("nan"))
            col.extend(np.full(self.scalar_rows, np.nan))
            self.scalar_cols[name] = col
        self.scalar_cols["step"].extend(np.array([s for s, _ in rows], dtype=np.int64))
        for name, col in self.scalar_cols.items():
            if name != "step":
                col.extend(np.array([vals.get(name, np.nan) for _, vals in rows], np.float64))
        self.scalar_rows += len(rows)

    def _scalar_column(self, name: str, dtype: Any, fill: Any) -> _Vector:
        path = f"{layout.SCALARS}/{scalar_key(name)}"
        raw = self._create(path, (), dtype, _SCALAR_CHUNK, fill, attrs={"name": name})
        return _Vector(raw, _SCALAR_CHUNK, fill)

    # -- probe set ------------------------------------------------------------------
    def write_probe(self, x: np.ndarray, y: np.ndarray | None) -> None:
        """Store the fixed probe set once, at run level."""
        for name, data in (("X", x), ("Y", y)):
            if data is None:
                continue
            data = np.ascontiguousarray(data)
            arr = self.run_group.create_array(
                f"probe/{name}",
                shape=data.shape,
                chunks=tuple(max(1, d) for d in data.shape) or "auto",  # one chunk, checked
                dtype=data.dtype,
                config=_ARRAY_CONFIG,
                chunk_key_encoding=layout.CHUNK_KEY_ENCODING,
                compressors=_compressors(False),
            )
            arr[...] = data
        meta = dict(self.run_group.attrs[layout.RUN_ATTR])  # type: ignore[arg-type]
        meta["probe"] = {"n": len(x), "has_y": y is not None}
        self.run_group.attrs[layout.RUN_ATTR] = meta

    def update_run_meta(self, entries: dict[str, Any]) -> None:
        meta = dict(self.run_group.attrs[layout.RUN_ATTR])  # type: ignore[arg-type]
        meta.update(entries)
        self.run_group.attrs[layout.RUN_ATTR] = meta

    # -- commit ---------------------------------------------------------------------
    def _commit(self) -> None:
        if self.fsync:
            for directory in {self.group_dir, *(ra.dir for ra in self.arrays.values())}:
                if directory.exists():
                    fsync_dir(directory)
        # one atomic rewrite of the rank group's zarr.json (attrs.update would write
        # it once per key)
        self.group.update_attributes(
            {
                "committed": self.committed,
                "missing": self.missing,
                "scalar_rows": self.scalar_rows,
            }
        )

    def close(self) -> None:
        """Flush queued scalars and commit."""
        self.flush_scalars()


__all__ = ["StoreWriter", "create_or_open_root", "is_store_root"]
