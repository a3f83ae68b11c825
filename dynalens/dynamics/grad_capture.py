"""What the per-example engine measured in one optimizer step: full records and the means.

:class:`GradCapture` holds everything (per-example norms per parameter, per-pass norms) for
analyses; :class:`CaptureMeans` holds only the per-parameter means the noise-scale
statistics need, as float64 arrays in the engine's parameter order, so that a live
instrument measuring every step does a handful of array operations instead of building
dictionaries of tensors (:meth:`dynalens.dynamics.per_example.PerExampleGradNorms.collect_means`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class GradCapture:
    """What one optimizer step's backward passes measured, in units of ``∇l_i``.

    Attributes:
        per_example: parameter name -> ``[N]`` ``‖∇θ l_i‖²`` for the N examples of all
            passes (concatenated in pass order), in the computation dtype (float32 for
            float32 / half models, float64 for float64 ones).
        batch_grad_sq: parameter name -> ``|G_B|²``, the squared norm of the mean
            gradient the optimizer sees (the passes weighted as the loss weighted them).
        batch_size: parameter name -> effective batch size of ``G_B``,
            ``(Σ_k c_k)² / Σ_k c_k²/B_k`` (= N for equal passes), so that
            ``E|G_B|² = |G|² + tr Σ / batch_size`` holds exactly.
        n_examples: N.
        pass_grad_sq: parameter name -> ``|G_k|²`` of each backward pass k (the mean
            gradient of that pass alone), for the two-batch (micro-batch) estimator.
        pass_sizes: examples per pass.
    """

    per_example: dict[str, torch.Tensor] = field(default_factory=dict)
    batch_grad_sq: dict[str, float] = field(default_factory=dict)
    batch_size: dict[str, float] = field(default_factory=dict)
    n_examples: int = 0
    pass_grad_sq: dict[str, list[float]] = field(default_factory=dict)
    pass_sizes: list[int] = field(default_factory=list)


@dataclass
class CaptureMeans:
    """Per-parameter means of one step, float64 arrays of shape ``[P]`` (engine order).

    Attributes:
        per_example_mean: ``(1/N) Σ_i ‖∇θ l_i‖²``; None without per-example capture.
        batch_grad_sq: ``|G_B|²``.
        batch_size: effective batch size of ``G_B`` (see :class:`GradCapture`).
        pass_grad_sq_mean: mean over the step's backward passes of ``|G_k|²``.
        pass_sizes: examples per pass. n_examples: N.
    """

    per_example_mean: np.ndarray | None
    batch_grad_sq: np.ndarray
    batch_size: np.ndarray
    pass_grad_sq_mean: np.ndarray
    pass_sizes: list[int]
    n_examples: int

    @classmethod
    def from_capture(cls, cap: GradCapture, names: Sequence[str]) -> CaptureMeans:
        """The means of a full capture, parameters in ``names`` order."""
        P = len(names)
        per_example = None
        if cap.per_example:
            per_example = row_means([cap.per_example[n] for n in names])
        passes = [cap.pass_grad_sq.get(n) or [0.0] for n in names]
        return cls(
            per_example_mean=per_example,
            batch_grad_sq=np.fromiter((cap.batch_grad_sq[n] for n in names), np.float64, P),
            batch_size=np.fromiter((cap.batch_size[n] for n in names), np.float64, P),
            pass_grad_sq_mean=np.fromiter((sum(v) / len(v) for v in passes), np.float64, P),
            pass_sizes=list(cap.pass_sizes),
            n_examples=cap.n_examples,
        )


@dataclass(frozen=True)
class MeansLayout:
    """Index arrays turning a one-pass step's records into means (engine order, P params).

    Attributes:
        order: ``[P]`` position in the records of engine parameter k.
        mean_scale: ``[P]`` factors turning a row's sum into its mean norm, ``1/(B d²)``.
        first, cross: ``[P]`` indices into the step's scalars of ``|g|²`` and of
            ``g·(earlier gradient)`` (-1: none); ``|G_B|²`` is ``(first + 2 cross) / c²``.
        inv_c2: ``[P]``, ``1/c²``.
    """

    order: np.ndarray
    mean_scale: np.ndarray
    first: np.ndarray
    cross: np.ndarray
    inv_c2: np.ndarray


@dataclass
class LazyMeans:
    """A one-pass step's :class:`CaptureMeans` before any torch work: the live instrument
    queues these and converts many steps in one go (:func:`resolve_means`), because inside
    a training step every torch call costs 10-20 µs on a CPU.

    Attributes:
        rows: P tensors ``[B]`` in record order, the per-example squared norms times ``d²``.
        scalars: 0-d gradient dots of the parameter hooks (same dtype and device as rows).
        layout: the step's :class:`MeansLayout`. n_examples: B.
    """

    rows: list[torch.Tensor]
    scalars: list[torch.Tensor]
    layout: MeansLayout
    n_examples: int


@dataclass
class MeansBlock:
    """The means of K steps, ``[K, P]`` float64 arrays (rows in the order of the steps);
    ``per_example_mean`` is None when a step has none (``source="microbatch"``)."""

    per_example_mean: np.ndarray | None
    batch_grad_sq: np.ndarray
    pass_grad_sq_mean: np.ndarray


def resolve_means(items: Sequence[CaptureMeans | LazyMeans]) -> MeansBlock:
    """The means of each step; lazy steps with the same layout share one stack and one
    conversion (a few torch calls per group of steps instead of four per step) and their
    arithmetic is done on ``[K, P]`` arrays."""
    lazy = [m for m in items if isinstance(m, LazyMeans)]
    P = len(lazy[0].layout.order) if lazy else len(items[0].batch_grad_sq)  # type: ignore[union-attr]
    K = len(items)
    pe = np.zeros((K, P))
    big = np.zeros((K, P))
    passes = np.zeros((K, P))
    has_pe = True
    groups: dict[int, list[int]] = {}
    for r, m in enumerate(items):
        if isinstance(m, LazyMeans):  # same layout: same number and length of rows
            groups.setdefault(id(m.layout), []).append(r)
        else:
            if m.per_example_mean is None:
                has_pe = False
            else:
                pe[r] = m.per_example_mean
            big[r], passes[r] = m.batch_grad_sq, m.pass_grad_sq_mean
    for rs in groups.values():
        steps: list[LazyMeans] = [items[r] for r in rs]  # type: ignore[misc]
        lay, n, S = steps[0].layout, len(rs), len(steps[0].scalars)
        rows = [t for m in steps for t in m.rows]
        scalars = [t for m in steps for t in m.scalars]
        try:  # one device: stack (promoting mixed float dtypes exactly) and convert once
            sums = torch.stack(rows).sum(1, dtype=torch.float64)
            vals = torch.cat((sums, torch.stack(scalars).double())).cpu().numpy()
        except RuntimeError:  # tensors on several devices: one at a time
            vals = np.array([float(t.double().sum()) for t in rows] + [float(t) for t in scalars])
        sums_k = vals[: n * P].reshape(n, P)[:, lay.order]
        scal_k = vals[n * P :].reshape(n, S)
        cross = np.where(lay.cross >= 0, scal_k[:, lay.cross], 0.0)
        g2 = (scal_k[:, lay.first] + 2.0 * cross) * lay.inv_c2
        pe[rs], big[rs], passes[rs] = sums_k * lay.mean_scale, g2, g2
    return MeansBlock(pe if has_pe else None, big, passes)


def row_means(rows: Sequence[torch.Tensor]) -> np.ndarray:
    """Mean of each 1-D row as float64, one conversion when rows share dtype, device, length."""
    if len({(r.dtype, r.device, r.shape) for r in rows}) == 1:
        return torch.stack(list(rows)).mean(1).double().cpu().numpy()
    return np.array([float(r.double().mean()) if r.numel() else 0.0 for r in rows])


def to_floats(scalars: Sequence[torch.Tensor]) -> list[float]:
    """0-d tensors to Python floats with one conversion when they share a dtype and device."""
    if not scalars:
        return []
    if len({(t.dtype, t.device) for t in scalars}) == 1:
        return torch.stack(list(scalars)).double().tolist()
    return [float(t) for t in scalars]
