"""Scoped torch thread counts.

Work made of many small tensor ops (the paper's 12-10-7-5-4-3-2 network, binning
4096 x 10 activations) gains nothing from a thread pool, and under CPU contention the
pool's synchronisation makes it several times slower (measured: binning 6 ms single-
threaded, 17-40 ms with 2 threads on a loaded 2-core machine; training 25 -> 3 epochs/s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Use at most ``n`` torch intra-op threads inside the block (``None``: unchanged)."""
    old = torch.get_num_threads()
    if n is None or n >= old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
