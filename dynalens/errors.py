"""The one exception family of dynalens.

Every error dynalens raises on purpose is a :class:`DynalensError`. Subclasses also
inherit the builtin a caller would expect (``ValueError``, ``KeyError``, ...), so
``except ValueError`` keeps working. Messages say what was expected, what came, and
how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


class DynalensError(Exception):
    """Base class of all errors raised by dynalens."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidParameterError(DynalensError, ValueError):
    """A parameter has the wrong type, range or option."""


class InvalidInputError(DynalensError, ValueError):
    """Data passed to an estimator or recorder has the wrong shape, dtype or content."""


class SiteNotFoundError(DynalensError, KeyError):
    """A site name matches no module / hook point, or no recorded array."""


class StepNotRecordedError(DynalensError, KeyError):
    """A step was asked for that the store never committed."""


class StoreError(DynalensError, OSError):
    """The path is not a dynalens store, or the store is in a state that forbids the call."""


class DamagedStoreError(StoreError):
    """A committed record or a metadata file of a store is damaged (truncated, deleted,
    checksum mismatch, invalid JSON) or names a path outside the store.

    Attributes ``file`` (the damaged file), ``what`` (what it held) and ``reason`` say
    which and why, for tools such as ``dynalens verify``."""

    def __init__(self, message: str, *, file: str = "", what: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.file, self.what, self.reason = file, what, reason


class ReadOnlyStoreError(StoreError, PermissionError):
    """A write was attempted on a store opened for reading."""


class ShapeMismatchError(DynalensError, ValueError):
    """A recorded tensor changed shape between steps."""


class HookNotFiredError(DynalensError, RuntimeError):
    """A site's hook never ran during a step that should have recorded it."""


class WriterError(DynalensError, RuntimeError):
    """The background writer failed; the original exception is chained as ``__cause__``."""


class MissingDependencyError(DynalensError, ImportError):
    """An optional dependency is needed for this feature and is not installed."""


class CapabilityError(DynalensError, NotImplementedError):
    """A backend or model cannot do what was asked; the message names what to use instead."""


class EstimatorRegimeError(DynalensError, ValueError):
    """An estimator was asked for an answer outside the regime where it is valid."""


def note_cleanup_error(primary: BaseException, cleanup: BaseException) -> None:
    """Record on ``primary`` that cleaning up after it failed with ``cleanup``, so the
    first error stays the one raised and the second is not lost."""
    name = type(cleanup).__name__
    note = f"while cleaning up after this error, another was raised: {name}: {cleanup}"
    if hasattr(primary, "add_note"):  # Python 3.11+
        primary.add_note(note)


def exit_context(close: Callable[[], None], exc: BaseException | None) -> None:
    """The body of a context manager's ``__exit__``: run ``close()``; when the block
    raised ``exc``, an error from ``close()`` is noted on ``exc`` instead of replacing
    it, so the user's error comes out on top."""
    if exc is None:
        close()
        return
    try:
        close()
    except BaseException as cleanup:
        note_cleanup_error(exc, cleanup)


class EstimatorCostError(EstimatorRegimeError):
    """An estimate would need far more memory or time than the machine has; refused before
    anything is allocated (the message gives the cost model and how to proceed)."""


def close_matches(name: str, options: Iterable[str], n: int = 3) -> str:
    """Return ``"; did you mean 'a' or 'b'?"`` for the closest options, or ``""``."""
    hits = difflib.get_close_matches(name, list(options), n=n, cutoff=0.5)
    if not hits:
        return ""
    return "; did you mean " + " or ".join(repr(h) for h in hits) + "?"


def listing(options: Iterable[str], limit: int = 12) -> str:
    """A short comma-separated listing of options for error messages."""
    items = sorted(options)
    shown = ", ".join(items[:limit])
    more = len(items) - limit
    return shown + (f", ... ({more} more)" if more > 0 else "")
