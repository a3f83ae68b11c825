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

Cost: a measured step only does the reductions the statistics need (per-parameter means,
group sums, the running sums of :class:`RatioStats`). The interval, the per-group ratios
and the scalar dicts are computed lazily: :meth:`~GradientNoiseScaleMonitor.step` and
:attr:`~GradientNoiseScaleMonitor.history` hold :class:`StepScalars`, read-only mappings
that snapshot the step's state and compute the scalars on first access (``step``,
``.step_trace_sigma``, ``.step_grad_sq`` and ``.batch_size`` are free); with a recorder
attached they are computed at each measured step, to be logged.

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

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens._validation import check_float, check_int, check_option
from dynalens.dynamics.gns import group_by_layer, two_batch_estimates
from dynalens.dynamics.grad_capture import CaptureMeans
from dynalens.dynamics.per_example import PerExampleGradNorms
from dynalens.dynamics.stats import RatioStats
from dynalens.errors import InvalidParameterError
from dynalens.probe.hooks import HookSet
from dynalens.probe.schedules import as_schedule

SOURCES = ("per_example", "microbatch")
GROUPINGS = ("layer", "param", "none")
#: Unmeasured steps in a row from which the instrument removes its hooks until the next
#: measured step (re-registering costs about as much as two idle steps with hooks).
IDLE_RUN = 3


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
        self._engine: PerExampleGradNorms | None = None
        self._opt_handle: Any = None

    # ---------------------------------------------------------------- lifecycle
    def attach(self) -> GradientNoiseScaleMonitor:
        """Validate, register the hooks (model, parameters, optimizer); returns self."""
        check_option("source", self.source, SOURCES)
        check_float("beta", self.beta, min=0.0, max=1.0, min_inclusive=False)
        check_float("z", self.z, min=0.0)
        check_int("history", self.history_len, min=1)
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
        self.stats = RatioStats(len(self.group_names_) + 1, beta=self.beta)
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
        self._arm(engine)
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
        """Remove every hook the instrument added."""
        if self._opt_handle is not None:
            self._opt_handle.remove()
            self._opt_handle = None
        if self._engine is not None:
            self._engine.detach()
            self._engine = None

    def __enter__(self) -> GradientNoiseScaleMonitor:
        return self.attach() if self._engine is None else self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -------------------------------------------------------------------- steps
    def _on_optimizer_step(self) -> None:
        self.step()

    def step(self, step: int | None = None) -> StepScalars | None:
        """Close the current optimizer step (call after its backward passes, before
        ``zero_grad``); returns the step's scalars (a lazy :class:`StepScalars` mapping)
        when the step was measured."""
        engine = self._engine
        if engine is None:
            raise InvalidParameterError("the instrument is not attached; call attach().")
        s = self._next if step is None else int(step)
        out = None
        if engine.active:
            means = engine.collect_means()
            if means.n_examples > 1:
                out = self._update(s, means)
        else:
            engine.reset()
        self._next = s + 1
        self._arm(engine)
        return out

    def _arm(self, engine: PerExampleGradNorms) -> None:
        """Hooks on for a measured next step; off over a run of unmeasured ones."""
        nxt = self._next
        engine.active = self.schedule_(nxt)
        if engine.active:
            engine.hooks_on()
        elif not any(self.schedule_(nxt + k) for k in range(1, IDLE_RUN)):
            engine.hooks_off()

    def _update(self, step: int, means: CaptureMeans) -> StepScalars | None:
        # Per step: reductions only (no interval, no per-group dicts; see StepScalars).
        b_big = float(means.batch_size.mean())
        big = means.batch_grad_sq
        if self.source == "per_example":
            assert means.per_example_mean is not None
            small = means.per_example_mean
            b_small = 1.0
        else:
            if len(means.pass_sizes) < 2:
                return None  # one pass: no two batch sizes this step
            small = means.pass_grad_sq_mean
            b_small = sum(means.pass_sizes) / len(means.pass_sizes)
        if b_big <= b_small:
            two_batch_estimates(small, b_small, big, b_big)  # raises with the explanation
        # Group sums, then the two-batch estimates (McCandlish A.2-A.3) as one 2x2 product.
        sums = self._group_matrix @ np.stack((small, big), 1)  # [groups + 1, 2]
        k_tr = 1.0 / (1.0 / b_small - 1.0 / b_big)
        k_g2 = 1.0 / (b_big - b_small)
        coef = np.array([[k_tr, -b_small * k_g2], [-k_tr, b_big * k_g2]])
        est = sums @ coef
        tr, g2 = est[:, 0], est[:, 1]
        if self.sync_ranks:
            tr, g2 = _average_over_ranks(tr, g2)
        self.stats.update(tr, g2)
        out = StepScalars(self, step, tr, g2, b_big)
        self._latest = out
        self.history.append(out)
        if self.recorder is not None:
            self.recorder.log(step, **out.scalars())
        return out

    def compute(self) -> dict[str, float]:
        """The scalars of the latest measured step (empty before the first)."""
        return self._latest.scalars() if self._latest is not None else {}

    def reset(self) -> None:
        """Forget the accumulated statistics (e.g. at a learning-rate change)."""
        self.stats.reset()
        self._latest = None


class StepScalars(Mapping[str, float]):
    """The scalars of one measured step, computed on first access.

    Holds a copy of the statistics' state after the step (fixed size: 5 arrays of
    n_groups + 1 floats) and the step's own estimates. ``m["step"]``,
    ``m[prefix + ".step_trace_sigma"]``, ``.step_grad_sq`` and ``.batch_size`` are read
    without computing; any other key computes every scalar once (the Fieller interval
    and the per-group values, :meth:`RatioStats.compute`). :meth:`scalars` returns them
    as a plain dict without ``"step"``.
    """

    __slots__ = ("_b_big", "_beta", "_groups", "_keys", "_prefix", "_state", "_values",
                 "_z", "g2", "step", "tr")  # fmt: skip

    def __init__(
        self,
        monitor: GradientNoiseScaleMonitor,
        step: int,
        tr: np.ndarray,
        g2: np.ndarray,
        b_big: float,
    ) -> None:
        st = monitor.stats
        self.step = int(step)
        self.tr, self.g2 = tr, g2
        self._b_big = float(b_big)
        # RatioStats rebinds its arrays on every update (never in place): no copies.
        self._state = (st.n, st.w, st.w2, st.sx, st.sy, st.sxx, st.syy, st.sxy)
        self._beta, self._z = st.beta, monitor.z
        self._prefix, self._groups = monitor.prefix, monitor.group_names_
        self._keys = monitor._scalar_keys
        self._values: dict[str, float] | None = None

    def _cheap(self, key: str) -> float | None:
        p = self._prefix
        if key == "step":
            return float(self.step)
        if key == f"{p}.step_trace_sigma":
            return float(self.tr[-1])
        if key == f"{p}.step_grad_sq":
            return float(self.g2[-1])
        if key == f"{p}.batch_size":
            return self._b_big
        return None

    def scalars(self) -> dict[str, float]:
        """Every scalar of the step (computed once), without ``"step"``."""
        if self._values is None:
            stats = RatioStats(len(self.tr), beta=self._beta)
            stats.n, stats.w, stats.w2 = self._state[:3]
            stats.sx, stats.sy, stats.sxx, stats.syy, stats.sxy = self._state[3:]
            res = stats.compute(self._z)
            p = self._prefix
            scal = {
                f"{p}.b_simple": res["ratio"][-1],
                f"{p}.b_simple_low": res["low"][-1],
                f"{p}.b_simple_high": res["high"][-1],
                f"{p}.trace_sigma": res["x"][-1],
                f"{p}.grad_sq": res["y"][-1],
                f"{p}.step_trace_sigma": self.tr[-1],
                f"{p}.step_grad_sq": self.g2[-1],
                f"{p}.batch_size": self._b_big,
                f"{p}.b_simple_over_b": res["ratio"][-1] / self._b_big,
            }
            for i, g in enumerate(self._groups):
                scal[f"{p}.b_simple.{g}"] = res["ratio"][i]
                scal[f"{p}.trace_sigma.{g}"] = res["x"][i]
                scal[f"{p}.grad_sq.{g}"] = res["y"][i]
            self._values = {k: float(v) for k, v in scal.items()}
        return dict(self._values)

    def __getitem__(self, key: str) -> float:
        cheap = self._cheap(key)
        if cheap is not None:
            return cheap
        if self._values is None:
            self.scalars()
        assert self._values is not None
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"StepScalars(step={self.step}, {self._prefix}.step_trace_sigma={self.tr[-1]:.4g})"


def _average_over_ranks(tr: np.ndarray, g2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tr, g2
    t = torch.tensor(np.concatenate([tr, g2]), dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    k = len(tr)
    return t[:k].numpy(), t[k:].numpy()
