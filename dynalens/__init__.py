"""dynalens: a workbench for interpretability and training-dynamics research on PyTorch.

Attach a :class:`Recorder` to an existing training loop, read the records back with
:func:`open_store`, and turn them into science with :mod:`dynalens.estimators` and
:mod:`dynalens.dynamics`. ``import dynalens`` stays light: it imports neither triton,
transformer-lens, plotly nor pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynalens._lazy import lazy_getattr
from dynalens.errors import DynalensError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dynalens.probe.recorder import Recorder
    from dynalens.probe.store import Store, open_store

__all__ = ["DynalensError", "Recorder", "Store", "__version__", "open_store"]

_LAZY = {
    "Recorder": "dynalens.probe.recorder",
    "Store": "dynalens.probe.store",
    "open_store": "dynalens.probe.store",
}


__getattr__ = lazy_getattr("dynalens", _LAZY)
