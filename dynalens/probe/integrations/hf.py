"""A Hugging Face ``TrainerCallback`` that records with a :class:`~dynalens.Recorder`.

>>> from dynalens.probe.integrations.hf import RecorderTrainerCallback
>>> Trainer(model, args, train_dataset=ds,
...         callbacks=[RecorderTrainerCallback("runs/x.zarr", sites="bert.encoder.layer.*.output")])

Hooks are registered in ``on_train_begin`` (callbacks cannot change the forward pass;
module hooks are how they observe it). The Trainer zeroes gradients before
``on_step_end``, so parameter gradients are copied in ``on_pre_optimizer_step``. The
step recorded is ``state.global_step`` before the update; the learning rate and the
logged loss go to the scalar table.
"""

from __future__ import annotations

from typing import Any

from dynalens._optional import require
from dynalens.probe.recorder import Recorder

_tf = require("transformers", "RecorderTrainerCallback")


class RecorderTrainerCallback(_tf.TrainerCallback):  # type: ignore[name-defined]
    """Keyword arguments go to the Recorder."""

    def __init__(self, path: str, **recorder_kwargs: Any) -> None:
        self.path = path
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        if self.recorder is None and model is not None:
            self.recorder = Recorder(
                model, self.path, start_step=state.global_step, **self.recorder_kwargs
            )

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.recorder is not None:
            self.recorder.capture_param_grads()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.recorder is None:
            return
        scalars = {}
        scheduler = kw.get("lr_scheduler")
        if scheduler is not None:
            scalars["lr"] = float(scheduler.get_last_lr()[0])
        self.recorder.step(state.global_step - 1, **scalars)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if self.recorder is not None and logs and "loss" in logs:
            self.recorder.log(max(state.global_step - 1, 0), loss=float(logs["loss"]))

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.recorder is not None:
            self.recorder.close()
