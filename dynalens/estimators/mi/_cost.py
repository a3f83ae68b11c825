"""Cost limits: refuse, before allocating, an estimate far beyond the machine.

Estimators whose cost grows faster than their input (the O(n^2 d) Gaussian-mixture sums of
``noisy`` and ``kde``, the O(d^3) decomposition of ``gaussian``, the edge tables of
``binning``) state what they are about to allocate and compute, and call :func:`check_cost`
first. It raises :class:`~dynalens.errors.EstimatorCostError` when

* the memory they would allocate exceeds the memory available on the device (``max_bytes``;
  by default what the operating system or CUDA reports free right now), or
* the time predicted at an *optimistic* throughput (about 4x faster than measured on the
  2-core development machine, 1000x that on CUDA) exceeds ``max_seconds`` (600 s), so
  only work far beyond the limit is refused, never a computation that would have finished.

Both limits can be changed for a block with :func:`cost_limits`, e.g.
``with cost_limits(max_seconds=None): ...`` to run an hour-long estimate knowingly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch

from dynalens.errors import EstimatorCostError, InvalidParameterError

__all__ = ["CostLimits", "check_cost", "cost_limits", "dense_seconds", "pairwise_seconds"]

_UNSET = object()


@dataclasses.dataclass
class CostLimits:
    """``max_bytes``: memory one estimate may allocate (``None``: what the device has
    available when the estimate starts); ``max_seconds``: predicted run time (``None``: no
    limit)."""

    max_bytes: float | None = None
    max_seconds: float | None = 600.0


_LIMITS = CostLimits()

#: optimistic seconds per (pair x (d + PAIR_OVERHEAD)) of a Gaussian-kernel sum, per CPU
#: thread (measured 1.2e-8 s per pair at d = 10 on one thread of the 2-core machine; 4x less)
PAIR_SECONDS = 4e-11
PAIR_OVERHEAD = 64
#: optimistic seconds per floating-point operation of dense linear algebra, per CPU thread
FLOP_SECONDS = 5e-11
#: how much faster a CUDA device is assumed to be than one CPU thread (optimistic)
CUDA_SPEEDUP = 1000.0


def _check_limit(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidParameterError(f"{name} must be a positive number or None; got {value!r}.")
    return float(value)


@contextlib.contextmanager
def cost_limits(
    *, max_bytes: object = _UNSET, max_seconds: object = _UNSET
) -> Iterator[CostLimits]:
    """Change the cost limits inside a ``with`` block (``None`` lifts one).

    Example:
        >>> from dynalens.estimators import cost_limits
        >>> with cost_limits(max_seconds=3600):    # allow estimates predicted up to 1 h
        ...     pass
    """
    old = dataclasses.replace(_LIMITS)
    try:
        if max_bytes is not _UNSET:
            _LIMITS.max_bytes = _check_limit("max_bytes", max_bytes)
        if max_seconds is not _UNSET:
            _LIMITS.max_seconds = _check_limit("max_seconds", max_seconds)
        yield _LIMITS
    finally:
        _LIMITS.max_bytes, _LIMITS.max_seconds = old.max_bytes, old.max_seconds


def available_bytes(device: torch.device) -> float | None:
    """Free memory of the device now (None where the platform does not say)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _speed(device: torch.device) -> float:
    """Parallel speed-up over one CPU thread."""
    return CUDA_SPEEDUP if device.type == "cuda" else float(max(1, torch.get_num_threads()))


def pairwise_seconds(pairs: float, d: int, device: torch.device) -> float:
    """Optimistic time of Gaussian-kernel log-sum-exps over ``pairs`` point pairs in d dims."""
    return pairs * (d + PAIR_OVERHEAD) * PAIR_SECONDS / _speed(device)


def dense_seconds(flops: float, device: torch.device) -> float:
    """Optimistic time of ``flops`` operations of dense linear algebra."""
    return flops * FLOP_SECONDS / _speed(device)


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if b < 1024 or unit == "PB":
            return f"{b:.3g} {unit}"
        b /= 1024
    return f"{b:.3g} PB"  # pragma: no cover


def check_cost(
    method: str,
    what: str,
    *,
    device: torch.device,
    nbytes: float = 0.0,
    seconds: float = 0.0,
    fix: str,
) -> None:
    """Raise :class:`EstimatorCostError` before work beyond the limits.

    Args:
        method: the estimator's name.
        what: the input sizes in words (``"n = 1000000 samples of 10 dims"``).
        device: where the work would run.
        nbytes: memory the estimate would allocate.
        seconds: predicted time at the optimistic throughput.
        fix: how to bring the cost down (subsample, fewer bins, ...).
    """
    limit = _LIMITS.max_bytes
    source = "the cost limit"
    if limit is None:
        limit, source = available_bytes(device), f"the memory available on {device.type}"
    if limit is not None and nbytes > limit:
        raise EstimatorCostError(
            f"method={method!r} on {what} would allocate about {_fmt_bytes(nbytes)}, more "
            f"than {source} ({_fmt_bytes(limit)}); refused before allocating. {fix}"
        )
    if _LIMITS.max_seconds is not None and seconds > _LIMITS.max_seconds:
        raise EstimatorCostError(
            f"method={method!r} on {what} would take at least {seconds:.3g} s on {device.type} "
            f"(an optimistic prediction), beyond the limit of {_LIMITS.max_seconds:g} s; "
            f"refused before starting. {fix} To run it anyway: "
            "`with dynalens.estimators.cost_limits(max_seconds=None): ...`."
        )
