"""Gradient noise scale from DDP for free: rank-local vs all-reduced gradients.

A DDP communication hook sees each bucket of the rank-local gradient before the
all-reduce and the averaged gradient after it. With ``W`` ranks of ``b`` examples each,
``|G_local|²`` (averaged over ranks) is a small batch of ``b`` and ``|G_global|²`` a big
batch of ``W b``, so McCandlish et al. (2018, App. A.1, eqs. A.2-A.3) give unbiased
``tr Σ`` and ``|G|²`` per step without any extra backward pass (the design of Crowson's
k-diffusion ``DDPGradientStatsHook``). Statistics are averaged separately
(:class:`~dynalens.dynamics.stats.RatioStats`) and then divided. Per parameter values
are available from the bucket views. Cost per step: a squared norm of each bucket before
and after the all-reduce, and one all-reduce of 2 floats per parameter at :meth:`step`.

With gradient accumulation under ``no_sync``, the hook fires on the last micro-batch with
the accumulated local gradient: then ``b`` counts the examples of all micro-batches.

Example:
    >>> ddp = DistributedDataParallel(model)
    >>> gns = DDPNoiseScale(ddp, batch_size=32, recorder=rec).register()
    >>> ... loss.backward(); gns.step(step); opt.step()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dynalens._validation import check_float, check_int
from dynalens.dynamics.gns import two_batch_estimates
from dynalens.dynamics.stats import RatioStats
from dynalens.errors import InvalidParameterError
from dynalens.probe.schedules import as_schedule


class DDPNoiseScale:
    """DDP communication hook that measures the two-batch noise scale.

    Args:
        ddp_model: a ``torch.nn.parallel.DistributedDataParallel`` model (no other comm
            hook registered).
        batch_size: examples per rank per optimizer step.
        loss_scale: factor between the local gradient and the local mean gradient of
            ``l_i`` (e.g. 1/accumulation steps with per-micro-batch mean losses).
        every, beta, recorder, prefix, z: as for the live instrument.
    """

    def __init__(
        self,
        ddp_model: Any,
        *,
        batch_size: int,
        loss_scale: float = 1.0,
        every: Any = 1,
        beta: float = 0.99,
        recorder: Any = None,
        prefix: str = "gns_ddp",
        z: float = 1.96,
    ) -> None:
        self.ddp_model = ddp_model
        self.batch_size = batch_size
        self.loss_scale = loss_scale
        self.every = every
        self.beta = beta
        self.recorder = recorder
        self.prefix = prefix
        self.z = z

    def register(self) -> DDPNoiseScale:
        """Validate and register the communication hook; returns self."""
        if not (dist.is_available() and dist.is_initialized()):
            raise InvalidParameterError(
                "DDPNoiseScale needs an initialised process group; call "
                "torch.distributed.init_process_group first."
            )
        if not hasattr(self.ddp_model, "register_comm_hook"):
            raise InvalidParameterError(
                f"ddp_model must be a DistributedDataParallel; got {type(self.ddp_model).__name__}."
            )
        check_int("batch_size", self.batch_size, min=1)
        check_float("loss_scale", self.loss_scale, min=0.0, min_inclusive=False)
        check_float("beta", self.beta, min=0.0, max=1.0, min_inclusive=False)
        self.schedule_ = as_schedule(self.every)
        self.world_ = dist.get_world_size()
        if self.world_ < 2:
            raise InvalidParameterError(
                "the DDP noise scale needs at least 2 ranks (a small and a big batch); "
                f"world size is {self.world_}. Use GradientNoiseScaleMonitor instead."
            )
        names = {id(p): n for n, p in self.ddp_model.module.named_parameters()}
        self.param_names_ = [n for n in names.values()]
        self._index = {pid: i for i, pid in enumerate(names)}
        self.stats = RatioStats(len(self.param_names_) + 1, beta=self.beta)
        self._local = torch.zeros(len(self.param_names_), dtype=torch.float64)
        self._global = torch.zeros(len(self.param_names_), dtype=torch.float64)
        self._fired = False
        self._next = 0
        self.active = self.schedule_(0)
        self._latest: dict[str, float] = {}
        self.ddp_model.register_comm_hook(state=None, hook=self._hook())
        return self

    def _hook(self) -> Callable[[Any, Any], torch.futures.Future]:
        def hook(_state, bucket):  # no annotations: DDP checks them at registration
            buf = bucket.buffer()
            active = self.active
            if active:
                idx = [self._index[id(p)] for p in bucket.parameters()]
                for i, g in zip(idx, bucket.gradients()):
                    self._local[i] = g.detach().double().pow(2).sum()
            fut = dist.all_reduce(buf.div_(self.world_), async_op=True).get_future()

            def done(f: torch.futures.Future) -> torch.Tensor:
                out = f.value()[0]
                if active:
                    for i, g in zip(idx, bucket.gradients()):
                        self._global[i] = g.detach().double().pow(2).sum()
                    self._fired = True
                return out

            return fut.then(done)

        return hook

    def step(self, step: int | None = None) -> dict[str, float] | None:
        """After ``backward`` (DDP has all-reduced), before ``zero_grad``: update and log."""
        s = self._next if step is None else int(step)
        out = None
        if self.active and self._fired:
            local = self._local.clone()
            dist.all_reduce(local)  # mean over ranks of |G_local|²
            local /= self.world_
            c2 = self.loss_scale**2
            small = local.numpy() / c2
            big = self._global.numpy() / c2
            b = float(self.batch_size)
            tr, g2 = two_batch_estimates(
                np.append(small, small.sum()), b, np.append(big, big.sum()), b * self.world_
            )
            self.stats.update(tr, g2)
            res = self.stats.compute(self.z)
            p = self.prefix
            out = {
                f"{p}.b_simple": float(res["ratio"][-1]),
                f"{p}.b_simple_low": float(res["low"][-1]),
                f"{p}.b_simple_high": float(res["high"][-1]),
                f"{p}.trace_sigma": float(res["x"][-1]),
                f"{p}.grad_sq": float(res["y"][-1]),
                f"{p}.step_trace_sigma": float(tr[-1]),
                f"{p}.step_grad_sq": float(g2[-1]),
            }
            self._latest = out
            if self.recorder is not None:
                self.recorder.log(s, **out)
        self._fired = False
        self._local.zero_()
        self._global.zero_()
        self._next = s + 1
        self.active = self.schedule_(self._next)
        return out

    def compute(self) -> dict[str, float]:
        """Scalars of the latest measured step."""
        return dict(self._latest)
