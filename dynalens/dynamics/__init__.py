"""Training-dynamics instruments: gradient noise scale, critical batch size, and more.

Imports are lazy: ``import dynalens.dynamics`` loads nothing heavy until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dynalens.dynamics.gns import (
        NoiseScaleEstimator,
        adam_metric,
        gradient_noise_scale,
        per_example_estimates,
        two_batch_estimates,
    )
    from dynalens.dynamics.hessian import hvp, top_hessian_eigenvalue
    from dynalens.dynamics.per_example import (
        GradCapture,
        PerExampleGradNorms,
        per_example_sq_norms,
    )
    from dynalens.dynamics.stats import RatioStats

_LAZY = {
    "NoiseScaleEstimator": "gns",
    "adam_metric": "gns",
    "gradient_noise_scale": "gns",
    "per_example_estimates": "gns",
    "two_batch_estimates": "gns",
    "hvp": "hessian",
    "top_hessian_eigenvalue": "hessian",
    "GradCapture": "per_example",
    "PerExampleGradNorms": "per_example",
    "per_example_sq_norms": "per_example",
    "RatioStats": "stats",
}

__all__ = [  # noqa: RUF022 (grouped by module, as _LAZY)
    "NoiseScaleEstimator",
    "adam_metric",
    "gradient_noise_scale",
    "per_example_estimates",
    "two_batch_estimates",
    "hvp",
    "top_hessian_eigenvalue",
    "GradCapture",
    "PerExampleGradNorms",
    "per_example_sq_norms",
    "RatioStats",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"dynalens.dynamics.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'dynalens.dynamics' has no attribute {name!r}")
