"""Import optional dependencies where they are used, with an error naming the extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from dynalens.errors import MissingDependencyError

#: module name -> the pip extra of dynalens that installs it
EXTRAS = {
    "plotly": "plot",
    "kaleido": "plot",
    "pandas": "analysis",
    "dask": "analysis",
    "sklearn": "analysis",
    "scipy": "analysis",
    "triton": "triton",
    "transformer_lens": "transformer-lens",
    "lightning": "lightning",
    "transformers": "transformers",
    "tqdm": "analysis",
}


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` or raise a :class:`MissingDependencyError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "all")
        raise MissingDependencyError(
            f"{feature} needs the optional package {top!r}, which is not installed; "
            f"install it with: pip install 'dynalens[{extra}]'"
        ) from exc
