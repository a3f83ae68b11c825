"""The Recorder: attach to an existing training loop, record sites into a store.

>>> rec = dynalens.Recorder(model, "runs/exp1.zarr", sites="layers.*", every=10)
>>> for step, (x, y) in enumerate(loader):
...     loss = loss_fn(model(x), y)
...     opt.zero_grad(); loss.backward(); opt.step()
...     rec.step(step, loss=loss.item())
>>> rec.close()

At a recorded step ``s`` the Recorder keeps, for every site, the output activations of
the batch trained on at step ``s`` (the parameters before update ``s``; the first forward
with gradients enabled after the previous ``step()`` -- evaluation passes under
``torch.no_grad()`` are skipped), d loss / d
activations (a tensor hook registered from the forward hook), optionally the module's
inputs and its parameters' gradients; with ``probe=(X, Y)`` it also runs the model in
eval / no-grad mode on the fixed probe set with the same parameters. Writing happens on a
background thread; see :mod:`dynalens.probe.layout` for what a killed run keeps.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

import dynalens
from dynalens._validation import check_int, check_option
from dynalens.errors import (
    HookNotFiredError,
    InvalidParameterError,
    ShapeMismatchError,
    exit_context,
    note_cleanup_error,
)
from dynalens.probe import distributed as dist_util
from dynalens.probe import layout, shutdown
from dynalens.probe.background import BackgroundWriter
from dynalens.probe.capture import StepBuffer, Subsampler, batch_dim, site_axes, snapshot
from dynalens.probe.checkpoints import checkpoint_arrays
from dynalens.probe.dtypes import STORAGE_DTYPES, torch_dtype
from dynalens.probe.hooks import HookSet, first_tensor
from dynalens.probe.names import check_path_name
from dynalens.probe.schedules import Schedule, as_schedule
from dynalens.probe.sites import Site, SiteSpec, resolve_sites
from dynalens.probe.step_checks import (
    check_not_meta,
    check_sample_ids,
    drop_ragged,
    missing_gradient_message,
    ragged_message,
)
from dynalens.probe.store import Store, open_store

CAPTURE_KINDS = ("activations", "inputs", "gradients", "param_grads")
#: step numbers are stored as int64
MAX_STEP = 2**63 - 1


class Recorder:
    """Record activations and gradients of chosen sites at chosen steps.

    Args:
        model: any ``nn.Module`` (transformer-lens hook points are sites too).
        path: the store directory (created when missing; a new run is added to an
            existing store).
        sites: module name, glob, module type, or a list of them.
        every: the schedule: an int (every N steps), a list of steps, a
            :class:`~dynalens.probe.schedules.Schedule` (e.g. ``LogSpaced``), or a
            callable ``step -> bool``.
        capture: what to record from the live training batch: any of
            ``"activations"``, ``"inputs"``, ``"gradients"``, ``"param_grads"``.
        probe: a fixed ``(X, Y)`` (or ``X``): at recorded steps the model also runs in
            eval / no-grad mode on X; X and Y are stored once.
        probe_batch_size: batch size of the probe forward passes.
        rows: keep a fixed random subset of this many batch rows of the live batch.
        positions: keep a fixed random subset of this many positions of sequence sites.
        dtype: storage dtype of floating tensors: float32, float16, bfloat16, float64.
        axes: ``{site: ("batch", "pos", "feature")}`` to override inferred axes.
        run: run name; default the next free ``run-NNN``.
        config: JSON-serialisable training config stored with the run.
        compression: ``None`` or ``"zstd"`` (level 1, activations only).
        durability: ``"none"`` (survives a killed process) or ``"commit"`` (fsync each
            record: survives power loss, slower).
        max_pending: records that may wait for the writer before ``step`` blocks.
        start_step: the step number of the first training step.
        seed: seed of the row / position subsets.
        checkpoints: a schedule (as ``every``) of steps at which the model's
            ``state_dict()`` is stored: at step ``s``, the parameters and buffers the
            training batch of ``s`` saw (before update ``s``), exactly, in their own
            dtype; read back with ``store.checkpoint(s)`` / ``store.load_checkpoint``.
            When the step after the last one is on it, ``close()`` stores the final
            parameters as that step.
    """

    def __init__(
        self,
        model: nn.Module,
        path: str | os.PathLike[str],
        *,
        sites: SiteSpec,
        every: int | Iterable[int] | Schedule | Callable[[int], bool] = 1,
        capture: Iterable[str] = ("activations", "gradients"),
        probe: Any = None,
        probe_batch_size: int = 1024,
        rows: int | None = None,
        positions: int | None = None,
        dtype: str = "float32",
        axes: dict[str, tuple[str, ...]] | None = None,
        run: str | None = None,
        config: dict[str, Any] | None = None,
        compression: str | None = None,
        durability: str = "none",
        max_pending: int = 4,
        start_step: int = 0,
        seed: int = 0,
        checkpoints: int | Iterable[int] | Schedule | Callable[[int], bool] | None = None,
    ) -> None:
        self.model = model
        self.site_patterns: dict[str, list[str]] = {}  # glob / type -> sites it matched
        self.sites: dict[str, Site] = resolve_sites(model, sites, self.site_patterns)
        check_not_meta(model)
        for name in self.sites:
            check_path_name("site", name)
        if run is not None:
            check_path_name("run name", run)
        max_pending = check_int("max_pending", max_pending, min=1)
        self.schedule = as_schedule(every)
        self._ckpt_schedule = None if checkpoints is None else as_schedule(checkpoints)
        for key in model.state_dict() if checkpoints is not None else ():
            check_path_name("state_dict key", key)
        capture = (capture,) if isinstance(capture, str) else capture
        self.capture = tuple(
            dict.fromkeys(check_option("capture", c, CAPTURE_KINDS) for c in capture)
        )
        self.dtype = torch_dtype(dtype)
        self._logical = check_option("dtype", dtype, STORAGE_DTYPES)
        check_option("compression", compression or "none", ("none", "zstd"))
        check_option("durability", durability, ("none", "commit"))
        self.probe_batch_size = check_int("probe_batch_size", probe_batch_size, min=1)
        self._sub = Subsampler(
            rows=None if rows is None else check_int("rows", rows, min=1),
            positions=None if positions is None else check_int("positions", positions, min=1),
            seed=check_int("seed", seed),
        )
        self._axes = {k: tuple(v) for k, v in (axes or {}).items()}
        unknown = set(self._axes) - set(self.sites)
        if unknown:
            raise InvalidParameterError(
                f"axes= names sites that are not recorded: {sorted(unknown)}; recorded "
                f"sites: {list(self.sites)}."
            )
        self._probe_x, self._probe_y = self._split_probe(probe)
        if not self.capture and self._probe_x is None:
            raise InvalidParameterError(
                "nothing to record: capture=() and no probe set. Pass capture=('activations',"
                " 'gradients') and/or probe=(X, Y)."
            )
        self.rank, self.world_size = dist_util.rank_and_world()
        self.path = os.fspath(path)
        meta = self._run_meta(config, compression, durability)
        self._writer, self.run = dist_util.make_writer(
            self.path, run, self.rank, meta, compression=compression, durability=durability
        )
        self._bg = BackgroundWriter(idle=self._writer.flush_scalars, max_pending=max_pending)
        if self._probe_x is not None and self.rank == 0:
            self._bg.submit(self._writer.write_probe, *self._probe_numpy())
        self._buf = StepBuffer()
        self._shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._mode = "train"
        self._checked = False
        self._closed = False
        self._flush_callbacks: OrderedDict[int, Callable[[], None]] = OrderedDict()
        self._warned_calls: set[str] = set()
        self._warned_ragged: set[str] = set()
        self._first_record_done = False
        self._hooks = HookSet()
        try:
            for site in self.sites.values():
                self._hooks.on_forward(site.module, self._forward_hook(site), with_kwargs=True)
                if "gradients" in self.capture:
                    self._hooks.on_output_grad(
                        site.module, self._grad_hook(site), when=self._grad_wanted(site)
                    )
            self._next = check_int("start_step", start_step, min=0, max=MAX_STEP)
            self._arm(self._next)
        except BaseException:
            self._abort()
            raise
        self._failure: BaseException | None = None
        shutdown.register(self)  # SIGTERM and interpreter exit commit what step() accepted

    # -- set-up helpers -------------------------------------------------------------
    @staticmethod
    def _split_probe(probe: Any) -> tuple[Any, Any]:
        if probe is None:
            return None, None
        if isinstance(probe, (tuple, list)) and len(probe) == 2:
            x, y = probe
        else:
            x, y = probe, None
        x = torch.as_tensor(x) if not isinstance(x, (torch.Tensor, dict)) else x
        if y is not None:
            y = torch.as_tensor(y)
            n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
            if len(y) != n:
                raise InvalidParameterError(
                    f"probe X has {n} rows but Y has {len(y)}; pass matching (X, Y)."
                )
        return x, y

    def _probe_numpy(self) -> tuple[np.ndarray, np.ndarray | None]:
        x = self._probe_x
        if isinstance(x, dict):
            x = next(iter(x.values()))
        xs = x.detach().cpu()
        xs = xs.float() if xs.dtype == torch.bfloat16 else xs
        y = None if self._probe_y is None else self._probe_y.detach().cpu().numpy()
        return xs.numpy(), y

    def _run_meta(self, config: Any, compression: str | None, durability: str) -> dict[str, Any]:
        import zarr

        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "sites": {name: s.describe() for name, s in self.sites.items()},
            "site_patterns": self.site_patterns,
            "schedule": self.schedule.describe(),
            "capture": list(self.capture),
            "dtype": self._logical,
            "rows": self._sub.rows,
            "positions": self._sub.positions,
            "compression": compression,
            "durability": durability,
            "world_size": self.world_size,
            "checkpoints": None
            if self._ckpt_schedule is None
            else {
                "schedule": self._ckpt_schedule.describe(),
                "keys": list(self.model.state_dict()),
            },
            "model": {"class": type(self.model).__name__, "parameters": int(n_params)},
            "config": dist_util.json_safe(config or {}),
            "versions": {
                "dynalens": dynalens.__version__,
                "torch": torch.__version__,
                "zarr": zarr.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
        }

    # -- hooks (hot path: no validation beyond cheap checks) ----------------------------
    def _guarded(self, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn`` as a hook that, when it raises, removes every hook of this Recorder and
        stops it (what was committed stays) before the error reaches the user's loop."""

        def hook(*args: Any) -> None:
            try:
                fn(*args)
            except BaseException as exc:
                self._failure = exc
                try:
                    self._abort()
                except BaseException as cleanup:
                    note_cleanup_error(exc, cleanup)
                raise

        return hook

    def _forward_hook(self, site: Site) -> Callable[..., None]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], output: Any, kwargs: dict[str, Any]
        ) -> None:
            if not self._armed:
                return
            out = first_tensor(output)
            if out is None:
                return
            buf = self._buf
            if self._mode == "probe":
                self._probe_parts.setdefault(site.name, []).append(snapshot(out, self.dtype))
                buf.fired.add(site.name)
                return
            if not self.capture or not torch.is_grad_enabled():
                return  # probe-only, or an evaluation pass (no_grad): not the training batch
            if site.name in buf.fired:
                buf.extra_calls[site.name] = buf.extra_calls.get(site.name, 0) + 1
                return
            buf.fired.add(site.name)
            axes = site_axes(site, out, self._axes)
            rows = int(out.shape[batch_dim(axes, out.ndim)]) if out.ndim else None
            if buf.rows is None:
                buf.rows = rows
            if rows is not None and self._sub.rows is not None and rows < self._sub.rows:
                buf.ragged[site.name] = rows  # a short (last) batch: not recorded this step
                return
            if out._base is not None:
                buf.views.add(site.name)
            if "activations" in self.capture:
                t = snapshot(self._sub.apply(out.detach(), axes), self.dtype)
                buf.put(layout.array_path(layout.ACTIVATIONS, site.name), t, site, self._logical)
            if "inputs" in self.capture:
                inp = first_tensor(args)
                if inp is None:  # called with keyword arguments only
                    inp = first_tensor(list(kwargs.values()))
                if inp is not None:
                    in_axes = axes if inp.ndim == out.ndim else ("batch",) + ("",) * (inp.ndim - 1)
                    t = snapshot(self._sub.apply(inp.detach(), in_axes), self.dtype)
                    buf.put(layout.array_path(layout.INPUTS, site.name), t, site, self._logical)
            if "gradients" in self.capture and out.requires_grad:
                buf.grads_pending.add(site.name)

        return self._guarded(hook)

    def _grad_wanted(self, site: Site) -> Callable[[], bool]:
        def wanted() -> bool:
            if not self._armed or self._mode != "train":
                return False
            if site.name not in self._buf.grads_pending or site.name in self._grad_registered:
                return False
            self._grad_registered.add(site.name)  # first call of the step only
            return True

        return wanted

    def _grad_hook(self, site: Site) -> Callable[[nn.Module, torch.Tensor], None]:
        def hook(module: nn.Module, grad: torch.Tensor) -> None:
            axes = site.axes or ()
            t = snapshot(self._sub.apply(grad.detach(), axes), self.dtype)
            self._buf.put(layout.array_path(layout.GRADIENTS, site.name), t, site, self._logical)

        return self._guarded(hook)

    # -- the step protocol ---------------------------------------------------------------
    def _arm(self, step: int) -> None:
        """Prepare to record ``step`` if it is scheduled (runs the probe set now, with
        the parameters the training batch of ``step`` will see)."""
        self._armed = self.schedule(step)
        self._armed_step = step
        self._buf.clear()
        self._grad_registered: set[str] = set()
        self._param_grads_taken = False
        self._probe_parts: dict[str, list[torch.Tensor]] = {}
        if self._armed and self._probe_x is not None and self.rank == 0:
            self._run_probe()
        due = self._ckpt_schedule is not None and self._ckpt_schedule(step) and self.rank == 0
        self._ckpt = checkpoint_arrays(self.model) if due else {}

    @torch.no_grad()
    def _run_probe(self) -> None:
        x = self._probe_x
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        was_training = self.model.training
        self._mode = "probe"
        try:
            self.model.eval()
            for start in range(0, n, self.probe_batch_size):
                sl = slice(start, start + self.probe_batch_size)
                if isinstance(x, dict):
                    self.model(**{k: v[sl].to(device) for k, v in x.items()})
                else:
                    self.model(x[sl].to(device))
        finally:
            self.model.train(was_training)
            self._mode = "train"
        silent = [s for s in self.sites if s not in self._buf.fired]
        if silent:
            self._fail_liveness(silent, "the probe forward pass")
        self._buf.fired.clear()
        for name, parts in self._probe_parts.items():
            t = torch.cat(parts, 0)
            site = self.sites[name]
            if site.axes is None:
                site_axes(site, t, self._axes)
            path = layout.array_path(layout.PROBE_ACTIVATIONS, name)
            self._buf.put(path, t, site, self._logical)
        self._probe_parts = {}

    def _fail_liveness(self, silent: list[str], where: str) -> None:
        compiled = type(self.model).__name__ == "OptimizedModule" or hasattr(
            self.model, "_orig_mod"
        )
        hint = (
            " The model is torch.compile'd: compiled graphs can skip module hooks; attach the "
            "Recorder to the model before compiling, or call torch._dynamo.reset()."
            if compiled
            else " Check that these modules are called in forward (a module that is defined "
            "but never called has no output to record)."
        )
        self._abort()
        raise HookNotFiredError(
            f"the hooks of {len(silent)} site(s) never fired during {where}: {silent}.{hint}"
        )

    def step(self, step: int | None = None, /, *, sample_ids: Any = None, **scalars: Any) -> None:
        """Call once per optimizer step, after ``optimizer.step()``.

        Args:
            step: the step just taken (default: one more than the last).
            sample_ids: indices in the data set of the live batch's rows (recorded at
                recorded steps, sub-sampled like the rows).
            **scalars: numbers for the scalar table (loss, lr, ...), at every step.
        """
        self._bg.check()
        if self._closed:
            self._raise_closed("step()")
        if step is None:
            step = self._armed_step
        else:
            step = check_int("step", step, min=0, max=MAX_STEP)
            if step < self._armed_step:
                raise InvalidParameterError(
                    f"step() got step {step}, but the previous call was for step "
                    f"{self._armed_step - 1} (or the Recorder started at start_step="
                    f"{self._armed_step}): steps must increase, or two records share a step "
                    "and reads return only one of them. An epoch loop that restarts "
                    "enumerate() passes the same numbers again: pass a global step "
                    "(e.g. epoch * len(loader) + i), or call rec.step() with no number to "
                    "count steps for you."
                )
        if scalars:
            self.log(step, **scalars)
        if self._armed:
            self._submit_record(step, sample_ids)
        elif self._ckpt:
            self._bg.submit(self._writer.write_record, step, self._ckpt, None)
        self._arm(step + 1)

    def _submit_record(self, step: int, sample_ids: Any) -> None:
        if self.capture and not self._checked:
            silent = [s for s in self.sites if s not in self._buf.fired]
            if silent:
                self._fail_liveness(silent, f"step {step}")
            self._checked = True
        self._warn_missing_gradients(step)
        for name, n in self._buf.extra_calls.items():
            if name not in self._warned_calls:
                self._warned_calls.add(name)
                warnings.warn(
                    f"site {name!r} ran {n + 1} times in step {step}; only its first call of "
                    "each recorded step is kept (expected with gradient accumulation or weight "
                    "sharing).",
                    stacklevel=3,
                )
        if "param_grads" in self.capture and not self._param_grads_taken:
            self.capture_param_grads()
        ragged = self._drop_ragged(step)
        for path, (t, _) in self._buf.tensors.items():
            seen = self._shapes.setdefault(path, (tuple(t.shape), t.dtype))
            if seen != (tuple(t.shape), t.dtype):
                self._abort()
                raise ShapeMismatchError(
                    f"{path!r} changed shape from {seen[0]} to {tuple(t.shape)} at step {step}; "
                    "every record of a site must have the same shape. Pass rows=N (at most the "
                    "smallest batch) or use drop_last=True in the DataLoader."
                )
        ids = None if sample_ids is None else self._sample_ids(sample_ids, step, ragged)
        arrays = {**self._buf.arrays(), **self._ckpt}
        self._bg.submit(self._writer.write_record, step, arrays, ids)
        if not self._first_record_done and self.rank == 0:
            self._first_record_done = True
            sites = {name: s.describe() for name, s in self.sites.items()}
            self._bg.submit(self._writer.update_run_meta, {"sites": sites})

    def _warn_missing_gradients(self, step: int) -> None:
        message = missing_gradient_message(self._buf, step)
        if message is not None:
            warnings.warn(message, stacklevel=4)

    def _drop_ragged(self, step: int) -> bool:
        """Drop this step's live-batch records of ragged sites; warn once per site."""
        dropped = drop_ragged(self._buf, self._shapes)
        new = sorted(set(dropped) - self._warned_ragged)
        self._warned_ragged.update(new)
        if new:
            warnings.warn(ragged_message(step, new, dropped[new[0]]), stacklevel=4)
        return bool(dropped)

    def _sample_ids(self, sample_ids: Any, step: int, ragged: bool) -> np.ndarray | None:
        """``sample_ids`` checked against the live batch, sub-sampled like its rows
        (``None`` at a ragged step, whose rows are not recorded)."""
        ids = check_sample_ids(sample_ids, self._buf.rows, step)
        if ragged:
            return None
        keep = self._sub.row_index(len(ids))
        return ids if keep is None else ids[keep.numpy()]

    def capture_param_grads(self) -> None:
        """Copy the sites' parameter gradients now (at a recorded step, once).

        ``step()`` does this itself; call it earlier when the loop zeroes gradients
        between ``optimizer.step()`` and ``rec.step()`` (the Hugging Face Trainer does;
        its callback calls this before the optimizer step)."""
        if not self._armed or "param_grads" not in self.capture or self._param_grads_taken:
            return
        self._param_grads_taken = True
        for name, site in self.sites.items():
            for pname, p in site.module.named_parameters(recurse=False):
                if p.grad is not None:
                    path = layout.array_path(layout.PARAM_GRADS, name, pname)
                    self._buf.put(path, snapshot(p.grad, self.dtype), site, self._logical)

    def log(self, step: int, **scalars: Any) -> None:
        """Add numbers to the scalar table at ``step`` (any step, recorded or not)."""
        step = check_int("step", step, min=0, max=MAX_STEP)
        if self._closed:
            self._raise_closed("log()")
        values = {}
        for name, v in scalars.items():
            check_path_name("scalar", name, allow_slash=True)
            try:
                values[name] = float(v)
            except (TypeError, ValueError):
                raise InvalidParameterError(
                    f"scalar {name!r} must be a number (or a one-element tensor); got "
                    f"{type(v).__name__}."
                ) from None
        self._bg.submit(self._writer.add_scalars, int(step), values)

    # -- lifecycle ---------------------------------------------------------------------
    def on_flush(self, fn: Callable[[], None]) -> RemovableHandle:
        """Call ``fn()`` at the start of :meth:`flush` and :meth:`close`, so that an
        instrument that logs in batches (e.g. the noise-scale monitor) hands over what
        it still holds. Returns a handle whose ``remove()`` unregisters it."""
        handle = RemovableHandle(self._flush_callbacks)
        self._flush_callbacks[handle.id] = fn
        return handle

    def _run_flush_callbacks(self) -> None:
        for fn in list(self._flush_callbacks.values()):
            fn()

    def flush(self) -> None:
        """Wait until everything submitted so far is committed."""
        self._run_flush_callbacks()
        self._bg.submit(self._writer.flush_scalars)
        self._bg.flush()

    def close(self) -> None:
        """Remove the hooks, write what is pending, and commit. Idempotent.

        If the next step is on the schedule and a probe set is given, the probe
        activations of the final parameters are recorded as that step."""
        if self._closed:
            return
        try:
            self._run_flush_callbacks()
            probe = {
                path: item
                for path, item in self._buf.arrays().items()
                if path.startswith(layout.PROBE_ACTIVATIONS + "/")
            }
            final = {**probe, **self._ckpt} if self._armed else dict(self._ckpt)
            if final:  # the final parameters: on the probe set, and/or a checkpoint
                self._bg.submit(self._writer.write_record, self._armed_step, final, None)
            self._bg.submit(self._writer.close)
        finally:
            self._abort()

    def _raise_closed(self, call: str) -> None:
        failure = getattr(self, "_failure", None)
        if failure is not None:
            raise InvalidParameterError(
                f"{call} on a Recorder that stopped after an error in one of its hooks "
                f"({type(failure).__name__}: {failure}); its hooks are removed and the steps "
                "committed before stay readable. Fix the cause and create a new Recorder."
            ) from failure
        raise InvalidParameterError(f"{call} after close(); create a new Recorder.")

    def _abort(self) -> None:
        """Remove hooks and stop the writer (what was committed stays)."""
        self._closed = True
        self._armed = False
        shutdown.unregister(self)
        hooks = getattr(self, "_hooks", None)
        if hooks is not None:
            hooks.remove()
        bg = getattr(self, "_bg", None)
        if bg is not None:
            bg.close()

    def store(self) -> Store:
        """Open this run's store for reading (works while recording)."""
        return open_store(self.path, self.run)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        exit_context(self.close, exc)  # an error raised inside the block comes out on top

    def __repr__(self) -> str:
        return (
            f"Recorder(path={self.path!r}, run={self.run!r}, sites={list(self.sites)}, "
            f"schedule={self.schedule!r}, capture={self.capture})"
        )
