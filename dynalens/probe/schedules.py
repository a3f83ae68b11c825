"""Recording schedules: which optimizer steps are recorded.

A schedule is a callable ``step -> bool`` with a JSON description for the store's
metadata. Four kinds cover what the papers do:

* :class:`Every` -- every N steps (``every=10``);
* :class:`AtSteps` -- an explicit list (``every=[0, 5, 100]``);
* :class:`LogSpaced` -- dense early, sparse late, as the information-plane papers sample
  epochs (Shwartz-Ziv & Tishby 2017 record epochs on a log scale);
* :class:`Predicate` -- any ``fn(step) -> bool``.

:func:`as_schedule` turns what users pass as ``every=`` into one of these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from dynalens._validation import check_int
from dynalens.errors import InvalidParameterError


class Schedule:
    """Base class: ``schedule(step) -> bool`` and ``describe() -> dict``."""

    def __call__(self, step: int) -> bool:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({args})"


class Every(Schedule):
    """Steps ``start, start + n, start + 2n, ...``."""

    def __init__(self, n: int, start: int = 0) -> None:
        self.n = check_int("every", n, min=1)
        self.start = check_int("start", start, min=0)

    def __call__(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.n == 0

    def describe(self) -> dict[str, Any]:
        return {"kind": "every", "n": self.n, "start": self.start}


class AtSteps(Schedule):
    """An explicit set of steps."""

    def __init__(self, steps: Iterable[int]) -> None:
        self.steps = sorted({check_int("steps[i]", s, min=0) for s in steps})
        if not self.steps:
            raise InvalidParameterError(
                "the list of steps to record is empty; pass at least one step, e.g. every=[0]."
            )
        self._set = frozenset(self.steps)

    def __call__(self, step: int) -> bool:
        return step in self._set

    def describe(self) -> dict[str, Any]:
        return {"kind": "steps", "steps": self.steps}


class LogSpaced(AtSteps):
    """About ``num`` steps spaced evenly in log(1 + step) on ``[0, stop]``, always
    including 0 and ``stop``; dense early, sparse late. Fewer than ``num`` when the
    early steps collide after rounding to integers."""

    def __init__(self, num: int, stop: int) -> None:
        num = check_int("num", num, min=2)
        stop = check_int("stop", stop, min=1)
        grid = np.unique(np.round(np.expm1(np.linspace(0.0, np.log1p(stop), num))).astype(int))
        super().__init__(int(s) for s in grid)
        self.num, self.stop = num, stop

    def describe(self) -> dict[str, Any]:
        return {"kind": "log", "num": self.num, "stop": self.stop, "steps": self.steps}


class Predicate(Schedule):
    """Any ``fn(step) -> bool``."""

    def __init__(self, fn: Callable[[int], bool]) -> None:
        if not callable(fn):
            raise InvalidParameterError(f"Predicate needs a callable; got {type(fn).__name__}.")
        self.fn = fn

    def __call__(self, step: int) -> bool:
        return bool(self.fn(step))

    def describe(self) -> dict[str, Any]:
        return {"kind": "predicate", "fn": getattr(self.fn, "__qualname__", repr(self.fn))}


def as_schedule(every: Any) -> Schedule:
    """``int`` -> :class:`Every`; iterable of ints -> :class:`AtSteps`; a
    :class:`Schedule` as is; any other callable -> :class:`Predicate`."""
    if isinstance(every, Schedule):
        return every
    if isinstance(every, (int, np.integer)) and not isinstance(every, bool):
        return Every(int(every))
    if callable(every):
        return Predicate(every)
    if isinstance(every, Iterable) and not isinstance(every, (str, bytes)):
        return AtSteps(every)
    raise InvalidParameterError(
        f"every must be an int (every N steps), a list of steps, a Schedule such as "
        f"LogSpaced(num=30, stop=10_000), or a callable step -> bool; got {every!r}."
    )
