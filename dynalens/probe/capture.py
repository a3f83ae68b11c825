"""Per-step capture buffers: what the hooks copy, sub-sampled and cast for storage.

Tensors are detached and copied to the CPU at capture, so an in-place op that follows
in the model cannot change what was recorded. Row sub-sampling keeps a fixed random
subset of batch rows (the same rows of every batch of a given size); position
sub-sampling keeps a fixed random subset of the ``pos`` axis of sequence sites.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dynalens.errors import InvalidInputError
from dynalens.probe.dtypes import to_numpy
from dynalens.probe.sites import Site, default_axes


@dataclass
class Subsampler:
    """Fixed random subsets of rows and positions, chosen once per axis length."""

    rows: int | None = None
    positions: int | None = None
    seed: int = 0
    _cache: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    def _subset(self, axis: str, length: int, keep: int) -> torch.Tensor:
        key = (axis, length)
        idx = self._cache.get(key)
        if idx is None:
            gen = np.random.default_rng([self.seed, length, axis == "pos"])
            idx = torch.from_numpy(np.sort(gen.choice(length, size=keep, replace=False)))
            self._cache[key] = idx
        return idx

    def row_index(self, batch: int) -> torch.Tensor | None:
        """The rows kept of a batch of ``batch`` rows (``None``: all)."""
        if self.rows is None or batch == self.rows:
            return None
        if batch < self.rows:
            raise InvalidInputError(
                f"a batch of {batch} rows is smaller than rows={self.rows}; lower rows= to "
                f"at most the smallest batch, or use drop_last=True in the DataLoader."
            )
        return self._subset("row", batch, self.rows)

    def apply(self, t: torch.Tensor, axes: tuple[str, ...]) -> torch.Tensor:
        """``t`` with the kept rows (along its ``batch`` axis, else dim 0) and positions."""
        if t.ndim == 0:
            return t
        dim = batch_dim(axes, t.ndim)
        rows = self.row_index(t.shape[dim])
        if rows is not None:
            t = t.index_select(dim, rows.to(t.device))
        if self.positions is not None and "pos" in axes and len(axes) == t.ndim:
            dim = axes.index("pos")
            length = t.shape[dim]
            if length > self.positions:
                pos = self._subset("pos", length, self.positions)
                t = t.index_select(dim, pos.to(t.device))
        return t


def batch_dim(axes: tuple[str, ...], ndim: int) -> int:
    """The dimension of the batch axis (``"batch"`` in ``axes``, else 0)."""
    return axes.index("batch") if len(axes) == ndim and "batch" in axes else 0


def snapshot(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A detached CPU copy in the storage dtype (non-float tensors keep their dtype)."""
    target = dtype if t.is_floating_point() else t.dtype
    return t.detach().to(device="cpu", dtype=target, copy=True)


@dataclass
class StepBuffer:
    """What one recorded step captured: ``{array path: (cpu tensor, attrs)}``."""

    tensors: dict[str, tuple[torch.Tensor, dict[str, Any]]] = field(default_factory=dict)
    fired: set[str] = field(default_factory=set)
    grads_pending: set[str] = field(default_factory=set)
    extra_calls: dict[str, int] = field(default_factory=dict)
    rows: int | None = None  # batch rows of the live batch (before sub-sampling)
    ragged: dict[str, int] = field(default_factory=dict)  # sites whose batch was too small
    views: set[str] = field(default_factory=set)  # sites whose output was a view

    def put(self, path: str, t: torch.Tensor, site: Site, logical: str) -> None:
        attrs = {"site": site.name, "axes": list(site.axes or ()), "logical_dtype": logical}
        self.tensors[path] = (t, attrs)

    def arrays(self) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        return {path: (to_numpy(t), attrs) for path, (t, attrs) in self.tensors.items()}

    def clear(self) -> None:
        self.tensors.clear()
        self.fired.clear()
        self.grads_pending.clear()
        self.extra_calls.clear()
        self.rows = None
        self.ragged.clear()
        self.views.clear()


def site_axes(
    site: Site, t: torch.Tensor, overrides: dict[str, tuple[str, ...]]
) -> tuple[str, ...]:
    """The axes of a site's output: the user's, else inferred from module and ndim."""
    if site.axes is None:
        given = overrides.get(site.name)
        if given is not None and len(given) != t.ndim:
            raise InvalidInputError(
                f"axes for site {site.name!r} name {len(given)} axes {tuple(given)}, but its "
                f"output has {t.ndim} dims (shape {tuple(t.shape)}); give one name per dim."
            )
        site.axes = (
            tuple(given) if given is not None else default_axes(site.module, t.ndim, site.name)
        )
    return site.axes
