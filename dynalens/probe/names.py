"""Names that become paths inside a store: run, site and scalar names.

A store must never write outside its directory, nor lay out data that its reader cannot
find again, so every user-chosen name that becomes a file or directory name is checked
where the user passes it (``Recorder(run=..., sites=...)``, ``log()``, ``step()``) and
again where a reader takes it from metadata (a crafted store naming a site
``"../../x"`` is refused on read).

Rules: a *path component* (run and site names) is one directory name: not empty, not
``.`` or ``..``, no ``/``, ``\\`` or control character, not ``zarr.json`` (zarr's metadata
file), at most :data:`MAX_NAME_BYTES` bytes of UTF-8. Scalar names may also contain
``/`` (``"train/loss"``, as in TensorBoard and W&B): each ``/``-separated part follows the
component rules, and the name is stored under an escaped key (:func:`scalar_key`) with
the original kept in the column's attributes.
"""

from __future__ import annotations

import urllib.parse

from dynalens.errors import DamagedStoreError, InvalidParameterError

#: longest name in UTF-8 bytes: leaves room under the usual 255-byte file-name limit
#: for the temp-file suffix of atomic writes
MAX_NAME_BYTES = 200
_RESERVED = ("zarr.json",)


def _problem(name: object, *, allow_slash: bool) -> str | None:
    """Why ``name`` cannot be used, or ``None``."""
    if not isinstance(name, str):
        return f"it must be a string, got {type(name).__name__}"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes of UTF-8"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "it contains a control character"
    if "\\" in name:
        return "it contains a backslash"
    parts = name.split("/") if allow_slash else [name]
    if not allow_slash and "/" in name:
        return "it contains '/', which would make it a path"
    if name == "":
        return "it is empty"
    for part in parts:
        if part == "..":
            return "it contains the path part '..', which would leave its directory"
        if part in ("", "."):
            return f"it contains an empty or '.' path part ({name!r})"
        if part in _RESERVED:
            return f"{part!r} is the name of zarr's metadata file"
    return None


def check_path_name(what: str, name: object, *, allow_slash: bool = False) -> str:
    """``name`` when it is safe as a path inside the store, else a clear error.

    Args:
        what: what the name names, for the message (``"run name"``, ``"scalar"``).
        allow_slash: ``/`` separates parts (scalar names); otherwise it is refused.
    """
    why = _problem(name, allow_slash=allow_slash)
    if why is not None:
        raise InvalidParameterError(
            f"{what} {name!r} cannot be stored: {why}. Use letters, digits, '_', '-', '.'"
            f"{' and / between parts' if allow_slash else ''}, e.g. 'loss' or 'run-1'."
        )
    return name  # type: ignore[return-value]


def check_stored_name(what: str, name: object, where: str) -> str:
    """A name read from a store's metadata; a crafted or damaged one is refused."""
    why = _problem(name, allow_slash=False)
    if why is not None:
        raise DamagedStoreError(
            f"{where} names a {what} {name!r} that is not a safe path ({why}); the store's "
            "metadata was damaged or crafted, and dynalens reads nothing through it. "
            "Check where the store came from."
        )
    return name  # type: ignore[return-value]


def scalar_key(name: str) -> str:
    """The directory name of scalar column ``name`` (``"train/loss"`` -> ``"train%2Floss"``)."""
    return urllib.parse.quote(name, safe="")
