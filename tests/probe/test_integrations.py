"""Existing loops: Lightning, the Hugging Face Trainer, transformer-lens models. Real
libraries, tiny models built from configs, no downloads."""

import numpy as np
import pytest
import torch
from torch import nn

import dynalens

from .conftest import hook_count


@pytest.mark.slow
def test_lightning_callback_records_optimizer_steps(tmp_path):
    L = pytest.importorskip("lightning.pytorch")
    from dynalens.probe.integrations.lightning import RecorderCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(
        torch.randn(48, 4, generator=g), torch.randint(0, 2, (48,), generator=g)
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    cb = RecorderCallback(
        str(tmp_path / "pl"),
        sites=["model.0", "model.2"],
        every=2,
        capture=("activations", "gradients", "param_grads"),
    )
    module = Module()
    trainer = L.Trainer(
        max_steps=6,
        accumulate_grad_batches=2,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, loader)
    store = dynalens.open_store(tmp_path / "pl")
    assert store.steps().tolist() == [0, 2, 4]
    assert store.activations("model.0").shape == (3, 8, 8)
    assert store.param_grads("model.2", "weight").shape == (3, 2, 8)
    assert np.abs(store.param_grads("model.2", "weight")).sum() > 0
    assert store.scalars()["step"].tolist() == list(range(6))
    assert hook_count(module) == 0


@pytest.mark.slow
def test_hf_trainer_callback_records_steps(tmp_path):
    transformers = pytest.importorskip("transformers")
    from dynalens.probe.integrations.hf import RecorderTrainerCallback

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"input_ids": torch.randint(0, 32, (8,), generator=g), "labels": i % 2}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf_out"),
        max_steps=4,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    site = "bert.encoder.layer.0.output"
    cb = RecorderTrainerCallback(
        str(tmp_path / "hf"),
        sites=site,
        every=1,
        capture=("activations", "gradients", "param_grads"),
        positions=5,
    )
    transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb]).train()
    store = dynalens.open_store(tmp_path / "hf")
    assert store.steps().tolist() == [0, 1, 2, 3]
    assert store.activations(site).shape == (4, 4, 5, 16)  # positions sub-sampled 8 -> 5
    assert store.info()["sites"][site]["axes"] == ["batch", "pos", "feature"]
    assert np.abs(store.gradients(site)).sum() > 0
    df = store.scalars()
    assert {"lr", "loss"} <= set(df.columns)
    assert hook_count(model) == 0


def _tiny_bridge():
    tl = pytest.importorskip("transformer_lens")
    from transformer_lens.config import TransformerBridgeConfig

    cfg = TransformerBridgeConfig(
        d_model=16,
        d_head=4,
        n_heads=4,
        n_layers=2,
        n_ctx=8,
        d_vocab=12,
        attn_only=False,
        d_mlp=32,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    return tl.TransformerBridge.boot_native(cfg)


@pytest.mark.slow
def test_transformer_lens_hook_points_are_sites(tmp_path):
    bridge = _tiny_bridge()
    tokens = torch.randint(0, 12, (6, 8), generator=torch.Generator().manual_seed(0))
    sites = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern"]
    bridge.eval()
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    bridge.train()
    own_hooks = hook_count(bridge)  # the bridge keeps some hooks of its own
    with dynalens.Recorder(
        bridge, tmp_path / "tl", sites=sites, every=[0], capture=("gradients",), probe=tokens
    ) as rec:
        opt = torch.optim.SGD(bridge.parameters(), lr=0.01)
        logits = bridge(tokens)
        loss = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, 12), tokens[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(0)
    store = dynalens.open_store(tmp_path / "tl")
    for site in sites:
        np.testing.assert_allclose(store.activations(site, 0), cache[site].numpy(), atol=1e-5)
    assert store.gradients("blocks.0.hook_resid_post", 0).shape == (6, 8, 16)
    axes = store.info()["sites"]
    assert axes["blocks.0.hook_resid_post"]["axes"] == ["batch", "pos", "feature"]
    assert axes["blocks.1.attn.hook_pattern"]["axes"] == ["batch", "head", "query_pos", "key_pos"]
    assert hook_count(bridge) == own_hooks
