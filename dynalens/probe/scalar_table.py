"""The scalar table as readers see it: one row per step, sorted by step.

The writer appends a row each time scalars arrive for a step (``Recorder.step(loss=...)``,
``Recorder.log(step, ...)``, an instrument such as the noise-scale monitor logging the
step it measured after the fact), so one step can own several stored rows. Reading
merges them: for each step and column, the last value logged (NaN only where nothing
was logged), so the noise-scale columns sit on the training row of the step they
measured.
"""

from __future__ import annotations

import numpy as np


def merge_rows_by_step(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``cols`` (with a ``"step"`` column, rows in write order) merged to one row per
    step, sorted by step; each column keeps its last non-NaN value of the step."""
    if "step" not in cols or not len(cols["step"]):
        return cols
    steps, inverse = np.unique(cols["step"], return_inverse=True)
    out = {"step": steps}
    order = np.arange(len(inverse))
    for name, values in cols.items():
        if name == "step":
            continue
        merged = np.full(len(steps), np.nan, dtype=np.float64)
        logged = ~np.isnan(values)
        out[name] = merged
        if not logged.any():
            continue
        groups, rows = inverse[logged], order[logged]
        by_group = np.lexsort((rows, groups))  # within a step, in write order
        last = np.r_[groups[by_group][1:] != groups[by_group][:-1], True]
        merged[groups[by_group][last]] = values[logged][by_group][last]
    return out
