"""Training-dynamics instruments: gradient noise scale, critical batch size, and more.

Imports are lazy: ``import dynalens.dynamics`` loads nothing heavy until a name is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynalens._lazy import lazy_getattr

if TYPE_CHECKING:
    from dynalens.dynamics.cbs import (
        cbs_zhang_data,
        cbs_zhang_model,
        fit_critical_batch_size,
        fit_power_law,
    )
    from dynalens.dynamics.ddp import DDPNoiseScale
    from dynalens.dynamics.gns import (
        NoiseScaleEstimator,
        adam_metric,
        gradient_noise_scale,
        per_example_estimates,
        two_batch_estimates,
    )
    from dynalens.dynamics.gns_live import GradientNoiseScaleMonitor
    from dynalens.dynamics.grad_capture import CaptureMeans, GradCapture
    from dynalens.dynamics.hessian import hvp, top_hessian_eigenvalue
    from dynalens.dynamics.instruments import (
        DynamicsMonitor,
        grad_norm,
        inner_product_test,
        norm_test,
        sgd_temperature,
    )
    from dynalens.dynamics.mccandlish import reproduce_mccandlish
    from dynalens.dynamics.per_example import PerExampleGradNorms, per_example_sq_norms
    from dynalens.dynamics.stats import RatioStats
    from dynalens.dynamics.sweep import batch_size_sweep

_LAZY = {
    "NoiseScaleEstimator": "gns",
    "adam_metric": "gns",
    "gradient_noise_scale": "gns",
    "per_example_estimates": "gns",
    "two_batch_estimates": "gns",
    "hvp": "hessian",
    "top_hessian_eigenvalue": "hessian",
    "CaptureMeans": "grad_capture",
    "GradCapture": "grad_capture",
    "PerExampleGradNorms": "per_example",
    "per_example_sq_norms": "per_example",
    "RatioStats": "stats",
    "GradientNoiseScaleMonitor": "gns_live",
    "DDPNoiseScale": "ddp",
    "DynamicsMonitor": "instruments",
    "grad_norm": "instruments",
    "inner_product_test": "instruments",
    "norm_test": "instruments",
    "sgd_temperature": "instruments",
    "cbs_zhang_data": "cbs",
    "cbs_zhang_model": "cbs",
    "fit_critical_batch_size": "cbs",
    "fit_power_law": "cbs",
    "batch_size_sweep": "sweep",
    "reproduce_mccandlish": "mccandlish",
}

__all__ = [  # noqa: RUF022 (grouped by module, as _LAZY)
    "NoiseScaleEstimator",
    "adam_metric",
    "gradient_noise_scale",
    "per_example_estimates",
    "two_batch_estimates",
    "hvp",
    "top_hessian_eigenvalue",
    "CaptureMeans",
    "GradCapture",
    "PerExampleGradNorms",
    "per_example_sq_norms",
    "RatioStats",
    "GradientNoiseScaleMonitor",
    "DDPNoiseScale",
    "DynamicsMonitor",
    "grad_norm",
    "inner_product_test",
    "norm_test",
    "sgd_temperature",
    "cbs_zhang_data",
    "cbs_zhang_model",
    "fit_critical_batch_size",
    "fit_power_law",
    "batch_size_sweep",
    "reproduce_mccandlish",
]


__getattr__ = lazy_getattr("dynalens.dynamics", _LAZY)
