"""Lightning and HF Trainer callbacks, with the real libraries and tiny models."""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import pytest
import torch
from torch import nn
from torch.nn import functional as F


def test_lightning_callback_logs_gns(tmp_path: Any) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from dynalens.dynamics.callbacks import lightning_callback

    torch.manual_seed(0)
    X, Y = torch.randn(64, 5), torch.randint(0, 3, (64,))

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

        def training_step(self, batch: Any, idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Rec:
        rows: ClassVar[list] = []

        def log(self, step: int, **s: float) -> None:
            self.rows.append((step, s))

    rec = Rec()
    cb = lightning_callback(every=1, beta=0.9, recorder=rec)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=8)
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[cb], accumulate_grad_batches=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path), gradient_clip_val=0.01,
    )  # fmt: skip
    module = Module()
    trainer.fit(module, loader)
    assert [s for s, _ in rec.rows] == [0, 1, 2, 3]  # 8 batches, 2 accumulated per step
    assert rec.rows[-1][1]["gns.batch_size"] == 16.0
    assert "gns.measured_step" not in rec.rows[-1][1]  # the store gets the step as its step
    assert float(trainer.callback_metrics["gns.measured_step"]) == 4.0  # after update 3 (0-based)
    assert math.isfinite(cb.monitor.compute()["gns.trace_sigma"])
    for m in module.modules():
        assert not m._forward_hooks


@pytest.mark.slow
def test_hf_trainer_callback_logs_gns(tmp_path: Any) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    tf = pytest.importorskip("transformers")
    from dynalens.dynamics.callbacks import hf_callback

    cfg = tf.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=16)
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 32, (16, 8))

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": ids[i], "labels": ids[i]}

    args = tf.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        learning_rate=1e-3, disable_tqdm=True,
    )  # fmt: skip
    cb = hf_callback(every=1, beta=1.0, policy="fallback")
    trainer = tf.Trainer(model=model, args=args, train_dataset=DS(), callbacks=[cb])
    trainer.train()
    logged = [h for h in trainer.state.log_history if "gns.b_simple" in h]
    assert len(logged) >= 2
    assert math.isfinite(cb.monitor.compute()["gns.trace_sigma"])
    assert cb.monitor.compute()["gns.batch_size"] == 4.0


@pytest.mark.slow
def test_hf_callback_keeps_trainer_fields_and_labels_the_measured_step(tmp_path: Any) -> None:
    """The noise-scale callback overwrote the Trainer's `step` in log_history and attached
    values of an earlier measured step unlabelled; it also shares the Recorder's store."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    tf = pytest.importorskip("transformers")
    import dynalens
    from dynalens.dynamics.callbacks import hf_callback
    from dynalens.probe.integrations.hf import RecorderTrainerCallback

    cfg = tf.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=16)
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 32, (24, 8))

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": ids[i], "labels": ids[i]}

    args = tf.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=5,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        learning_rate=1e-3, disable_tqdm=True,
    )  # fmt: skip
    rec_cb = RecorderTrainerCallback(str(tmp_path / "run"), sites="transformer.ln_f", every=1)
    gns_cb = hf_callback(every=2, beta=1.0, recorder=rec_cb)  # default policy: exact GPT-2
    # the noise-scale callback first: it starts the Recorder itself if needed
    trainer = tf.Trainer(model=model, args=args, train_dataset=DS(), callbacks=[gns_cb, rec_cb])
    trainer.train()
    rows = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in rows] == [1, 2, 3, 4, 5]  # the Trainer's own numbering
    measured = {h["step"]: h.get("gns.measured_step") for h in rows}
    assert measured == {1: 1.0, 2: None, 3: 3.0, 4: None, 5: 5.0}  # every=2: steps 0, 2, 4
    assert all("loss" in h for h in rows)
    store = dynalens.open_store(tmp_path / "run")
    df = store.scalars()
    gns_steps = sorted(set(df["step"][df["gns.b_simple"].notna()].tolist()))
    assert gns_steps == [0, 2, 4]  # the Recorder's 0-based steps: the same update
    assert gns_cb.monitor.history[-1]["gns.batch_size"] == 4.0
