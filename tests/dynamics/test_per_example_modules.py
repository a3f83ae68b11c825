"""Per-example norms on every module type of issue 11 against a float64 per-example loop.

Each case wraps one real module (or a tiny random-init Hugging Face model) so that the loss
of example i depends on *every* output of the module (an LSTM's output and h_n, the
attention weights of nn.MultiheadAttention); the engine's norms must equal those of a loop
with one backward per example, or the engine must refuse with a clear error.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from _dyn_models import per_example_reference
from torch import nn

from dynalens.dynamics.per_example import PerExampleGradNorms, per_example_sq_norms

B = 5


def close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Equal up to float64 rounding, relative to each parameter's largest norm (a bias with
    an exactly-zero gradient, e.g. BERT's attention key bias, is rounding noise on both)."""
    assert set(got) == set(want), set(want) ^ set(got)
    scale = max(float(w.abs().max()) for w in want.values())
    for n, w in want.items():
        atol = 1e-10 * max(float(w.abs().max()), 1e-20 * scale)
        torch.testing.assert_close(got[n], w, rtol=1e-9, atol=atol, msg=n)


class Wrap(nn.Module):
    """``inner`` applied by ``call(inner, x)``; every output enters the per-example loss."""

    def __init__(self, inner: nn.Module, call: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.inner = inner
        self.call = call

    def forward(self, x: Any) -> Any:
        return self.call(self.inner, x)


def loss_all(out: Any, y: Any) -> torch.Tensor:
    """Sum over the outputs of ``Σ (o - 0.3)²`` per example (outputs batch-first)."""
    outs = out if isinstance(out, tuple) else (out,)
    return torch.stack([((o - 0.3) ** 2).flatten(1).sum(1) for o in outs]).sum(0)


def _rnn(cls: Any, batch_first: bool, **kw: Any) -> tuple:
    def call(m: nn.Module, x: torch.Tensor) -> tuple:
        out, h = m(x if batch_first else x.transpose(0, 1))
        hs = h if isinstance(h, tuple) else (h,)
        out = out if batch_first else out.transpose(0, 1)
        return (out, *(t.transpose(0, 1) for t in hs))  # h_n, c_n: batch on axis 1

    return cls(3, 4, batch_first=batch_first, **kw), call, torch.randn(B, 6, 3), "fallback"


def _mha(batch_first: bool) -> tuple:
    def call(m: nn.Module, x: torch.Tensor) -> tuple:
        q = x if batch_first else x.transpose(0, 1)
        T = x.shape[1]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        out, w = m(q, q, q, attn_mask=causal, need_weights=True)
        return (out if batch_first else out.transpose(0, 1)), w  # weights: (N, L, S)

    x = torch.randn(B, B, 6)  # T == B: the (T, T) mask must not be split as a batch
    return nn.MultiheadAttention(6, 2, batch_first=batch_first), call, x, "fallback"


def _encoder_layer(batch_first: bool) -> tuple:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)

    def call(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=x.dtype)
        src = x if batch_first else x.transpose(0, 1)
        out = m(src, src_mask=mask)
        return out if batch_first else out.transpose(0, 1)

    return layer, call, torch.randn(B, B, 8), "fallback"  # T == B again


def _batchnorm(cls: type[nn.Module], shape: tuple[int, ...]) -> tuple:
    bn = cls(3)
    bn.running_mean.uniform_(-1, 1)  # type: ignore[operator]
    bn.running_var.uniform_(0.5, 2)  # type: ignore[operator]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)  # type: ignore[operator]
        bn.bias.uniform_(-1, 1)  # type: ignore[operator]
    return bn.eval(), lambda m, x: m(x), torch.randn(*shape), "raise"


def _plain(module: nn.Module, x: torch.Tensor, policy: str = "raise") -> tuple:
    return module, lambda m, z: m(z), x, policy


def _hf(kind: str) -> tuple:
    os.environ["HF_HUB_OFFLINE"] = "1"
    tf = pytest.importorskip("transformers")
    ids = torch.randint(0, 64, (B, 7))
    if kind == "conv1d":
        from transformers.pytorch_utils import Conv1D

        return _plain(Conv1D(5, 4), torch.randn(B, 7, 4))
    if kind == "gpt2":
        cfg = tf.GPT2Config(
            n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        return tf.GPT2LMHeadModel(cfg), lambda m, x: m(input_ids=x).logits, ids, "raise"
    cfg = tf.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=64,
        max_position_embeddings=16, intermediate_size=37, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip

    def bert(m: nn.Module, x: torch.Tensor) -> tuple:
        out = m(input_ids=x)
        return out.last_hidden_state, out.pooler_output

    return tf.BertModel(cfg), bert, ids, "raise"


CASES: dict[str, Callable[[], tuple]] = {
    "Linear": lambda: _plain(nn.Linear(4, 3), torch.randn(B, 6, 4)),
    "Conv1d": lambda: _plain(nn.Conv1d(3, 4, 3, padding=1), torch.randn(B, 3, 8), "fallback"),
    "Conv2d": lambda: _plain(nn.Conv2d(3, 4, 3, stride=2), torch.randn(B, 3, 7, 7)),
    "Conv2d-grouped": lambda: _plain(
        nn.Conv2d(4, 6, 3, groups=2), torch.randn(B, 4, 5, 5), "fallback"
    ),
    "Conv3d": lambda: _plain(nn.Conv3d(2, 3, 2), torch.randn(B, 2, 4, 3, 4), "fallback"),
    "ConvTranspose1d-grouped": lambda: _plain(
        nn.ConvTranspose1d(4, 6, 3, groups=2, stride=2), torch.randn(B, 4, 5), "fallback"
    ),
    "ConvTranspose2d": lambda: _plain(
        nn.ConvTranspose2d(3, 2, 3, stride=2), torch.randn(B, 3, 4, 4), "fallback"
    ),
    "Embedding": lambda: _plain(nn.Embedding(11, 4), torch.randint(0, 11, (B, 7))),
    "EmbeddingBag-mean": lambda: _plain(
        nn.EmbeddingBag(11, 4, mode="mean", padding_idx=0), torch.randint(0, 11, (B, 6))
    ),
    "EmbeddingBag-max": lambda: _plain(
        nn.EmbeddingBag(11, 4, mode="max"), torch.randint(0, 11, (B, 6)), "fallback"
    ),
    "LayerNorm": lambda: _plain(nn.LayerNorm(4), torch.randn(B, 6, 4)),
    "BatchNorm1d-eval": lambda: _batchnorm(nn.BatchNorm1d, (B, 3, 6)),
    "BatchNorm2d-eval": lambda: _batchnorm(nn.BatchNorm2d, (B, 3, 4, 4)),
    "LSTM": lambda: _rnn(nn.LSTM, True),
    "LSTM-time-major": lambda: _rnn(nn.LSTM, False, num_layers=2),
    "GRU": lambda: _rnn(nn.GRU, True, bidirectional=True),
    "GRU-time-major": lambda: _rnn(nn.GRU, False),
    "RNN": lambda: _rnn(nn.RNN, True, nonlinearity="relu"),
    "RNN-time-major": lambda: _rnn(nn.RNN, False),
    "MultiheadAttention": lambda: _mha(True),
    "MultiheadAttention-time-major": lambda: _mha(False),
    "TransformerEncoderLayer": lambda: _encoder_layer(True),
    "TransformerEncoderLayer-time-major": lambda: _encoder_layer(False),
    "HF-Conv1D": lambda: _hf("conv1d"),
    "GPT-2": lambda: _hf("gpt2"),
    "BERT": lambda: _hf("bert"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_per_example_norms_match_float64_loop(case: str) -> None:
    torch.manual_seed(0)
    inner, call, x, policy = CASES[case]()
    model = Wrap(inner, call).double()
    if torch.is_floating_point(x):
        x = x.double()
    with warnings.catch_warnings():  # torch's performance notes on attention under vmap
        warnings.simplefilter("ignore", UserWarning)
        got = per_example_sq_norms(model, loss_all, x, None, policy=policy)
    close(got, per_example_reference(model, loss_all, x, [None] * len(x)))


@pytest.mark.parametrize("case", ["HF-Conv1D", "GPT-2", "BERT", "BatchNorm2d-eval"])
def test_default_policy_plans_closed_form_rules(case: str) -> None:
    """GPT-2 and friends need no flags: every module has a closed-form rule."""
    inner, *_ = CASES[case]()
    with PerExampleGradNorms(inner) as engine:
        assert "torch.func" not in engine.plan_.values()
        assert not engine.skipped_
