"""What analyses do with a store beyond reading records: lazy out-of-core arrays (Dask),
cached result tables next to the records (e.g. the information plane), and the model
checkpoints a run stored (see :mod:`dynalens.probe.checkpoints`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from dynalens.errors import ReadOnlyStoreError, SiteNotFoundError, StepNotRecordedError
from dynalens.probe import layout
from dynalens.probe.checkpoints import checkpoint_path
from dynalens.probe.dtypes import from_disk
from dynalens.probe.names import check_stored_name


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
    _record_steps: Any
    meta: Any

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
        """Save an analysis table (equal-length columns; a result's ``to_arrays()`` may add
        arrays of other lengths) next to the records, replacing an older one of the same
        name. Needs ``open_store(..., mode="a")``."""
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

    # -- checkpoints ------------------------------------------------------------------
    def _checkpoint_keys(self) -> list[str]:
        info = self.meta.get("checkpoints")
        if not info:
            raise SiteNotFoundError(
                f"run {self.run!r} stored no checkpoints; pass checkpoints=... (a schedule, "
                "e.g. LogSpaced(num=20, stop=n_steps)) to the Recorder."
            )
        return [check_stored_name("state_dict key", k, f"run {self.run!r}") for k in info["keys"]]

    def checkpoint_steps(self) -> np.ndarray:
        """Steps at which the run stored the model's ``state_dict()``."""
        keys = self._checkpoint_keys()
        n = self.committed()
        steps = self._record_steps(0, n)
        return steps[self._valid(checkpoint_path(keys[0]), n)] if keys else steps[:0]

    def checkpoint(self, step: int) -> dict[str, torch.Tensor]:
        """The ``state_dict()`` stored at ``step`` (the parameters the training batch of
        ``step`` saw), as CPU tensors in their own dtypes, every chunk checked."""
        keys = self._checkpoint_keys()
        n = self.committed()
        out = {}
        for key in keys:
            path = checkpoint_path(key)
            valid = self._valid(path, n)
            steps = self._record_steps(0, n)[valid]
            hits = np.flatnonzero(steps == step)
            if not len(hits):
                raise StepNotRecordedError(
                    f"step {step} has no checkpoint in run {self.run!r}; checkpoints: "
                    f"{self.checkpoint_steps().tolist()[:12]}."
                )
            arr = self._fresh(self._array(0, path), n)
            raw = self._read_records(0, path, arr, int(valid[hits[-1]]))
            attrs = dict(arr.attrs)
            t = torch.as_tensor(from_disk(raw, str(attrs["logical_dtype"]), as_torch=True))
            out[key] = t.reshape(attrs["shape"])
        return out

    def load_checkpoint(self, step: int, into: nn.Module, *, strict: bool = True) -> nn.Module:
        """Load the checkpoint of ``step`` into ``into`` (in place, on its device and
        dtype, as ``load_state_dict``); returns ``into``."""
        into.load_state_dict(self.checkpoint(step), strict=strict)
        return into
