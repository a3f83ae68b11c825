"""Per-example squared gradient norms against a per-example loop in float64."""

from __future__ import annotations

import warnings

import pytest
import torch
from _dyn_models import (
    ConvModel,
    Reused,
    SeqModel,
    ce,
    ce_tokens,
    mlp,
    mse,
    per_example_reference,
)
from torch import nn

from dynalens.dynamics.per_example import PerExampleGradNorms, per_example_sq_norms
from dynalens.errors import DynalensError, InvalidInputError, InvalidParameterError

RTOL = 1e-9  # float64: only rounding separates the closed forms from the loop


def _compare(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=RTOL, atol=1e-12, msg=name)


def _seq_batch(B: int = 5, T: int = 7, V: int = 11, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (B, T), generator=g)
    x[0, :3] = 0  # padding tokens
    x[1, :] = 3  # a repeated token: rows of the embedding gradient add up
    y = torch.randint(0, V, (B, T), generator=g)
    return x, y


def test_mlp_matches_loop() -> None:
    model = mlp()
    x, y = torch.randn(6, 7, dtype=torch.float64), torch.randint(0, 4, (6,))
    _compare(per_example_sq_norms(model, ce, x, y), per_example_reference(model, ce, x, y))


@pytest.mark.parametrize("tied", [False, True])
def test_sequence_model_with_layernorm_embedding(tied: bool) -> None:
    torch.manual_seed(0)
    model = SeqModel(tied=tied).double()
    x, y = _seq_batch()
    got = per_example_sq_norms(model, ce_tokens, x, y)
    _compare(got, per_example_reference(model, ce_tokens, x, y))
    assert ("head.weight" in got) != tied  # a tied weight is reported once, under emb.weight


@pytest.mark.parametrize("T", [2, 40])  # both sides of the ghost / materialise crossover
def test_linear_sequence_both_regimes(T: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(4, T, 8, dtype=torch.float64), torch.randn(4, T, 3, dtype=torch.float64)
    _compare(per_example_sq_norms(model, mse, x, y), per_example_reference(model, mse, x, y))


def test_conv_groupnorm_matches_loop() -> None:
    torch.manual_seed(0)
    model = ConvModel().double()
    x, y = torch.randn(5, 2, 6, 11, dtype=torch.float64), torch.randint(0, 3, (5,))
    engine = PerExampleGradNorms(model).attach()
    assert engine.plan_ == {"conv": "conv2d", "gn": "groupnorm", "conv2": "conv2d", "fc": "linear"}
    engine.detach()
    _compare(per_example_sq_norms(model, ce, x, y), per_example_reference(model, ce, x, y))


def test_reused_layer_and_fallback() -> None:
    torch.manual_seed(0)
    model = Reused().double()
    x, y = torch.randn(5, 5, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    got = per_example_sq_norms(model, mse, x, y, policy="fallback")
    _compare(got, per_example_reference(model, mse, x, y))


def test_multihead_attention_as_unit() -> None:
    torch.manual_seed(0)

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(6, 2, batch_first=True)
            self.fc = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.mha(x, x, x)[0])

    model = Attn().double()
    x, y = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(3, 4, 2, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match="policy='fallback'"):
        PerExampleGradNorms(model).attach()
    got = per_example_sq_norms(model, mse, x, y, policy="fallback")
    assert "mha.out_proj.weight" in got
    _compare(got, per_example_reference(model, mse, x, y))


def test_fallback_replays_keyword_arguments() -> None:
    """A causal mask and a key-padding mask passed as keywords: the torch.func replay must
    see them (without, the norms of the attention weights are silently wrong)."""
    torch.manual_seed(0)

    class MaskedAttn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(6, 2, batch_first=True)
            self.fc = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            T = x.shape[1]
            causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)  # shared: not split
            pad = x[..., 0] > 1.0  # per example: split along the batch
            out = self.mha(x, x, x, attn_mask=causal, key_padding_mask=pad, need_weights=False)
            return self.fc(out[0])

    model = MaskedAttn().double()
    x, y = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(3, 4, 2, dtype=torch.float64)
    assert (x[..., 0] > 1.0).any() and not (x[..., 0] > 1.0).all()
    with warnings.catch_warnings():  # torch's performance note on attention under vmap
        warnings.simplefilter("ignore", UserWarning)
        got = per_example_sq_norms(model, mse, x, y, policy="fallback")
    _compare(got, per_example_reference(model, mse, x, y))


def test_policy_raise_warn_and_batchnorm() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double()
    with pytest.raises(InvalidParameterError, match="batch statistics"):
        PerExampleGradNorms(model, policy="fallback").attach()
    with pytest.warns(UserWarning, match="leave out"):
        engine = PerExampleGradNorms(model, policy="warn").attach()
    assert engine.skipped_ == ["1.bias", "1.weight"]
    engine.detach()
    with pytest.raises(InvalidParameterError, match="did you mean 'mean'"):
        PerExampleGradNorms(model, reduction="meen").attach()
    with pytest.raises(DynalensError, match="not found"):
        PerExampleGradNorms(model, units=["blocks.0"]).attach()


def test_hooks_removed_and_outputs_bitwise_equal() -> None:
    model = mlp()
    x = torch.randn(4, 7, dtype=torch.float64)
    ref = model(x)
    with PerExampleGradNorms(model) as engine:
        assert engine.plan_
        out = model(x)
    assert torch.equal(out, ref)
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks
    for p in model.parameters():
        assert not p._backward_hooks


def test_grad_accumulation_and_batch_grad() -> None:
    """Two passes, mean reduction scaled by 1/2: per-example norms and |G_B|² exact."""
    model = mlp()
    x, y = torch.randn(8, 7, dtype=torch.float64), torch.randint(0, 4, (8,))
    engine = PerExampleGradNorms(model, reduction="mean", loss_scale=0.5).attach()
    model.zero_grad(set_to_none=True)
    for k in range(2):
        (ce(model(x[4 * k : 4 * k + 4]), y[4 * k : 4 * k + 4]).mean() * 0.5).backward()
    cap = engine.collect()
    engine.detach()
    ref = per_example_reference(model, ce, x, y)
    _compare(cap.per_example, ref)
    model.zero_grad()
    ce(model(x), y).mean().backward()
    for name, p in model.named_parameters():
        assert cap.batch_size[name] == pytest.approx(8.0)
        assert cap.batch_grad_sq[name] == pytest.approx(p.grad.pow(2).sum().item(), rel=1e-10)


def test_inactive_engine_captures_nothing() -> None:
    model = mlp()
    x, y = torch.randn(4, 7, dtype=torch.float64), torch.randint(0, 4, (4,))
    with PerExampleGradNorms(model) as engine:
        engine.active = False
        ce(model(x), y).mean().backward()
        assert engine.collect().n_examples == 0


def test_bad_loss_shape() -> None:
    model = mlp()
    x, y = torch.randn(4, 7, dtype=torch.float64), torch.randint(0, 4, (4,))
    with pytest.raises(InvalidInputError, match=r"shape \[B\]"):
        per_example_sq_norms(model, lambda o, t: ce(o, t).mean(), x, y)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_backpack_batch_l2_agrees() -> None:
    backpack = pytest.importorskip("backpack")
    from backpack.extensions import BatchL2Grad

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 4)).double()
    x, y = torch.randn(6, 7, dtype=torch.float64), torch.randint(0, 4, (6,))
    ours = per_example_sq_norms(model, ce, x, y)
    bmodel = backpack.extend(model)
    lossfn = backpack.extend(nn.CrossEntropyLoss(reduction="sum"))
    with backpack.backpack(BatchL2Grad()):
        lossfn(bmodel(x), y).backward()
    for name, p in bmodel.named_parameters():
        torch.testing.assert_close(ours[name], p.batch_l2, rtol=1e-9, atol=0)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_opacus_ghost_agrees_on_sequence() -> None:
    pytest.importorskip("opacus")
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(4, 5, 8, dtype=torch.float64), torch.randn(4, 5, 3, dtype=torch.float64)
    ours = per_example_sq_norms(model, mse, x, y)
    gsm = GradSampleModuleFastGradientClipping(
        model, batch_first=True, loss_reduction="sum", use_ghost_clipping=True
    )
    mse(gsm(x), y).sum().backward()
    total = sum(v for v in ours.values())
    torch.testing.assert_close(gsm.get_norm_sample().double().pow(2), total, rtol=1e-6, atol=0)
