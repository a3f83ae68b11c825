"""Live gradient noise scale: an instrument attached to an existing training loop.

At scheduled optimizer steps the instrument measures, for the examples of all backward
passes since the previous step (gradient accumulation included),

* ``source="per_example"``: per-example ``‖g_i‖²`` (hooks, :mod:`.per_example`) and the
  batch gradient ``|G_B|²`` -- B_small = 1, B_big = B;
* ``source="microbatch"``: only the gradient of each backward pass ``|G_k|²`` and of their
  combination ``|G_B|²`` (no per-example hooks; "free" when accumulating) -- B_small =
  examples per pass, B_big = all of them,

turns them into the unbiased per-step ``tr Σ`` and ``|G|²`` (McCandlish et al. 2018,
App. A.1, eqs. A.2-A.3; see :mod:`dynalens.dynamics.gns`), and averages those separately
in a :class:`~dynalens.dynamics.stats.RatioStats` (EMA with ``beta``, or a plain mean) before
dividing. Gradients are read from parameter hooks, so the values are from before gradient
clipping. Per layer values are kept too.

Scalars (floats) per measured step, through ``recorder.log(step, **scalars)`` and in
:attr:`GradientNoiseScaleMonitor.history`: ``{prefix}.b_simple``, ``.b_simple_low``,
``.b_simple_high`` (Fieller interval), ``.trace_sigma``, ``.grad_sq``, ``.step_trace_sigma``,
``.step_grad_sq`` (this step's unbiased estimates), ``.batch_size``, ``.b_simple_over_b``
(the norm-test statistic of Byrd et al. 2012: a batch of size B passes with θ² ≥ this), and
per group ``{prefix}.b_simple.{group}``, ``.trace_sigma.{group}``, ``.grad_sq.{group}``.

Cost: a measured step only keeps references to what its hooks computed (per-example norm
rows, gradient dots); every ``flush_every`` measured steps (or ``max_delay`` seconds, or
when a result is read) the pending steps are converted together (one stack and one
conversion) and the running sums of :class:`RatioStats` updated for all of them in one
product (:meth:`RatioStats.update_many`). The interval, the per-group ratios and the scalar
dicts are computed lazily: :meth:`~GradientNoiseScaleMonitor.step` and
:attr:`~GradientNoiseScaleMonitor.history` hold :class:`StepScalars`, read-only mappings
that report the statistics as they were after their step and compute the scalars on first
access (``step`` and ``.batch_size`` are free, ``.step_trace_sigma`` and ``.step_grad_sq``
cheap); with a recorder attached they are computed for each block, to be logged.

Example:
    >>> gns = GradientNoiseScaleMonitor(model, optimizer=opt, every=10, recorder=rec)
    >>> with gns:                        # hooks the model and opt.step()
    ...     for x, y in loader:
    ...         opt.zero_grad()
    ...         loss_fn(model(x), y).mean().backward()
    ...         opt.step()               # the instrument measures just before the update
    >>> gns.compute()["gns.b_simple"]
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens._validation import check_float, check_int, check_option
from dynalens.dynamics.gns import group_by_layer, two_batch_estimates
from dynalens.dynamics.grad_capture import CaptureMeans, LazyMeans, resolve_means
from dynalens.dynamics.per_example import PerExampleGradNorms
from dynalens.dynamics.stats import RatioStats
from dynalens.dynamics.step_scalars import StepBlock, StepScalars
from dynalens.errors import InvalidParameterError, exit_context
from dynalens.probe.hooks import HookSet
from dynalens.probe.schedules import as_schedule

SOURCES = ("per_example", "microbatch")
GROUPINGS = ("layer", "param", "none")
#: Unmeasured steps in a row from which the instrument removes its hooks until the next
#: measured step (re-registering costs about as much as two idle steps with hooks).
IDLE_RUN = 3
#: Steps the schedule is searched ahead for the next measured one while the hooks are off.
LOOKAHEAD = 256


class GradientNoiseScaleMonitor:
    """Measure ``B_simple`` live; see the module docstring.

    Args:
        model: the trained model.
        optimizer: when given, the instrument measures from an ``optimizer.step`` pre-hook;
            otherwise call :meth:`step` after the backward pass(es) of each step.
        reduction: ``"mean"`` or ``"sum"``: how the backpropagated loss reduces the
            per-example losses ``l_i`` within one backward pass.
        loss_scale: extra factor on the backpropagated loss (1/accumulation steps, AMP
            scale), float or callable.
        every: schedule of measured steps (int, list, Schedule or callable).
        beta: EMA decay of the statistics per measured step (1.0: mean since reset).
        source: ``"per_example"`` or ``"microbatch"``.
        batch_size: examples per backward pass; needed for ``source="microbatch"``.
        groups: ``"layer"``, ``"param"``, ``"none"`` or ``{group: [param names]}``.
        recorder: anything with ``log(step, **scalars)`` (the dynalens Recorder).
        prefix: scalar name prefix.
        policy, units: per-example rule policy (see :class:`PerExampleGradNorms`).
        hooks: a HookSet to share (e.g. the Recorder's).
        sync_ranks: average the per-step estimates over torch.distributed ranks.
        start_step: number of the first optimizer step.
        z: interval half-width in standard errors.
        history: how many measured steps :attr:`history` keeps.
        flush_every: measured steps turned into statistics together (see below); 1
            computes every step at once.
        max_delay: seconds after which pending steps are computed at the next step.

    Measured steps are queued and turned into statistics in blocks (one conversion and
    one vectorised update for the block: on a CPU each torch call inside a training step
    costs 10-20 µs, and the statistics of one step ~0.2 ms): when ``flush_every`` steps
    are pending or the oldest is ``max_delay`` seconds old, and whenever anything reads
    them -- a step's :class:`StepScalars`, :meth:`compute`, :attr:`stats` --, at
    :meth:`flush`, :meth:`reset` and :meth:`detach`, and when the recorder flushes or
    closes (a dynalens Recorder calls :meth:`flush` first). Values do not depend on the
    blocks (up to rounding). With ``sync_ranks=True`` every step is computed at once (one
    collective per step on every rank).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        reduction: str = "mean",
        loss_scale: float | Callable[[], float] = 1.0,
        every: Any = 1,
        beta: float = 0.99,
        source: str = "per_example",
        batch_size: int | None = None,
        groups: Any = "layer",
        recorder: Any = None,
        prefix: str = "gns",
        policy: str = "raise",
        units: tuple[str, ...] = (),
        hooks: HookSet | None = None,
        sync_ranks: bool = False,
        start_step: int = 0,
        z: float = 1.96,
        history: int = 1000,
        flush_every: int = 64,
        max_delay: float = 1.0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.reduction = reduction
        self.loss_scale = loss_scale
        self.every = every
        self.beta = beta
        self.source = source
        self.batch_size = batch_size
        self.groups = groups
        self.recorder = recorder
        self.prefix = prefix
        self.policy = policy
        self.units = units
        self.hooks = hooks
        self.sync_ranks = sync_ranks
        self.start_step = start_step
        self.z = z
        self.history_len = history
        self.flush_every = flush_every
        self.max_delay = max_delay
        self._engine: PerExampleGradNorms | None = None
        self._queue: list[tuple[StepScalars, CaptureMeans | LazyMeans, float]] = []
        self._queued_at = 0.0
        self._parked = False  # hooks removed until the next measured step
        self._wake_at = 0  # while parked: the next measured step (or where to look again)
        self._flush_handle: Any = None
        self._opt_handle: Any = None

    # ---------------------------------------------------------------- lifecycle
    def attach(self) -> GradientNoiseScaleMonitor:
        """Validate, register the hooks (model, parameters, optimizer); returns self."""
        check_option("source", self.source, SOURCES)
        check_float("beta", self.beta, min=0.0, max=1.0, min_inclusive=False)
        check_float("z", self.z, min=0.0)
        check_int("history", self.history_len, min=1)
        check_int("flush_every", self.flush_every, min=1)
        check_float("max_delay", self.max_delay, min=0.0)
        self.schedule_ = as_schedule(self.every)
        if self.recorder is not None and not callable(getattr(self.recorder, "log", None)):
            raise InvalidParameterError(
                f"recorder must have a log(step, **scalars) method; got "
                f"{type(self.recorder).__name__}. Pass a dynalens Recorder or None."
            )
        if self._engine is not None:
            raise InvalidParameterError("already attached; call detach() first.")
        engine = PerExampleGradNorms(
            self.model,
            reduction=self.reduction,
            loss_scale=self.loss_scale,
            policy=self.policy,
            hooks=self.hooks,
            units=self.units,
            capture_examples=self.source == "per_example",
            batch_size=self.batch_size,
        )
        engine.attach()
        self._engine = engine
        self.group_names_, self._index = self._groups(engine.param_names_)
        self._stats = RatioStats(len(self.group_names_) + 1, beta=self.beta)
        M = np.zeros((len(self.group_names_) + 1, len(engine.param_names_)))
        for i, ix in enumerate(self._index):
            M[i, ix] = 1.0
        M[-1] = 1.0
        self._group_matrix = M  # group sums (and the total) as one product per step
        p = self.prefix
        self._scalar_keys = (
            "step",
            *(f"{p}.{k}" for k in ("b_simple", "b_simple_low", "b_simple_high", "trace_sigma",
                                   "grad_sq", "step_trace_sigma", "step_grad_sq", "batch_size",
                                   "b_simple_over_b")),
            *(f"{p}.{k}.{g}" for g in self.group_names_
              for k in ("b_simple", "trace_sigma", "grad_sq")),
        )  # fmt: skip
        self.history: deque[StepScalars] = deque(maxlen=self.history_len)
        self._latest: StepScalars | None = None
        self._next = self.start_step
        self._parked = False
        self._arm(engine)
        on_flush = getattr(self.recorder, "on_flush", None)
        if callable(on_flush):  # the recorder computes pending steps before it writes
            self._flush_handle = on_flush(self.flush)
        if self.optimizer is not None:
            self._opt_handle = self.optimizer.register_step_pre_hook(
                lambda opt, args, kwargs: self._on_optimizer_step()
            )
        return self

    def _groups(self, names: list[str]) -> tuple[list[str], list[list[int]]]:
        where = {n: i for i, n in enumerate(names)}
        if isinstance(self.groups, dict):
            bad = [p for ps in self.groups.values() for p in ps if p not in where]
            if bad:
                raise InvalidParameterError(
                    f"groups name parameters that are not measured: {bad[:5]}. Measured: "
                    f"{names[:8]}{' ...' if len(names) > 8 else ''}"
                )
            spec = {g: list(ps) for g, ps in self.groups.items()}
        else:
            check_option("groups", self.groups, GROUPINGS)
            if self.groups == "none":
                spec = {}
            elif self.groups == "param":
                spec = {n: [n] for n in names}
            else:
                spec = group_by_layer(names)
        return list(spec), [[where[p] for p in ps] for ps in spec.values()]

    def detach(self) -> None:
        """Compute the pending steps and remove every hook the instrument added (also
        when computing them fails)."""
        try:
            self.flush()
        finally:
            self._wake_at = 0
            if self._flush_handle is not None:
                self._flush_handle.remove()
                self._flush_handle = None
            if self._opt_handle is not None:
                self._opt_handle.remove()
                self._opt_handle = None
            if self._engine is not None:
                self._engine.detach()
                self._engine = None

    @property
    def stats(self) -> RatioStats:
        """The running statistics (pending steps computed first)."""
        self.flush()
        return self._stats

    def __enter__(self) -> GradientNoiseScaleMonitor:
        return self.attach() if self._engine is None else self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        exit_context(self.detach, exc)  # an error raised inside the block comes out on top

    # -------------------------------------------------------------------- steps
    def _on_optimizer_step(self) -> None:
        self.step()

    def step(self, step: int | None = None) -> StepScalars | None:
        """Close the current optimizer step (call after its backward passes, before
        ``zero_grad``); returns the step's scalars (a lazy :class:`StepScalars` mapping)
        when the step was measured."""
        s = self._next if step is None else int(step)
        if s + 1 < self._wake_at and s == self._next:  # parked, next step not measured
            self._next = s + 1
            return None
        engine = self._engine
        if engine is None:
            raise InvalidParameterError("the instrument is not attached; call attach().")
        out = None
        if engine.active:
            means = engine.collect_means(lazy=True)
            if means.n_examples > 1:
                out = self._enqueue(s, means)
        # (an inactive engine recorded nothing: its hooks return at once)
        self._next = s + 1
        self._arm(engine)
        return out

    def _arm(self, engine: PerExampleGradNorms) -> None:
        """Hooks on for a measured next step; off over a run of unmeasured ones."""
        nxt = self._next
        active = engine.active = self.schedule_(nxt)
        if active:
            engine.hooks_on()
        elif not self._parked and not any(self.schedule_(nxt + k) for k in range(1, IDLE_RUN)):
            engine.hooks_off()
        self._parked = not active and not engine.hooks_registered
        self._wake_at = 0
        if self._parked:  # the next measured step (looked up once): step() idles till then
            self._wake_at = next(
                (m for m in range(nxt + 1, nxt + LOOKAHEAD) if self.schedule_(m)), nxt + LOOKAHEAD
            )

    def _enqueue(self, step: int, means: CaptureMeans | LazyMeans) -> StepScalars | None:
        if isinstance(means, LazyMeans):  # one pass: B_small = 1, B_big = B
            b_small, b_big = 1.0, float(means.n_examples)
        else:
            b_big = float(means.batch_size.mean())
            if self.source == "per_example":
                b_small = 1.0
            else:
                if len(means.pass_sizes) < 2:
                    return None  # one pass: no two batch sizes this step
                b_small = sum(means.pass_sizes) / len(means.pass_sizes)
        if b_big <= b_small:
            two_batch_estimates(np.zeros(1), b_small, np.zeros(1), b_big)  # raises, explained
        out = StepScalars(self, step, b_big)
        if not self._queue:
            self._queued_at = time.monotonic()
        self._queue.append((out, means, b_small))
        self._latest = out
        self.history.append(out)
        if (
            len(self._queue) >= self.flush_every
            or self.sync_ranks
            or time.monotonic() - self._queued_at >= self.max_delay
        ):
            self.flush()
        return out

    def flush(self) -> None:
        """Turn the pending measured steps into statistics (and log them to the recorder)."""
        if not self._queue:
            return
        queue, self._queue = self._queue, []
        block = resolve_means([m for _, m, _ in queue])
        if self.source == "per_example":
            assert block.per_example_mean is not None
            small = block.per_example_mean
        else:
            small = block.pass_grad_sq_mean
        big = block.batch_grad_sq
        b_small = np.array([b for _, _, b in queue])[:, None]
        b_big = np.array([out._b_big for out, _, _ in queue])
        # Group sums (and the total), then the two-batch estimates (McCandlish A.2-A.3).
        s_small = small @ self._group_matrix.T  # [K, groups + 1]
        s_big = big @ self._group_matrix.T
        bb = b_big[:, None]
        tr = (s_small - s_big) / (1.0 / b_small - 1.0 / bb)
        g2 = (bb * s_big - b_small * s_small) / (bb - b_small)
        if self.sync_ranks:
            tr, g2 = _average_over_ranks(tr, g2)
        states = self._stats.update_many(tr, g2)
        done = StepBlock(
            [out.step for out, _, _ in queue], tr, g2, b_big, states,
            z=self.z, prefix=self.prefix, groups=self.group_names_,
        )  # fmt: skip
        for row, (out, _, _) in enumerate(queue):
            out.bind(done, row)
        if self.recorder is not None:
            for out, _, _ in queue:
                self.recorder.log(out.step, **out.scalars())

    def compute(self) -> dict[str, float]:
        """The scalars of the latest measured step (empty before the first)."""
        return self._latest.scalars() if self._latest is not None else {}

    def reset(self) -> None:
        """Forget the accumulated statistics (e.g. at a learning-rate change); steps
        measured before are computed first."""
        self.flush()
        self._stats.reset()
        self._latest = None


def _average_over_ranks(tr: np.ndarray, g2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ``[K, groups + 1]`` estimates over the torch.distributed ranks (one call)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tr, g2
    t = torch.tensor(np.stack([tr, g2]), dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    out = t.numpy()
    return out[0], out[1]
