"""Reading a dynalens store -- from a notebook while training still runs, or after.

>>> store = dynalens.open_store("runs/exp1.zarr")
>>> store.sites, store.steps("layers.2")
>>> acts = store.activations("layers.2")            # (n_steps, batch, d), all steps
>>> g = store.gradients("layers.2", step=100)       # one step
>>> store.scalars()                                 # pandas DataFrame: step, loss, ...

Every call re-reads the commit counters, so a live reader sees each new record as soon
as it is committed and never anything beyond (see :mod:`dynalens.probe.layout`).
Multi-rank runs are merged: rank shards are concatenated along the batch axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from dynalens._validation import check_option
from dynalens.errors import (
    DamagedStoreError,
    SiteNotFoundError,
    StepNotRecordedError,
    StoreError,
    close_matches,
    listing,
)
from dynalens.probe import layout
from dynalens.probe.chunk_codec import ChunkFormat, read_chunk, read_records, read_vector
from dynalens.probe.dtypes import from_disk
from dynalens.probe.metadata import attributes, is_store_root, read_json
from dynalens.probe.names import check_stored_name
from dynalens.probe.scalar_table import merge_rows_by_step
from dynalens.probe.store_analysis import StoreAnalysis

Array = np.ndarray | torch.Tensor


def _open_array(directory: Path) -> zarr.Array:
    """A zarr array, its metadata checked: damage is a clear error, not zarr's traceback."""
    read_json(directory / "zarr.json", missing_ok=False)
    try:
        return zarr.open_array(str(directory), mode="r")
    except Exception as exc:
        raise DamagedStoreError(
            f"the metadata file {directory / 'zarr.json'} is damaged ({type(exc).__name__}: "
            f"{exc}); restore it from a backup, or run `dynalens verify` on the store."
        ) from None


def open_store(path: str | os.PathLike[str], run: str | None = None, *, mode: str = "r") -> Store:
    """Open a store for reading (``mode="r"``) or for adding analysis results (``"a"``).

    Args:
        path: the store directory written by a :class:`~dynalens.Recorder`.
        run: which run; default the most recently created one.
        mode: ``"r"`` read-only, ``"a"`` also allows :meth:`Store.put_result`.
    """
    return Store(path, run, mode=mode)


class Store(StoreAnalysis):
    """One run of a store. See :func:`open_store`."""

    def __init__(self, path: str | os.PathLike[str], run: str | None = None, *, mode: str = "r"):
        self.path = Path(path)
        self.mode = check_option("mode", mode, ("r", "a"))
        if not self.path.exists():
            raise StoreError(f"no store at {str(self.path)!r}: the path does not exist.")
        if not is_store_root(self.path):
            raise StoreError(
                f"{str(self.path)!r} exists but is not a dynalens store (no zarr.json with a "
                "'dynalens' attribute); pass the directory a Recorder wrote."
            )
        run_given = run
        runs = self.runs
        if not runs:
            raise StoreError(f"store {str(self.path)!r} holds no run yet.")
        if run is None:
            run = runs[-1]
        elif run not in runs:
            raise StoreError(
                f"run {run!r} is not in store {str(self.path)!r}{close_matches(run, runs)} "
                f"Runs: {listing(runs)}."
            )
        self.run = run
        self._follow_latest = run_given is None
        self._arrays: dict[str, zarr.Array] = {}

    def refresh(self) -> Store:
        """Catch up with the store on disk: drop cached array handles and, when the Store
        was opened without ``run=``, move to the newest run (e.g. one a training process
        started after this Store was opened). Reads need no refresh to see new steps of
        the same run: every read re-reads the commit counter. Returns ``self``."""
        if self._follow_latest:
            runs = self.runs
            if runs and runs[-1] != self.run:
                self.run = runs[-1]
                self.__dict__.pop("world_size", None)
        self._arrays.clear()
        return self

    # -- runs and metadata ------------------------------------------------------------
    @property
    def runs(self) -> list[str]:
        """Run names, oldest first."""
        found = []
        for name in sorted(p.name for p in self.path.iterdir() if p.is_dir()):
            meta = attributes(self.path / name)
            if isinstance(meta.get(layout.RUN_ATTR), dict):
                found.append((str(meta[layout.RUN_ATTR].get("created", "")), name))
        return [name for _, name in sorted(found)]

    def select(self, run: str) -> Store:
        """The same store, another run."""
        return Store(self.path, run, mode=self.mode)

    @property
    def meta(self) -> dict[str, Any]:
        """The run's metadata: sites, schedule, config, model summary, versions."""
        return dict(attributes(self.path / self.run).get(layout.RUN_ATTR, {}))

    @cached_property
    def world_size(self) -> int:
        return int(self.meta.get("world_size", 1))

    @property
    def sites(self) -> list[str]:
        """Recorded site names, in the order they were declared."""
        where = f"the metadata of run {self.run!r}"
        return [check_stored_name("site", s, where) for s in self.meta.get("sites", {})]

    def _rank_state(self, rank: int) -> dict[str, Any]:
        return attributes(self.path / self.run / layout.rank_group(rank))

    def committed(self, rank: int | None = None) -> int:
        """Records every rank (or the given rank) has committed."""
        ranks = range(self.world_size) if rank is None else [rank]
        return min(int(self._rank_state(r).get("committed", 0)) for r in ranks)

    # -- arrays ---------------------------------------------------------------------
    def _array(self, rank: int, path: str) -> zarr.Array | None:
        key = f"{self.run}/{layout.rank_group(rank)}/{path}"
        arr = self._arrays.get(key)
        if arr is None and self._node_type(rank, path) != "array":
            return None
        if arr is None:
            arr = _open_array(self.path / key)
            self._arrays[key] = arr
        return arr

    def _node_type(self, rank: int, path: str) -> str | None:
        meta = self.path / self.run / layout.rank_group(rank) / path / "zarr.json"
        return read_json(meta).get("node_type")

    def _fresh(self, arr: zarr.Array, n: int) -> zarr.Array:
        """Re-open an array whose cached shape is older than the commit counter."""
        if arr.shape[0] >= n:
            return arr
        return zarr.open_array(arr.store_path.store, path=arr.store_path.path, mode="r")

    def _dir(self, rank: int, path: str) -> Path:
        return self.path / self.run / layout.rank_group(rank) / path

    def _record_steps(self, rank: int, n: int) -> np.ndarray:
        arr = self._array(rank, "step")
        if arr is None or n == 0:
            return np.zeros(0, dtype=np.int64)
        return self._read_vector(rank, "step", self._fresh(arr, n), n)

    def _read_vector(self, rank: int, path: str, arr: zarr.Array, n: int) -> np.ndarray:
        """The first ``n`` elements of a 1-D array (steps, scalar columns), checked."""
        fmt = ChunkFormat.of(arr)
        if fmt is None:
            return np.asarray(arr[:n])
        size = int(arr.chunks[0])

        def describe(c: int) -> str:
            return (
                f"elements {c * size}-{(c + 1) * size - 1} of {path!r} in run {self.run!r} "
                f"(rank {rank})"
            )

        return read_vector(fmt, self._dir(rank, path), size, n, describe)

    def _read_records(
        self, rank: int, path: str, arr: zarr.Array, sel: int | np.ndarray
    ) -> np.ndarray:
        """Records ``sel`` (one index, or an index array stacked on a new first axis) of
        one rank's array, every chunk checked (see :mod:`dynalens.probe.chunk_codec`)."""
        many = not isinstance(sel, (int, np.integer))
        fmt = ChunkFormat.of(arr)
        if fmt is None or arr.chunks[0] != 1:  # not laid out by dynalens: zarr reads it
            return np.asarray(arr.get_orthogonal_selection((sel,)) if many else arr[int(sel)])
        idx = np.atleast_1d(np.asarray(sel, dtype=np.int64))

        def describe(i: int) -> str:
            try:
                step = f"step {int(self._record_steps(0, i + 1)[i])}"
            except StoreError:
                step = "an unknown step (the step vector is damaged too)"
            return (
                f"the record of {step} (record {i}) of {path!r} in run {self.run!r} (rank {rank})"
            )

        out = read_records(fmt, self._dir(rank, path), tuple(arr.shape[1:]), idx, describe)
        return out if many else out[0]

    def _kinds_of(self, site: str) -> list[str]:
        return [k for k in layout.KINDS if self._node_type(0, layout.array_path(k, site))]

    def _check_site(self, site: str) -> None:
        if site not in self.sites:
            raise SiteNotFoundError(
                f"site {site!r} was not recorded in run {self.run!r}"
                f"{close_matches(site, self.sites)} Sites: {listing(self.sites)}."
            )

    def _valid(self, path: str, n: int) -> np.ndarray:
        """Record indices < n at which ``path`` holds data."""
        arr = self._array(0, path)
        if arr is None:
            return np.zeros(0, dtype=np.int64)
        first = int(arr.attrs.get("first_record", 0))  # type: ignore[arg-type]
        idx = np.arange(first, n)
        missing: set[int] = set()
        for r in range(self.world_size):
            missing.update(self._rank_state(r).get("missing", {}).get(path, []))
        return idx[~np.isin(idx, list(missing))] if missing else idx

    def _resolve_path(self, kind: str, site: str, param: str | None = None) -> str:
        check_option("kind", kind, layout.KINDS)
        self._check_site(site)
        path = layout.array_path(kind, site, param)
        if self._array(0, path) is None:
            kinds = self._kinds_of(site)
            raise SiteNotFoundError(
                f"no {kind!r} were recorded for site {site!r} in run {self.run!r}; "
                f"recorded for it: {kinds or 'nothing yet'}."
                + (
                    " Pass probe=... or capture=... to the Recorder to record them."
                    if kinds
                    else ""
                )
            )
        return path

    def steps(self, site: str | None = None, kind: str | None = None) -> np.ndarray:
        """Optimizer steps committed (for ``site``/``kind``: those holding its data)."""
        n = self.committed()
        steps = self._record_steps(0, n)
        if site is None:
            return steps
        kind = kind or self._default_kind(site)
        return steps[self._valid(self._resolve_path(kind, site), n)]

    def _default_kind(self, site: str) -> str:
        self._check_site(site)
        kinds = self._kinds_of(site)
        for k in (layout.PROBE_ACTIVATIONS, layout.ACTIVATIONS):
            if k in kinds:
                return k
        return kinds[0] if kinds else layout.ACTIVATIONS

    def read(
        self,
        kind: str,
        site: str,
        step: int | Sequence[int] | None = None,
        *,
        param: str | None = None,
        rank: int | None = None,
        torch: bool = False,
    ) -> Array:
        """Records of one (kind, site): one step, some steps, or all steps stacked.

        Args:
            kind: one of ``activations``, ``gradients``, ``inputs``, ``param_grads``,
                ``probe_activations``.
            site: the site name.
            step: an optimizer step; a list of steps (stacked on a new first axis, in
                that order); or ``None`` for every step holding data (stacked, in record
                order; see :meth:`steps`).
            param: the parameter name for ``param_grads`` (e.g. ``"weight"``).
            rank: one rank's shard; ``None`` merges ranks along the batch axis.
            torch: return a torch tensor instead of numpy.
        """
        path = self._resolve_path(kind, site, param)
        n = self.committed(rank)
        valid = self._valid(path, n)
        single = step is not None and not isinstance(step, Sequence | np.ndarray)
        if step is None:
            sel: Any = valid
        else:
            recorded = self._record_steps(0, n)[valid]
            index = {int(s): int(i) for s, i in zip(recorded, valid)}  # the last record wins
            wanted = [int(step)] if single else [int(s) for s in step]  # type: ignore[arg-type,union-attr]
            absent = [s for s in wanted if s not in index]
            if absent:
                shown = ", ".join(str(s) for s in recorded[:8]) + (
                    " ..." if len(recorded) > 8 else ""
                )
                raise StepNotRecordedError(
                    f"step {absent[0]} holds no {kind!r} for site {site!r} in run "
                    f"{self.run!r}; recorded steps: [{shown}] ({len(recorded)} in all; "
                    "store.steps(site) lists them)."
                )
            sel = index[wanted[0]] if single else np.array([index[s] for s in wanted], np.int64)
        one_rank = kind in (layout.PARAM_GRADS, layout.PROBE_ACTIVATIONS)  # same on all ranks
        ranks = [0] if one_rank else (range(self.world_size) if rank is None else [rank])
        parts = []
        for r in ranks:
            arr = self._array(r, path)
            if arr is None:
                raise StoreError(f"rank {r} has no array {path!r} in run {self.run!r}.")
            parts.append(self._read_records(r, path, self._fresh(arr, n), sel))
        axis = 0 if single else 1
        out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
        logical = str(self._array(0, path).attrs.get("logical_dtype", out.dtype))  # type: ignore[union-attr]
        return from_disk(out, logical, as_torch=torch)

    def activations(
        self,
        site: str,
        step: int | Sequence[int] | None = None,
        *,
        source: str | None = None,
        rank: int | None = None,
        torch: bool = False,
    ) -> Array:
        """Activations of ``site``: ``source="batch"`` (the live training batch) or
        ``"probe"`` (the fixed probe set); default the probe set when the run has one."""
        if source is None:
            kind = self._default_kind(site)
            kind = (
                kind
                if kind in (layout.ACTIVATIONS, layout.PROBE_ACTIVATIONS)
                else layout.ACTIVATIONS
            )
        else:
            check_option("source", source, ("batch", "probe"))
            kind = layout.PROBE_ACTIVATIONS if source == "probe" else layout.ACTIVATIONS
        return self.read(kind, site, step, rank=rank, torch=torch)

    def gradients(
        self,
        site: str,
        step: int | Sequence[int] | None = None,
        *,
        rank: int | None = None,
        torch: bool = False,
    ) -> Array:
        """d loss / d activations of ``site`` on the training batch."""
        return self.read(layout.GRADIENTS, site, step, rank=rank, torch=torch)

    def inputs(
        self,
        site: str,
        step: int | Sequence[int] | None = None,
        *,
        rank: int | None = None,
        torch: bool = False,
    ) -> Array:
        """The first positional input of ``site``'s module on the training batch."""
        return self.read(layout.INPUTS, site, step, rank=rank, torch=torch)

    def param_grads(
        self, site: str, param: str, step: int | None = None, *, torch: bool = False
    ) -> Array:
        """Gradient of the site module's own parameter ``param`` (e.g. ``"weight"``)."""
        return self.read(layout.PARAM_GRADS, site, step, param=param, torch=torch)

    def at_step(self, step: int, kind: str = layout.ACTIVATIONS) -> dict[str, Array]:
        """One step across every site that recorded ``kind`` then."""
        out = {}
        for site in self.sites:
            if self._array(0, layout.array_path(kind, site)) is None:
                continue
            try:
                out[site] = self.read(kind, site, step)
            except StepNotRecordedError:
                continue
        if not out:
            raise StepNotRecordedError(
                f"no site holds {kind!r} at step {step} in run {self.run!r}; "
                f"committed steps: {self.steps().tolist()[:12]}."
            )
        return out

    def sample_ids(self, step: int | None = None, *, rank: int | None = None) -> np.ndarray:
        """Which samples of the data set the recorded live-batch rows were
        (as passed to ``Recorder.step(sample_ids=...)``)."""
        n = self.committed(rank)
        ranks = range(self.world_size) if rank is None else [rank]
        parts = []
        for r in ranks:
            arr = self._array(r, "sample_ids")
            if arr is None:
                raise SiteNotFoundError(
                    "no sample ids were recorded; pass sample_ids=... to Recorder.step()."
                )
            arr = self._fresh(arr, n)
            if step is None:
                valid = self._valid("sample_ids", n)
                parts.append(self._read_records(r, "sample_ids", arr, valid))
            else:
                hits = np.flatnonzero(self._record_steps(0, n) == step)
                if not len(hits):
                    raise StepNotRecordedError(f"step {step} was not recorded in run {self.run!r}.")
                parts.append(self._read_records(r, "sample_ids", arr, int(hits[-1])))
        return np.concatenate(parts, axis=-1)

    # -- the scalar table and the probe set ------------------------------------------
    def scalars(self, *, rank: int = 0) -> Any:
        """The scalar table (step, loss, lr, ...), one row per step sorted by step (see
        :mod:`dynalens.probe.scalar_table`): a pandas DataFrame when pandas is installed,
        else a dict of numpy arrays."""
        rows = int(self._rank_state(rank).get("scalar_rows", 0))
        base = self._dir(rank, layout.SCALARS)
        cols: dict[str, np.ndarray] = {}
        if base.is_dir():
            keys = sorted(p.name for p in base.iterdir() if (p / "zarr.json").exists())
            for key in ["step"] + [k for k in keys if k != "step"]:
                arr = _open_array(base / key)
                name = str(arr.attrs.get("name", key))
                path = f"{layout.SCALARS}/{key}"
                cols[name] = self._read_vector(rank, path, arr, rows)
        cols = merge_rows_by_step(cols)
        try:
            import pandas as pd
        except ImportError:
            return cols
        return pd.DataFrame(cols if cols else {"step": np.zeros(0, dtype=np.int64)})

    def probe(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The fixed probe set ``(X, Y)`` the run recorded activations on."""
        info = self.meta.get("probe")
        if not info:
            raise SiteNotFoundError(
                f"run {self.run!r} has no probe set; pass probe=(X, Y) to the Recorder."
            )
        x = self._probe_array("X")
        y = self._probe_array("Y") if info.get("has_y") else None
        return x, y

    def _probe_array(self, name: str) -> np.ndarray:
        directory = self.path / self.run / "probe" / name
        arr = _open_array(directory)
        fmt = ChunkFormat.of(arr)
        if fmt is None or tuple(arr.chunks) != tuple(max(1, d) for d in arr.shape):
            return np.asarray(arr[...])  # a store from before checksums
        out = np.empty(arr.shape, dtype=fmt.dtype)
        key = layout.chunk_key((0,) * arr.ndim)

        def what() -> str:
            return f"the probe set's {name} of run {self.run!r}"

        read_chunk(fmt, directory / key, out, what)
        return out.astype(out.dtype.newbyteorder("="), copy=False)

    # -- integrity ----------------------------------------------------------------------
    def verify(self, *, all_runs: bool = False) -> Any:
        """Read every committed record of this run (``all_runs``: of every run) and check
        its checksum and every metadata file; returns a
        :class:`~dynalens.probe.verify.VerifyReport` (``.ok``, ``.damaged``)."""
        from dynalens.probe.verify import verify_store

        return verify_store(self.path, None if all_runs else self.run)

    # -- summary ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What the run holds: steps, sites, shapes, dtypes and bytes per array."""
        n = self.committed()
        arrays = []
        for site in self.sites:
            for kind in self._kinds_of(site):
                if kind == layout.PARAM_GRADS:
                    continue
                path = layout.array_path(kind, site)
                arr = self._array(0, path)
                assert arr is not None
                count = len(self._valid(path, n))
                shape = list(arr.shape[1:])
                logical = str(arr.attrs.get("logical_dtype", arr.dtype))
                if self.world_size > 1 and shape:
                    shape[0] *= self.world_size
                nbytes = count * int(np.prod(shape)) * np.dtype(arr.dtype).itemsize
                arrays.append(
                    {
                        "kind": kind,
                        "site": site,
                        "steps": count,
                        "shape": shape,
                        "dtype": logical,
                        "bytes": nbytes,
                    }
                )
        meta = self.meta
        scal = self.scalars()
        names = [c for c in (scal.columns if hasattr(scal, "columns") else scal) if c != "step"]
        return {
            "path": str(self.path),
            "run": self.run,
            "runs": self.runs,
            "world_size": self.world_size,
            "committed_steps": n,
            "steps": self.steps().tolist(),
            "sites": meta.get("sites", {}),
            "site_patterns": meta.get("site_patterns", {}),
            "arrays": arrays,
            "bytes": sum(a["bytes"] for a in arrays),
            "scalars": list(names),
            "probe": meta.get("probe"),
            "schedule": meta.get("schedule"),
            "created": meta.get("created"),
            "versions": meta.get("versions"),
        }

    def __repr__(self) -> str:
        return (
            f"Store({str(self.path)!r}, run={self.run!r}, sites={len(self.sites)}, "
            f"committed_steps={self.committed()})"
        )
