"""Multi-rank recording under torch.distributed.

Each rank writes its own shard ``<run>/rank<r>`` of the same run (no shared writes, so
no resize races); rank 0 creates the store and the run, picks the run name and
broadcasts it; a barrier orders creation before the other ranks open their shards. The
reader (:class:`~dynalens.probe.store.Store`) merges the shards: records that every rank
committed, rank shards concatenated along the batch axis (data-parallel training).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.distributed as dist

from dynalens.errors import StoreError
from dynalens.probe.store_writer import StoreWriter


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def json_safe(value: Any) -> Any:
    """``value`` as JSON (objects that JSON cannot hold become their ``str``)."""
    return json.loads(json.dumps(value, default=str))


def _next_free_run(path: Path) -> str:
    taken = {p.name for p in path.iterdir()} if path.is_dir() else set()
    k = 0
    while f"run-{k:03d}" in taken:
        k += 1
    return f"run-{k:03d}"


def _create(path: str, run: str | None, meta: dict[str, Any], **kw: Any) -> StoreWriter:
    if run is not None:
        return StoreWriter(path, run, rank=0, run_meta=meta, create_run=True, **kw)
    for _ in range(100):  # another process may take the same free name meanwhile
        name = _next_free_run(Path(path))
        try:
            return StoreWriter(path, name, rank=0, run_meta=meta, create_run=True, **kw)
        except StoreError:
            if not (Path(path) / name).exists():
                raise
    raise StoreError(f"could not find a free run name in {path!r}; pass run='name'.")


def make_writer(
    path: str, run: str | None, rank: int, meta: dict[str, Any], **kw: Any
) -> tuple[StoreWriter, str]:
    """The StoreWriter of this rank and the run name all ranks agreed on."""
    if not (dist.is_available() and dist.is_initialized()):
        single = _create(path, run, meta, **kw)
        return single, single.run_group.basename
    box: list[Any] = [None]
    writer: StoreWriter | None = None
    if rank == 0:
        try:
            writer = _create(path, run, meta, **kw)
            box[0] = writer.run_group.basename
        except Exception as exc:  # tell the other ranks instead of leaving them waiting
            box[0] = exc
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        if rank == 0:
            raise box[0]
        raise StoreError(f"rank 0 could not create the run: {box[0]}")
    name = str(box[0])
    if rank != 0:
        writer = StoreWriter(path, name, rank=rank, create_run=False, **kw)
    dist.barrier()
    assert writer is not None
    return writer, name


__all__ = ["json_safe", "make_writer", "rank_and_world"]
