"""Lazy package exports: ``import dynalens`` stays light (STYLE.md, principle 9)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package`` that imports ``table[name]`` (a
    module path, absolute or relative to ``package``) when ``name`` is first used."""

    def __getattr__(name: str) -> Any:
        if name in table:
            where = table[name]
            path = where if where.startswith("dynalens") else f"{package}.{where}"
            return getattr(importlib.import_module(path), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
