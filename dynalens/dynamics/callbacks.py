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

from typing import Any

from dynalens._optional import require
from dynalens.dynamics.gns_live import GradientNoiseScaleMonitor


def _monitor_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(kwargs)
    kwargs.pop("optimizer", None)  # the trainer calls step() itself
    return kwargs


def lightning_callback(**monitor_kwargs: Any) -> Any:
    """A ``lightning.pytorch.Callback`` measuring the GNS of ``pl_module``.

    Keyword arguments go to :class:`GradientNoiseScaleMonitor` (``every``, ``beta``,
    ``recorder``, ...). Scalars also go to ``pl_module.log`` (the trainer's loggers).
    The instrument is available as ``callback.monitor`` after ``fit`` starts.
    """
    pl = require("lightning.pytorch", "the Lightning noise-scale callback")

    class GNSCallback(pl.Callback):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self.kwargs = _monitor_kwargs(monitor_kwargs)
            self.monitor: GradientNoiseScaleMonitor | None = None

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            kw = dict(self.kwargs)
            kw.setdefault("loss_scale", 1.0 / max(1, int(trainer.accumulate_grad_batches)))
            self.monitor = GradientNoiseScaleMonitor(pl_module, **kw).attach()

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if self.monitor is None:
                return
            out = self.monitor.step(int(trainer.global_step))
            if out:
                for k, v in out.items():
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

    Keyword arguments go to :class:`GradientNoiseScaleMonitor`. Measured scalars are
    added to the logs of the next ``on_log`` (seen by loggers that run after this
    callback) and to ``state.log_history``.
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
            self.monitor = GradientNoiseScaleMonitor(model, **opts).attach()

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.monitor is None:
                return
            out = self.monitor.step(int(state.global_step))
            if out:
                self._pending = dict(out)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not self._pending:
                return
            if logs is not None:  # loggers called after this callback see the scalars
                logs.update(self._pending)
            hist = state.log_history
            if hist and hist[-1].get("step") == state.global_step:
                hist[-1].update(self._pending)  # the Trainer stored a copy before on_log
            self._pending = {}

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.monitor is not None:
                self.monitor.detach()

    return GNSTrainerCallback()
