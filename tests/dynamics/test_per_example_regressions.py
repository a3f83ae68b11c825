"""Regression tests of issue 11 (sections 1 and 2): silent wrong per-example norms and noise
scales, and GPT-2 by default. Each test is named after what it fixes."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from _dyn_models import mlp, mse, per_example_reference
from test_per_example_modules import close
from torch import nn

from dynalens.dynamics.gns import gradient_noise_scale
from dynalens.dynamics.gns_live import GradientNoiseScaleMonitor
from dynalens.dynamics.per_example import PerExampleGradNorms, per_example_sq_norms
from dynalens.errors import HookNotFiredError, InvalidInputError, InvalidParameterError


def _tiny_gpt2() -> nn.Module:
    os.environ["HF_HUB_OFFLINE"] = "1"
    tf = pytest.importorskip("transformers")
    cfg = tf.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    return tf.GPT2LMHeadModel(cfg)


def _lm_loss(out: Any, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.logits.transpose(1, 2), y, reduction="none").sum(1)


# ------------------------------------------------------------------ 1. silent wrong numbers
class LstmBoth(nn.Module):
    """Loss on the LSTM's output *and* h_n (gradient reaching its non-first outputs)."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.lstm = nn.LSTM(3, 4, batch_first=batch_first)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, _) = self.lstm(x if self.batch_first else x.transpose(0, 1))
        last = out[:, -1] if self.batch_first else out[-1]
        return self.head(last + 2.0 * h[-1])


@pytest.mark.parametrize("batch_first", [True, False])
def test_fallback_counts_gradient_reaching_lstm_h_n(batch_first: bool) -> None:
    torch.manual_seed(0)
    model = LstmBoth(batch_first).double()
    x, y = torch.randn(5, 6, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    got = per_example_sq_norms(model, mse, x, y, policy="fallback")
    close(got, per_example_reference(model, mse, x, y))


def test_fallback_counts_gradient_reaching_attention_weights() -> None:
    torch.manual_seed(0)

    class WeightsInLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(6, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, w = self.mha(x, x, x, need_weights=True, average_attn_weights=False)
            return out.sum((1, 2)) + 3.0 * w.pow(2).sum((1, 2, 3))

    model = WeightsInLoss().double()
    x, y = torch.randn(4, 5, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    loss = lambda o, t: (o - t) ** 2  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        got = per_example_sq_norms(model, loss, x, y, policy="fallback")
    close(got, per_example_reference(model, loss, x, y))


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU, nn.LSTM])
def test_time_major_rnn_split_along_batch_when_T_equals_B(cls: Any) -> None:
    """batch_first=False was split along time (T values for B examples; all wrong when
    T == B); RNN and GRU hit a raw torch.func error."""
    torch.manual_seed(0)

    class TimeMajor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = cls(3, 4)  # batch_first=False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x.transpose(0, 1))[0].transpose(0, 1)

    model = TimeMajor().double()
    x, y = torch.randn(5, 5, 3, dtype=torch.float64), torch.randn(5, 5, 4, dtype=torch.float64)
    got = per_example_sq_norms(model, mse, x, y, policy="fallback")
    assert all(v.shape == (5,) for v in got.values())
    close(got, per_example_reference(model, mse, x, y))


class Offset(nn.Module):
    """A learned offset computed on a broadcast (1, d) input: no per-example gradient."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class WithOffset(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.offset = Offset(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.offset(torch.ones(1, 3, dtype=x.dtype))


def test_offline_noise_scale_leaves_parameter_out_of_every_statistic() -> None:
    """A left-out parameter had zero per-example norms but was kept in |G_B|²."""
    torch.manual_seed(0)
    model = WithOffset().double()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 4, generator=g, dtype=torch.float64),
         torch.randn(8, 3, generator=g, dtype=torch.float64))
        for _ in range(3)
    ]  # fmt: skip
    with pytest.warns(UserWarning, match="leave out offset.w"):
        out = gradient_noise_scale(model, mse, batches, policy="fallback")
    assert out["left_out"] == ["offset.w"]
    kept = [model.fc.weight, model.fc.bias]
    tr, g2 = [], []
    for x, y in batches:  # truth without offset.w: the per-example loop, one backward each
        rows = []
        for i in range(len(x)):
            grads = torch.autograd.grad(mse(model(x[i : i + 1]), y[i : i + 1]).sum(), kept)
            rows.append(torch.cat([t.reshape(-1) for t in grads]))
        G = torch.stack(rows)
        B, small, big = len(x), float(G.pow(2).sum(1).mean()), float(G.mean(0).pow(2).sum())
        tr.append((small - big) / (1 - 1 / B))
        g2.append((B * big - small) / (B - 1))
    assert out["trace_sigma"] == pytest.approx(np.mean(tr), rel=1e-9)
    assert out["grad_sq"] == pytest.approx(np.mean(g2), rel=1e-9)
    assert out["b_simple"] == pytest.approx(np.mean(tr) / np.mean(g2), rel=1e-9)
    assert out["per_param"]["offset.w"]["trace_sigma"] == 0.0


def test_offline_noise_scale_with_skipped_module_under_warn() -> None:
    """policy='warn' skipped parameters (no rule) raised a KeyError; now left out."""
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="leave out"):
        out = gradient_noise_scale(model, mse, [(x, torch.zeros(8, 1, dtype=torch.float64))],
                                   policy="warn")  # fmt: skip
    assert out["left_out"] == ["1.bias", "1.weight"]
    assert math.isfinite(out["b_simple"])


def test_generic_fallback_refuses_mask_whose_first_axis_is_ambiguous() -> None:
    """A (T, T) mask with T == B was split as if it held one row per example."""

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return (mask @ x) * self.w

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Masked()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            T = x.shape[1]
            return self.inner(x, torch.tril(torch.ones(T, T, dtype=x.dtype)))

    model = Outer().double()
    x = torch.randn(5, 5, 4, dtype=torch.float64)  # T == B
    with pytest.raises(InvalidInputError, match=r"argument 'mask' of shape \(5, 5\)"):
        per_example_sq_norms(model, mse, x, torch.zeros_like(x), policy="fallback")
    x = torch.randn(5, 6, 4, dtype=torch.float64)  # T != B: the mask is shared, exact
    y = torch.zeros_like(x)
    got = per_example_sq_norms(model, mse, x, y, policy="fallback")
    close(got, per_example_reference(model, mse, x, y))


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("last", [False, True])
def test_embeddingbag_with_offsets_is_exact(mode: str, last: bool) -> None:
    """EmbeddingBag with offsets broke the fallback with a raw torch error; it has a rule."""
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(9, 3, mode=mode, padding_idx=0, include_last_offset=last).double()
    idx = torch.tensor([1, 2, 2, 0, 5, 7, 7, 7, 3, 0])
    starts = torch.tensor([0, 3, 3, 6, 9])  # bag 1 is empty, bag 4 is one padding entry
    offsets = torch.cat([starts, torch.tensor([len(idx)])]) if last else starts
    psw = torch.rand(len(idx), dtype=torch.float64) if mode == "sum" else None
    y = torch.randn(5, 3, dtype=torch.float64)
    with PerExampleGradNorms(bag, reduction="sum", track_batch_grad=False) as engine:
        assert engine.plan_ == {"": "embeddingbag"}
        out = bag(idx, offsets=offsets, per_sample_weights=psw)
        torch.autograd.grad(mse(out, y).sum(), [bag.weight])
        got = engine.collect().per_example["weight"]
    ends = [*starts[1:].tolist(), len(idx)]
    for b, (s, e) in enumerate(zip(starts.tolist(), ends)):
        w_b = None if psw is None else psw[s:e]
        one = bag(idx[s:e], offsets=torch.tensor([0, e - s] if last else [0]),
                  per_sample_weights=w_b)  # fmt: skip
        (grad,) = torch.autograd.grad(mse(one, y[b : b + 1]).sum(), [bag.weight])
        assert got[b] == pytest.approx(float(grad.pow(2).sum()), rel=1e-12, abs=1e-300)


def test_embeddingbag_max_with_offsets_refused_clearly() -> None:
    bag = nn.EmbeddingBag(9, 3, mode="max").double()
    with (
        PerExampleGradNorms(bag, policy="fallback"),
        pytest.raises(InvalidInputError, match="offsets"),
    ):
        bag(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2]))


def test_units_root_counts_each_norm_once() -> None:
    torch.manual_seed(0)
    model = mlp()
    x, y = torch.randn(6, 7, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    with PerExampleGradNorms(model, units=[""]) as engine:
        assert engine.plan_ == {"": "torch.func"}
    engine = PerExampleGradNorms(model, reduction="sum", units=[""], track_batch_grad=False)
    with engine:
        torch.autograd.grad(mse(model(x), y).sum(), list(model.parameters()))
        got = engine.collect().per_example
    close(got, per_example_reference(model, mse, x, y))


def test_replay_refuses_active_dropout() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)  # dropout 0.1, training
    with (
        PerExampleGradNorms(layer, policy="fallback", units=[""]),
        pytest.raises(InvalidInputError, match="dropout is active"),
    ):
        layer(torch.randn(3, 4, 8))


# ------------------------------------------------------- 2. GPT-2 and friends by default
def test_gpt2_works_with_default_policy_and_exact_position_embedding() -> None:
    model = _tiny_gpt2().double()
    x = torch.randint(0, 64, (4, 7))
    with PerExampleGradNorms(model) as engine:  # policy="raise": no flags needed
        assert engine.plan_["transformer.h.0.attn.c_attn"] == "conv1d_hf"
        assert engine.plan_["transformer.wpe"] == "embedding"
        logits = model(input_ids=x).logits
    assert torch.equal(logits, model(input_ids=x).logits)  # the expanded view: same values
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    got = per_example_sq_norms(model, _lm_loss, x, x)
    want = per_example_reference(model, _lm_loss, x, x)
    close({"transformer.wpe.weight": got["transformer.wpe.weight"]},
          {"transformer.wpe.weight": want["transformer.wpe.weight"]})  # fmt: skip


def test_noise_scale_monitor_on_gpt2_with_default_policy() -> None:
    model = _tiny_gpt2()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    gns = GradientNoiseScaleMonitor(model, optimizer=opt, every=1, beta=1.0, flush_every=1)
    with gns:
        for _ in range(2):
            x = torch.randint(0, 64, (4, 7))
            opt.zero_grad()
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
        res = gns.compute()
    assert math.isfinite(res["gns.trace_sigma"]) and res["gns.trace_sigma"] > 0
    assert gns.history[-1]["gns.batch_size"] == 4.0


def test_batchnorm_eval_is_exact_and_training_refused_with_true_reason() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).double()
    bn: Any = model[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    with pytest.raises(InvalidParameterError, match=r"model\.eval\(\)"):
        PerExampleGradNorms(model).attach()  # training mode: batch statistics
    model.eval()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    close(per_example_sq_norms(model, mse, x, y), per_example_reference(model, mse, x, y))
    with PerExampleGradNorms(model) as engine:
        assert engine.plan_["1"] == "batchnorm_eval"
        model.train()
        with pytest.raises(InvalidInputError, match="batch statistics"):
            model(x)


def test_inplace_add_after_view_output_error_names_the_cause() -> None:
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)  # 3-D input: the output is a view
            h += x
            return self.out(h).sum((1, 2))

    model = InPlace()
    with PerExampleGradNorms(model) as engine:
        model(torch.randn(3, 5, 4)).sum().backward()
        with pytest.raises(HookNotFiredError, match="modified in place") as err:
            engine.collect()
    assert "'fc'" in str(err.value) and "h = h + x" in str(err.value)
    assert "MultiheadAttention" not in str(err.value)
