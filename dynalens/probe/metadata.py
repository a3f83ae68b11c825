"""The store's JSON metadata files (zarr v3 ``zarr.json``): reading them safely, and
creating a store root in one atomic step.

A damaged metadata file (invalid JSON, not an object) is a
:class:`~dynalens.errors.DamagedStoreError` that names the file and says what to do,
never a traceback from deep inside zarr. A store root is created complete or not at all:
its ``zarr.json`` (a group whose attributes carry the ``dynalens`` marker) is written with
one atomic replace, so a kill during creation cannot leave a directory that every later
Recorder and reader refuses. A root left half-made by an older version (an
attribute-less ``zarr.json`` and nothing else) is adopted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynalens.errors import DamagedStoreError, StoreError
from dynalens.probe import layout
from dynalens.probe.chunk_files import atomic_write


def read_json(path: Path, *, missing_ok: bool = True) -> dict[str, Any]:
    """The JSON object in ``path`` (``{}`` when it is absent and ``missing_ok``)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise DamagedStoreError(
            f"the metadata file {path} is missing; the store is incomplete. Restore it from "
            "a backup, or run `dynalens verify` on the store to see what else is damaged.",
            file=str(path),
            what="metadata",
            reason="the file is missing",
        ) from None
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedStoreError(
            f"the metadata file {path} is damaged (not valid JSON: {exc}); dynalens cannot "
            "tell what it described. Restore it from a backup; `dynalens verify STORE` "
            "lists what else is damaged.",
            file=str(path),
            what="metadata",
            reason=f"not valid JSON ({exc})",
        ) from None
    if not isinstance(value, dict):
        raise DamagedStoreError(
            f"the metadata file {path} is damaged (a JSON {type(value).__name__}, not an "
            "object). Restore it from a backup.",
            file=str(path),
            what="metadata",
            reason=f"a JSON {type(value).__name__}, not an object",
        )
    return value


def attributes(path: Path) -> dict[str, Any]:
    """The ``attributes`` of the zarr node whose directory is ``path``."""
    attrs = read_json(path / "zarr.json").get("attributes", {})
    return attrs if isinstance(attrs, dict) else {}


def is_store_root(path: Path) -> bool:
    """True when ``path`` holds a dynalens store (a zarr group with our marker).

    Raises :class:`~dynalens.errors.DamagedStoreError` when its ``zarr.json`` exists
    but is damaged."""
    if not (path / "zarr.json").is_file():
        return False
    return layout.ROOT_ATTR in attributes(path)


def _root_json() -> bytes:
    node = {
        "attributes": {layout.ROOT_ATTR: {"schema": layout.SCHEMA_VERSION}},
        "zarr_format": 3,
        "node_type": "group",
    }
    return json.dumps(node, indent=2).encode()


def _is_bare_group(path: Path) -> bool:
    """A root half-made by an older version: an attribute-less group, nothing else."""
    if {p.name for p in path.iterdir()} != {"zarr.json"}:
        return False
    try:
        node = read_json(path / "zarr.json")
    except DamagedStoreError:
        return False
    return node.get("node_type") == "group" and not node.get("attributes")


def ensure_store_root(path: Path) -> None:
    """Make ``path`` a store root when it is absent, empty or half-made; otherwise
    check that it is one. The marker is written in one atomic replace."""
    if path.exists() and not path.is_dir():
        raise StoreError(
            f"{str(path)!r} is a file, not a dynalens store; pass a directory path "
            "(it is created when missing), e.g. 'runs/exp1.zarr'."
        )
    if is_store_root(path):
        return
    if path.is_dir() and any(path.iterdir()) and not _is_bare_group(path):
        raise StoreError(
            f"{str(path)!r} exists and is not a dynalens store (no zarr.json with a "
            "'dynalens' attribute); choose a new or empty directory."
        )
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / "zarr.json", memoryview(_root_json()), fsync=False, mkdir=False)
