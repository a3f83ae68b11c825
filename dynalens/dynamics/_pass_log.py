"""What the parameter hooks of :class:`~dynalens.dynamics.per_example.PerExampleGradNorms`
recorded since the last collect: one flat record per (backward pass, parameter).

The hooks run inside backward, where every Python statement and torch call is dear (on a
CPU ~1 µs and 10-20 µs), so a record is one tuple of numbers appended to a list, beside
the per-example norm row and the gradient dots as tensors; nothing is converted here.
:meth:`PassLog.lazy_means` turns a step of one pass per parameter into
:class:`~dynalens.dynamics.grad_capture.LazyMeans` through a layout cached by the
records' signature (the same every step of a training loop), and :meth:`PassLog.by_name`
regroups the records for the general path (accumulation, skipped parameters).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np
import torch

from dynalens.dynamics.grad_capture import GradCapture, LazyMeans, MeansLayout, to_floats

#: Layouts remembered per engine (distinct record signatures: batch sizes, loss scales).
MAX_LAYOUTS = 64


class PassRecord(NamedTuple):
    """One parameter k in one backward pass of ``batch`` examples: ``grad = c · G_pass``;
    ``d = c / batch`` scales the per-example norm row (``‖∇l_i‖² = row_i / d²``);
    ``first`` / ``cross`` index the dots ``|grad|²`` and ``grad · (earlier passes'
    p.grad)`` in ``scalars`` (-1: none). Stored as plain tuples in this field order."""

    k: int
    c: float
    batch: int
    first: int
    cross: int

    @property
    def d(self) -> float:
        return self.c / self.batch


class PassLog:
    """Records of one optimizer step (see the module docstring)."""

    __slots__ = ("inplace", "missed", "pending", "ready", "records", "rows", "scalars", "views")

    def __init__(self) -> None:
        self.records: list[tuple[int, float, int, int, int]] = []  # PassRecord fields
        self.rows: list[torch.Tensor | None] = []
        self.scalars: list[torch.Tensor] = []
        self.pending: defaultdict[int, list[Any]] = defaultdict(list)  # forward calls
        self.ready: dict[int, torch.Tensor] = {}  # rows computed by output hooks
        self.missed: set[str] = set()
        self.views: dict[int, tuple[str, Any, int]] = {}  # slot -> (module, weakref, version)
        self.inplace: dict[str, tuple[str, bool | None]] = {}  # missed param -> (module, sure)

    def record(
        self,
        k: int,
        grad: torch.Tensor,
        earlier: torch.Tensor | None,
        sq: torch.Tensor | None,
        batch: int,
        c: float,
        track: bool,
    ) -> None:
        """Add parameter ``k``'s pass: its gradient ``grad``, the gradient of earlier passes
        ``earlier`` (``p.grad``), the per-example row ``sq``; ``track``: take the dots."""
        first = cross = -1
        if track:
            if grad.requires_grad:  # create_graph=True: keep the statistics out of it
                grad = grad.detach()
            flat = grad if grad.ndim == 1 else grad.reshape(-1)
            if flat.dtype not in (torch.float32, torch.float64):
                flat = flat.float()  # half precision: accumulate in float32
            scalars = self.scalars
            scalars.append(flat.dot(flat))  # a dot reads memory once: ~2x vector_norm
            first = len(scalars) - 1
            if earlier is not None:
                scalars.append(flat.dot(earlier.detach().reshape(-1).to(flat.dtype)))
                cross = first + 1
        self.records.append((k, c, batch, first, cross))  # a plain tuple: cheapest here
        self.rows.append(sq)

    def lazy_means(self, n_params: int, layouts: dict[tuple, Any]) -> LazyMeans | None:
        """The step as lazy means when it is one pass of B examples with a per-example row
        and a dot for each of the ``n_params`` parameters; else None (general path)."""
        records = self.records
        if len(records) != n_params or self.missed:
            return None
        sig = tuple(records)
        layout = layouts.get(sig, False)
        if layout is False:
            if len(layouts) >= MAX_LAYOUTS:
                layouts.clear()
            layout = layouts[sig] = _layout(records, n_params)
        if layout is None:
            return None
        # rows are never None here: the layout needs a row and a dot for every record,
        # and rows are None only without per-example capture (then no LazyMeans is asked)
        return LazyMeans(self.rows, self.scalars, layout, records[0][2])  # type: ignore[arg-type]

    def by_name(self, names: list[str]) -> dict[str, list[tuple[torch.Tensor | None, PassRecord]]]:
        """``name -> [(row, record), ...]`` in pass order, for the general path."""
        out: dict[str, list[tuple[torch.Tensor | None, PassRecord]]] = defaultdict(list)
        for fields, row in zip(self.records, self.rows):
            rec = PassRecord(*fields)
            out[names[rec.k]].append((row, rec))
        return out

    def fill_capture(
        self,
        cap: GradCapture,
        by_name: dict[str, list[tuple[torch.Tensor | None, PassRecord]]],
        names: list[str],
        excluded: set[str],
        track: bool,
    ) -> None:
        """Fill ``cap`` (``n_examples`` set) from the records: per-example norms in units of
        ``∇l_i``, ``|G_B|²`` of the passes combined as the loss weighted them, per-pass
        ``|G_k|²``; parameters unused or ``excluded`` count as zero."""
        vals = to_floats(self.scalars)
        for name in names:
            passes = by_name.get(name)
            if not passes or name in excluded:  # unused or left out: zero
                cap.per_example[name] = torch.zeros(cap.n_examples, dtype=torch.float64)
                cap.batch_size[name] = float(cap.n_examples)
                cap.batch_grad_sq[name] = 0.0
                continue
            recs = [rec for _, rec in passes]
            parts = [sq * (1.0 / (rec.d * rec.d)) for sq, rec in passes if sq is not None]
            if parts:
                cap.per_example[name] = parts[0] if len(parts) == 1 else torch.cat(parts)
            sizes = [rec.batch for rec in recs]
            if len(sizes) > len(cap.pass_sizes):
                cap.pass_sizes = sizes
            sc = sum(rec.c for rec in recs)
            cap.batch_size[name] = sc * sc / sum(rec.c * rec.c / rec.batch for rec in recs)
            if track:
                big = sum(_pass_contribution(vals, rec.first, rec.cross) for rec in recs)
                cap.batch_grad_sq[name] = big / (sc * sc)
                cap.pass_grad_sq[name] = [vals[rec.first] / (rec.c * rec.c) for rec in recs]


def _pass_contribution(vals: list[float], i: int, j: int) -> float:
    """What one pass adds to ``|Σ_k g_k|²``: ``|g_k|² + 2 g_k·(earlier passes)``, from the
    parameter hook's scalars (``j = -1``: no earlier gradient)."""
    return vals[i] + (2.0 * vals[j] if j >= 0 else 0.0)


def _layout(fields: list[tuple[int, float, int, int, int]], n_params: int) -> MeansLayout | None:
    """Index arrays of a one-pass step (None when the records are not one)."""
    records = [PassRecord(*f) for f in fields]
    ks = [r.k for r in records]
    if sorted(ks) != list(range(n_params)) or len({r.batch for r in records}) != 1:
        return None  # a parameter missing or seen twice (accumulation), or mixed batches
    if any(r.first < 0 for r in records):
        return None  # no dots taken (track_batch_grad=False)
    order = np.empty(n_params, dtype=np.int64)
    order[ks] = np.arange(n_params)  # engine parameter k -> its position in the records
    rec = [records[i] for i in order]
    d = np.array([r.d for r in rec])
    c = np.array([r.c for r in rec])
    B = records[0].batch
    return MeansLayout(
        order=order,
        mean_scale=1.0 / (B * d * d),
        first=np.array([r.first for r in rec]),
        cross=np.array([r.cross for r in rec]),
        inv_c2=1.0 / (c * c),
    )
