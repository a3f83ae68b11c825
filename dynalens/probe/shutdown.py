"""Keep what a run accepted when the process ends without ``close()``.

A training script that is stopped by SIGTERM (what SLURM, Kubernetes and most job
schedulers send before killing a job), interrupted with Ctrl-C, or that simply returns
without ``rec.close()`` must not lose the steps ``Recorder.step()`` already accepted and
queued for the background writer. Every open Recorder registers here:

* at interpreter exit (before thread pools shut down: normal exit, an uncaught exception, Ctrl-C's
  KeyboardInterrupt reaching the top level, ``sys.exit``), each open Recorder is closed:
  its queued records are written and committed and its hooks removed;
* on SIGTERM, the handler closes every open Recorder the same way, then hands the signal
  on: to the handler that was installed before (chained), or, when that was the
  default, by restoring the default and re-sending SIGTERM, so the process still ends
  with the status a scheduler expects. The handler is installed from the main thread
  only, and not over a handler installed as ``SIG_IGN``.

What is not kept: the step that was being recorded when the signal came (``step()`` had
not accepted it), and anything after SIGKILL (uncatchable: every committed step survives,
see :mod:`dynalens.probe.layout`). A handler that the user installs *after* creating the
Recorder replaces this one; the atexit path still runs when that handler exits normally.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref
from types import FrameType
from typing import Any, Protocol


class _Closeable(Protocol):
    def close(self) -> None: ...


_open: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_installed = {"atexit": False, "sigterm": False}
_previous: Any = None


def register(recorder: _Closeable) -> None:
    """Track an open recorder until :func:`unregister` (or its garbage collection)."""
    with _lock:
        _open.add(recorder)
        if not _installed["atexit"]:
            _register_exit()
            _installed["atexit"] = True
        if not _installed["sigterm"]:
            _install_sigterm()


def unregister(recorder: _Closeable) -> None:
    with _lock:
        _open.discard(recorder)


def close_all() -> None:
    """Close every open recorder (errors of one do not stop the others)."""
    with _lock:
        recorders = list(_open)
    for rec in recorders:
        try:
            rec.close()
        except Exception as exc:  # at exit there is nobody left to raise to
            import sys

            print(f"dynalens: closing a Recorder at exit failed: {exc}", file=sys.stderr)


def _register_exit() -> None:
    """Run :func:`close_all` at exit *before* thread pools shut down: zarr writes
    metadata through a ThreadPoolExecutor, and concurrent.futures refuses new work once
    its own exit hook (``threading._register_atexit``, run before ``atexit``) has run.
    Hooks registered there run last-registered first, so ours precedes that one."""
    register_early = getattr(threading, "_register_atexit", None)
    if register_early is not None:
        try:
            register_early(close_all)
            return
        except RuntimeError:  # already shutting down
            pass
    atexit.register(close_all)


def _install_sigterm() -> None:
    global _previous
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still runs
    current = signal.getsignal(signal.SIGTERM)
    if current is signal.SIG_IGN or current is _on_sigterm:
        return
    _previous = current
    signal.signal(signal.SIGTERM, _on_sigterm)
    _installed["sigterm"] = True


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    close_all()
    previous = _previous
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
