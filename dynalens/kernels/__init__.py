"""Heavy statistics: each op has a float64 torch reference, a CPU fallback, a Triton
kernel for CUDA tensors, and a dispatcher. Importing this package never imports triton.

Ops named like their module (``knn.knn``, ``ksg_counts.ksg_counts``) are imported from the
module, e.g. ``from dynalens.kernels.knn import knn``."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "bin_indices",
    "gauss_lse",
    "gaussian_gram",
    "ghost_is_cheaper",
    "joint_counts",
    "knn_distances",
    "linear_sq_norms",
    "pattern_symbols",
    "radius_counts",
]

_LAZY = {
    "linear_sq_norms": "ghost_norm",
    "ghost_is_cheaper": "ghost_norm",
    "knn_distances": "knn",
    "radius_counts": "knn",
    "gauss_lse": "gauss_lse",
    "gaussian_gram": "gauss_lse",
    "bin_indices": "binning",
    "pattern_symbols": "binning",
    "joint_counts": "binning",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"dynalens.kernels.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'dynalens.kernels' has no attribute {name!r}")
