"""A PyTorch Lightning callback that records with a :class:`~dynalens.Recorder`.

>>> from dynalens.probe.integrations.lightning import RecorderCallback
>>> cb = RecorderCallback("runs/x.zarr", sites="model.layers.*", every=10)
>>> trainer = L.Trainer(callbacks=[cb])

Sites are named relative to the LightningModule (``model.fc1`` for ``self.model.fc1``).
The step recorded is the optimizer step (``trainer.global_step`` before the update);
with gradient accumulation, the micro-batches of one optimizer step form one step (the
first micro-batch's activations are kept). The training loss goes to the scalar table.
"""

from __future__ import annotations

from typing import Any

from dynalens._optional import require
from dynalens.probe.recorder import Recorder

_pl = require("lightning.pytorch", "RecorderCallback")


class RecorderCallback(_pl.Callback):  # type: ignore[name-defined]
    """Create a Recorder at ``fit`` start; step it after each optimizer step; close it
    at the end (also when training raises). Keyword arguments go to the Recorder."""

    def __init__(self, path: str, **recorder_kwargs: Any) -> None:
        super().__init__()
        self.path = path
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None
        self._last_step = -1

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_rank is not None and self.recorder is None:
            self.recorder = Recorder(
                pl_module, self.path, start_step=trainer.global_step, **self.recorder_kwargs
            )

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.recorder is not None:
            self.recorder.capture_param_grads()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step - 1  # the optimizer step just taken
        if self.recorder is None or step <= self._last_step:
            return  # an accumulation micro-batch: no optimizer step yet
        self._last_step = step
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        scalars = {} if loss is None else {"loss": float(loss)}
        self.recorder.step(step, **scalars)

    def _close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()
