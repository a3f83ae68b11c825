"""What analyses do with a store beyond reading records: lazy out-of-core arrays (Dask)
and cached result tables next to the records (e.g. the information plane)."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from dynalens.errors import ReadOnlyStoreError
from dynalens.probe import layout
from dynalens.probe.dtypes import from_disk


class StoreAnalysis:
    """Methods of :class:`~dynalens.probe.store.Store` for analyses (a mixin: it uses
    the Store's checked readers)."""

    path: Any
    run: str
    mode: str
    _resolve_path: Any
    committed: Any
    _valid: Any
    _array: Any
    _fresh: Any
    _read_records: Any

    @property
    def world_size(self) -> int:  # the Store's
        raise NotImplementedError

    # -- out-of-core ------------------------------------------------------------------
    def as_dask(
        self, kind: str, site: str, *, param: str | None = None, records_per_chunk: int = 16
    ) -> Any:
        """A lazy dask array (n_steps, ...) of every committed record of (kind, site),
        ranks concatenated along the batch axis; for data larger than memory."""
        from dynalens._optional import require

        da = require("dask.array", "Store.as_dask")
        path = self._resolve_path(kind, site, param)
        n = self.committed()
        valid = self._valid(path, n)
        one_rank = kind in (layout.PARAM_GRADS, layout.PROBE_ACTIVATIONS)
        ranks = [0] if one_rank else range(self.world_size)
        logical = str(self._array(0, path).attrs.get("logical_dtype", ""))
        parts = []
        for r in ranks:
            arr = self._fresh(self._array(r, path), n)
            record = tuple(int(d) for d in arr.shape[1:])
            empty = np.zeros((0,), np.dtype(str(arr.dtype)))
            dtype = np.asarray(from_disk(empty, logical, as_torch=False)).dtype

            def load(block: np.ndarray, r: int = r, arr: zarr.Array = arr) -> np.ndarray:
                out = self._read_records(r, path, arr, block.astype(np.int64))
                return np.asarray(from_disk(out, logical, as_torch=False))

            index = da.from_array(valid, chunks=records_per_chunk)
            parts.append(
                index.map_blocks(
                    load,
                    new_axis=list(range(1, 1 + len(record))),
                    chunks=(index.chunks[0], *((d,) for d in record)),
                    dtype=dtype,
                    meta=np.empty((0,) * (1 + len(record)), dtype=dtype),
                )
            )
        return parts[0] if len(parts) == 1 else da.concatenate(parts, axis=1)

    # -- cached analysis results ------------------------------------------------------
    def put_result(
        self, name: str, columns: dict[str, Any], attrs: dict[str, Any] | None = None
    ) -> None:
        """Save an analysis table (equal-length columns) next to the records, replacing
        an older one of the same name. Needs ``open_store(..., mode="a")``."""
        if self.mode != "a":
            raise ReadOnlyStoreError(
                f"store {str(self.path)!r} was opened read-only; reopen it with "
                "open_store(path, mode='a') to save results."
            )
        group = zarr.open_group(str(self.path / self.run), mode="r+")
        results = group.require_group("results")
        if name in results:
            del results[name]
        table = results.create_group(name)
        for col, values in columns.items():
            arr = np.asarray(values)
            if arr.dtype.kind in "OUS":  # text: zarr's variable-length UTF-8 strings
                out = table.create_array(col, shape=arr.shape, dtype=str)
                out[...] = arr.astype(object)
            else:
                table.create_array(col, data=arr)
        table.attrs.update({"columns": list(columns), **(attrs or {})})

    def get_result(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """A table saved with :meth:`put_result` and its attributes, or ``None``."""
        base = self.path / self.run / "results" / name
        if not (base / "zarr.json").exists():
            return None
        table = zarr.open_group(str(base), mode="r")
        attrs: dict[str, Any] = dict(table.attrs)
        cols: dict[str, np.ndarray] = {}
        for c in attrs.get("columns", []):
            col = np.asarray(table[c][...])  # type: ignore[index]
            cols[c] = col.astype(object) if col.dtype.kind == "T" else col
        return cols, attrs
