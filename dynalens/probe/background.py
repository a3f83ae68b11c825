"""The background writer: a bounded queue and one thread that owns the StoreWriter.

Training never waits for the disk unless the queue is full (back-pressure: ``put``
blocks, so memory stays bounded by ``max_pending`` records). An exception in the writer
thread is kept and re-raised in the training thread, wrapped in
:class:`~dynalens.errors.WriterError`, at the next :meth:`check` (called by
``Recorder.step``) or at :meth:`close` -- never silently dropped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from dynalens.errors import WriterError

_STOP = object()


class BackgroundWriter:
    """Run submitted calls in order on one daemon thread.

    Args:
        idle: called when no work arrived for ``idle_seconds`` (e.g. flush scalars).
        max_pending: queue bound; ``submit`` blocks when that many calls are pending.
    """

    def __init__(
        self,
        *,
        idle: Callable[[], None] | None = None,
        idle_seconds: float = 1.0,
        max_pending: int = 4,
        name: str = "dynalens-writer",
    ) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._idle = idle
        self._idle_seconds = idle_seconds
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._idle_seconds)
            except queue.Empty:
                if self._idle is not None and self._error is None:
                    self._call(self._idle, ())
                continue
            try:
                if item is _STOP:
                    return
                if self._error is None:  # after a failure, drain without writing more
                    self._call(*item)
            finally:
                self._queue.task_done()

    def _call(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # surfaced in the training thread by check()
            self._error = exc

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn(*args)``; blocks while the queue is full."""
        self.check()
        if self._closed:
            raise WriterError("the recorder is closed; create a new Recorder to record more.")
        self._queue.put((fn, args))

    def flush(self) -> None:
        """Wait until every submitted call has run; raise its error if one failed."""
        self._queue.join()
        self.check()

    def check(self) -> None:
        """Raise the writer thread's error, if any, in the calling thread."""
        err = self._error
        if err is not None:
            raise WriterError(
                f"the background writer failed: {type(err).__name__}: {err}. Records "
                "committed before the failure stay readable."
            ) from err

    def close(self) -> None:
        """Drain the queue, stop the thread, and raise a pending error."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self.check()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
