"""Lightning and Hugging Face Trainer callbacks for the live noise-scale instrument.

Both wrap :class:`~dynalens.dynamics.gns_live.GradientNoiseScaleMonitor` (same
statistics, same scalar names) and close each optimizer step from the trainer's own
"before optimizer step" event, after all accumulation passes and -- since gradients are
read from parameter hooks -- unaffected by the trainer's gradient clipping.

Loss bookkeeping: both trainers divide the loss by the number of accumulation steps, so
the default ``loss_scale`` is ``1/accumulation_steps`` with ``reduction="mean"``. For a
Hugging Face language model the loss is the mean over tokens of the batch; with equal
sequence lengths and no padding, the per-example loss ``l_i`` is then the mean token loss
of sequence i (count examples in sequences). With padding or ``num_items_in_batch``
weighting pass ``loss_scale=`` yourself.

``lightning`` and ``transformers`` are imported only when a callback is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dynalens._optional import require
from dynalens.dynamics.gns_live import GradientNoiseScaleMonitor


def _monitor_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(kwargs)
    kwargs.pop("optimizer", None)  # the trainer calls step() itself
    return kwargs


def _resolve_recorder(recorder: Any, start: Callable[[Any], None]) -> Any:
    """``recorder=`` may be a dynalens recording callback (``RecorderTrainerCallback``,
    ``RecorderCallback``): its Recorder, created by calling ``start(callback)`` (the
    callback's own train/fit-start hook, a no-op once it ran) if it does not exist yet."""
    if recorder is None or callable(getattr(recorder, "log", None)):
        return recorder
    if hasattr(recorder, "recorder"):
        if recorder.recorder is None:
            start(recorder)
        return recorder.recorder
    return recorder  # the monitor explains what it expects


def _labelled(out: Any, prefix: str) -> dict[str, float]:
    """A measured step's scalars (never the trainer's own ``step``) with the step they
    measured: ``{prefix}.measured_step`` = the trainer's global step after that update
    (the ``step`` of the Trainer's log row of that update)."""
    scalars = dict(out.scalars())
    scalars[f"{prefix}.measured_step"] = float(out.step + 1)
    return scalars


def lightning_callback(**monitor_kwargs: Any) -> Any:
    """A ``lightning.pytorch.Callback`` measuring the GNS of ``pl_module``.

    Keyword arguments go to :class:`GradientNoiseScaleMonitor` (``every``, ``beta``,
    ``recorder``, ...); ``recorder=`` may also be a dynalens ``RecorderCallback``, whose
    store then holds the noise scale too. Scalars also go to ``pl_module.log`` (the
    trainer's loggers), with ``{prefix}.measured_step``. The instrument is available as
    ``callback.monitor`` after ``fit`` starts.
    """
    pl = require("lightning.pytorch", "the Lightning noise-scale callback")

    class GNSCallback(pl.Callback):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self.kwargs = _monitor_kwargs(monitor_kwargs)
            self.monitor: GradientNoiseScaleMonitor | None = None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            kw = dict(self.kwargs)
            kw.setdefault("loss_scale", 1.0 / max(1, int(trainer.accumulate_grad_batches)))
            kw["recorder"] = _resolve_recorder(
                kw.get("recorder"), lambda cb: cb.on_fit_start(trainer, pl_module)
            )
            self.monitor = GradientNoiseScaleMonitor(pl_module, **kw).attach()

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if self.monitor is None:
                return
            out = self.monitor.step(int(trainer.global_step))
            if out:
                for k, v in _labelled(out, self.monitor.prefix).items():
                    if v == v and abs(v) != float("inf"):  # loggers reject nan / inf
                        pl_module.log(k, v, on_step=True, on_epoch=False)

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            if self.monitor is not None:
                self.monitor.detach()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self.on_fit_end(trainer, pl_module)

    return GNSCallback()


def hf_callback(**monitor_kwargs: Any) -> Any:
    """A ``transformers.TrainerCallback`` measuring the GNS of the trained model.

    Keyword arguments go to :class:`GradientNoiseScaleMonitor`; ``recorder=`` may also be
    the ``RecorderTrainerCallback`` of the same run, whose store then holds the noise
    scale beside the recorded activations (at the same 0-based step numbers). The latest
    measured step's scalars are added to the logs of the next ``on_log`` (seen by loggers
    that run after this callback) and to that row of ``state.log_history``, under new
    keys only -- the Trainer's own fields (``step``, ``loss``, ...) are never changed --
    with ``{prefix}.measured_step``: the Trainer's ``step`` after the measured update
    (equal to the row's ``step`` when every logged step is measured; smaller when the
    row is logged later). Every measured step is in ``callback.monitor.history``.
    """
    tf = require("transformers", "the Hugging Face noise-scale callback")

    class GNSTrainerCallback(tf.TrainerCallback):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self.kwargs = _monitor_kwargs(monitor_kwargs)
            self.monitor: GradientNoiseScaleMonitor | None = None
            self._pending: dict[str, float] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            model = kw["model"]
            opts = dict(self.kwargs)
            opts.setdefault("loss_scale", 1.0 / max(1, int(args.gradient_accumulation_steps)))
            opts.setdefault("start_step", int(state.global_step))
            opts["recorder"] = _resolve_recorder(
                opts.get("recorder"), lambda cb: cb.on_train_begin(args, state, control, **kw)
            )
            self.monitor = GradientNoiseScaleMonitor(model, **opts).attach()

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.monitor is None:
                return
            out = self.monitor.step(int(state.global_step))  # 0-based, as the Recorder's
            if out:
                self._pending = _labelled(out, self.monitor.prefix)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not self._pending:
                return
            if logs is not None:  # loggers called after this callback see the scalars
                for k, v in self._pending.items():
                    logs.setdefault(k, v)
            hist = state.log_history
            if hist and hist[-1].get("step") == state.global_step:
                for k, v in self._pending.items():  # the Trainer stored a copy before on_log
                    hist[-1].setdefault(k, v)
            self._pending = {}

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.monitor is not None:
                self.monitor.detach()

    return GNSTrainerCallback()
