"""Information-bottleneck analysis: the information plane of every layer over training,
the networks and tasks of the papers, and their reproductions.

``information_plane(store, estimator="binning")`` reads a store recorded with a fixed
probe set and returns a tidy table of I(X;T) and I(T;Y) per (site, step);
``plot_information_plane(table)`` draws it as the papers do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynalens._lazy import lazy_getattr

if TYPE_CHECKING:
    from dynalens.ib.figures import plot_information_plane
    from dynalens.ib.plane import information_plane

__all__ = ["information_plane", "plot_information_plane"]

_LAZY = {
    "information_plane": "dynalens.ib.plane",
    "plot_information_plane": "dynalens.ib.figures",
}


__getattr__ = lazy_getattr("dynalens.ib", _LAZY)
