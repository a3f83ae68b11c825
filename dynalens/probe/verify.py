"""Check a whole store: every committed record, its checksum and every metadata file.

>>> report = dynalens.open_store("runs/exp1.zarr").verify()   # or: dynalens verify PATH
>>> report.ok, report.checked, report.damaged

Reads every chunk that a reader may return (committed records of every array of every
rank of every run, the step vectors, the scalar tables, the probe sets) through the same
checked path as :class:`~dynalens.probe.store.Store` (size, existence, CRC-32C, zstd
frame; see :mod:`dynalens.probe.chunk_codec`), and parses every metadata file. Each
problem becomes one :class:`Damage` entry instead of stopping the check. Temp files of
interrupted writes are listed apart: they are not damage (no committed record refers to
them), and the next Recorder that opens the store removes them once they are stale.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynalens.errors import DamagedStoreError
from dynalens.probe import layout
from dynalens.probe.metadata import attributes, is_store_root, read_json


@dataclass(frozen=True)
class Damage:
    """One damaged file: which, what it held, why."""

    file: str
    what: str
    reason: str


@dataclass
class VerifyReport:
    """What :func:`verify_store` found."""

    path: str
    runs: list[str] = field(default_factory=list)
    checked: int = 0
    damaged: list[Damage] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.damaged

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def __str__(self) -> str:
        lines = [
            f"store   {self.path}",
            f"runs    {', '.join(self.runs) or '-'}",
            f"checked {self.checked} records and metadata files",
        ]
        if self.temp_files:
            lines.append(
                f"temp    {len(self.temp_files)} leftover temp file(s) of interrupted writes "
                "(not damage; removed by the next Recorder once stale)"
            )
        if self.ok:
            lines.append("ok      no damage found")
        else:
            lines.append(f"DAMAGED {len(self.damaged)} file(s):")
            lines += [f"  {d.what}: {d.reason}\n    {d.file}" for d in self.damaged]
        return "\n".join(lines)


def verify_store(path: str | os.PathLike[str], run: str | None = None) -> VerifyReport:
    """Check every committed record and metadata file of the store at ``path`` (one run
    when ``run`` is given). Returns a :class:`VerifyReport`; never raises for damage."""
    from dynalens.probe.store import Store

    root = Path(path)
    report = VerifyReport(path=str(root))
    try:
        is_root = is_store_root(root)
    except DamagedStoreError as exc:
        report.damaged.append(_damage(exc))
        return report
    if not is_root:
        Store(root)  # raises the reader's own "not a store" error
    report.temp_files = sorted(str(p) for p in root.rglob("*.partial"))
    runs = [run] if run is not None else _run_names(root, report)
    for name in runs:
        report.runs.append(name)
        try:
            store = Store(root, name)
            _verify_run(store, report)
        except DamagedStoreError as exc:
            report.damaged.append(_damage(exc))
    return report


def _damage(exc: DamagedStoreError) -> Damage:
    return Damage(file=exc.file, what=exc.what or "store", reason=exc.reason or str(exc))


def _run_names(root: Path, report: VerifyReport) -> list[str]:
    names = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            if layout.RUN_ATTR in attributes(child):
                names.append(child.name)
        except DamagedStoreError as exc:
            report.damaged.append(_damage(exc))
    return names


def _checked(report: VerifyReport, fn: Any, *args: Any) -> Any:
    """Run one check, counting it; damage goes to the report."""
    report.checked += 1
    try:
        return fn(*args)
    except DamagedStoreError as exc:
        report.damaged.append(_damage(exc))
        return None


def _verify_run(store: Any, report: VerifyReport) -> None:
    _checked(report, lambda: store.sites)
    if store.meta.get("probe"):
        _checked(report, store.probe)
    for rank in range(store.world_size):
        state = _checked(report, store._rank_state, rank)
        if state is None:
            continue
        n = int(state.get("committed", 0))
        missing = {k: set(v) for k, v in state.get("missing", {}).items()}
        _checked(report, store._record_steps, rank, n)
        rows = int(state.get("scalar_rows", 0))
        for path, arr in _arrays(store, rank, report):
            if path == "step":
                continue
            if path.startswith(layout.SCALARS + "/"):
                _checked(report, store._read_vector, rank, path, arr, rows)
                continue
            first = int(arr.attrs.get("first_record", 0))
            for i in range(first, n):
                if i not in missing.get(path, ()):
                    _checked(report, store._read_records, rank, path, arr, np.int64(i))


def _arrays(store: Any, rank: int, report: VerifyReport) -> Iterator[tuple[str, Any]]:
    """Every array of one rank's shard, as (path inside the shard, opened array); a
    damaged array metadata file goes to the report."""
    from dynalens.probe.store import _open_array

    base = store._dir(rank, "")
    for meta in sorted(base.rglob("zarr.json")):
        rel = meta.parent.relative_to(base).as_posix()
        if rel == ".":
            continue
        report.checked += 1
        try:
            if read_json(meta).get("node_type") != "array":
                continue
            arr = _open_array(meta.parent)
        except DamagedStoreError as exc:
            report.damaged.append(_damage(exc))
            continue
        yield rel, arr
