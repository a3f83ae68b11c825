"""The one exception family of dynalens.

Every error dynalens raises on purpose is a :class:`DynalensError`. Subclasses also
inherit the builtin a caller would expect (``ValueError``, ``KeyError``, ...), so
``except ValueError`` keeps working. Messages say what was expected, what came, and
how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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


class EstimatorRegimeError(DynalensError, ValueError):
    """An estimator was asked for an answer outside the regime where it is valid."""


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
