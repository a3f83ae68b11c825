"""The scalars of measured steps of :class:`~dynalens.dynamics.gns_live.GradientNoiseScaleMonitor`.

The instrument turns measured steps into statistics in blocks (:class:`StepBlock`: the
steps' unbiased estimates and the :class:`~dynalens.dynamics.stats.RatioStats` state after
each of them, from one :meth:`~dynalens.dynamics.stats.RatioStats.update_many`). Each
step is a :class:`StepScalars`, a read-only mapping made at the step and bound to its
block when the block is computed; the interval and per-group values are computed on first
access, for the whole block at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dynalens.dynamics.gns_live import GradientNoiseScaleMonitor
    from dynalens.dynamics.stats import RatioStates


class StepBlock:
    """K measured steps computed together.

    Attributes:
        steps: the K step numbers. tr, g2: ``[K, groups + 1]`` unbiased per-step estimates
        of ``tr Σ`` and ``|G|²`` (the total last). b_big: ``[K]`` batch sizes.
        states: the statistics after each step.
    """

    __slots__ = ("_values", "b_big", "g2", "groups", "prefix", "states", "steps", "tr", "z")

    def __init__(
        self,
        steps: list[int],
        tr: np.ndarray,
        g2: np.ndarray,
        b_big: np.ndarray,
        states: RatioStates,
        *,
        z: float,
        prefix: str,
        groups: list[str],
    ) -> None:
        self.steps, self.tr, self.g2, self.b_big, self.states = steps, tr, g2, b_big, states
        self.z, self.prefix, self.groups = z, prefix, groups
        self._values: list[dict[str, float]] | None = None

    @property
    def computed(self) -> bool:
        """Whether the interval and per-group scalars have been computed."""
        return self._values is not None

    def values(self) -> list[dict[str, float]]:
        """Every scalar of each step (computed once, vectorised over the block)."""
        if self._values is None:
            res = self.states.compute(self.z)
            p = self.prefix
            ratio, total = res["ratio"], res["ratio"][:, -1]
            cols: dict[str, np.ndarray] = {
                f"{p}.b_simple": total,
                f"{p}.b_simple_low": res["low"][:, -1],
                f"{p}.b_simple_high": res["high"][:, -1],
                f"{p}.trace_sigma": res["x"][:, -1],
                f"{p}.grad_sq": res["y"][:, -1],
                f"{p}.step_trace_sigma": self.tr[:, -1],
                f"{p}.step_grad_sq": self.g2[:, -1],
                f"{p}.batch_size": self.b_big,
                f"{p}.b_simple_over_b": total / self.b_big,
            }
            for i, g in enumerate(self.groups):
                cols[f"{p}.b_simple.{g}"] = ratio[:, i]
                cols[f"{p}.trace_sigma.{g}"] = res["x"][:, i]
                cols[f"{p}.grad_sq.{g}"] = res["y"][:, i]
            names = list(cols)
            table = np.stack([np.asarray(v, dtype=np.float64) for v in cols.values()], 1)
            self._values = [dict(zip(names, row)) for row in table.tolist()]
        return self._values


class StepScalars(Mapping[str, float]):
    """The scalars of one measured step, computed on first access.

    ``m["step"]`` and ``m[prefix + ".batch_size"]`` are known at the step; reading
    ``.step_trace_sigma`` or ``.step_grad_sq`` computes the step's block of estimates
    (cheap); any other key computes the interval and per-group values of the block once
    (:meth:`StepBlock.values`). :meth:`scalars` returns a plain dict without ``"step"``.
    Each step reports the statistics as they were after it, whenever it is read.
    """

    __slots__ = ("_b_big", "_block", "_keys", "_monitor", "_prefix", "_row", "step")

    def __init__(self, monitor: GradientNoiseScaleMonitor, step: int, b_big: float) -> None:
        self.step = int(step)
        self._b_big = float(b_big)
        self._monitor: GradientNoiseScaleMonitor | None = monitor
        self._prefix = monitor.prefix
        self._keys = monitor._scalar_keys
        self._block: StepBlock | None = None
        self._row = -1

    def bind(self, block: StepBlock, row: int) -> None:
        """Attach the computed block (the monitor calls this when it flushes)."""
        self._block, self._row, self._monitor = block, row, None

    @property
    def block(self) -> StepBlock:
        """The computed block of this step (computing pending steps if needed)."""
        if self._block is None:
            assert self._monitor is not None
            self._monitor.flush()
        assert self._block is not None
        return self._block

    @property
    def tr(self) -> np.ndarray:
        """``[groups + 1]`` unbiased ``tr Σ`` estimates of this step (total last)."""
        return self.block.tr[self._row]

    @property
    def g2(self) -> np.ndarray:
        """``[groups + 1]`` unbiased ``|G|²`` estimates of this step (total last)."""
        return self.block.g2[self._row]

    def _cheap(self, key: str) -> float | None:
        p = self._prefix
        if key == "step":
            return float(self.step)
        if key == f"{p}.batch_size":
            return self._b_big
        if key == f"{p}.step_trace_sigma":
            return float(self.tr[-1])
        if key == f"{p}.step_grad_sq":
            return float(self.g2[-1])
        return None

    def scalars(self) -> dict[str, float]:
        """Every scalar of the step (computed once), without ``"step"``."""
        return dict(self.block.values()[self._row])

    def __getitem__(self, key: str) -> float:
        cheap = self._cheap(key)
        if cheap is not None:
            return cheap
        return self.block.values()[self._row][key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        if self._block is None:
            return f"StepScalars(step={self.step}, pending)"
        return f"StepScalars(step={self.step}, {self._prefix}.step_trace_sigma={self.tr[-1]:.4g})"
