"""The Recorder in real loops and on real modules (issue: real models, real loops)."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dynalens
from dynalens.cli import main
from dynalens.errors import InvalidParameterError
from dynalens.probe.sites import resolve_sites

from .conftest import hook_count, train


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            nn.ModuleDict(
                {"attn": nn.ModuleDict({"output": nn.Linear(4, 4)}), "output": nn.Linear(4, 4)}
            )
            for _ in range(2)
        )


def test_a_star_matches_one_level_and_two_stars_any_depth():
    model = Blocks()
    matched = {}
    one = resolve_sites(model, "layer.*.output", matched)
    assert list(one) == ["layer.0.output", "layer.1.output"]  # not layer.0.attn.output
    assert matched == {"layer.*.output": ["layer.0.output", "layer.1.output"]}
    assert list(resolve_sites(model, "layer.*")) == ["layer.0", "layer.1"]
    deep = resolve_sites(model, "layer.**.output")
    assert list(deep) == [
        "layer.0.attn.output",
        "layer.0.output",
        "layer.1.attn.output",
        "layer.1.output",
    ]
    assert list(resolve_sites(model, "**.attn")) == ["layer.0.attn", "layer.1.attn"]


def test_the_readme_hf_pattern_records_only_the_layer_outputs(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model = transformers.BertModel(cfg)
    rec = dynalens.Recorder(model, tmp_path / "s", sites="encoder.layer.*.output", every=1)
    assert list(rec.sites) == ["encoder.layer.0.output", "encoder.layer.1.output"]
    ids = torch.randint(0, 50, (3, 7))
    model(ids).last_hidden_state.sum().backward()
    rec.step(0)
    rec.close()
    assert dynalens.open_store(tmp_path / "s").activations(
        "encoder.layer.1.output", source="batch"
    ).shape == (1, 3, 7, 16)
    assert main(["info", str(tmp_path / "s")]) == 0


def test_gpt2_blocks_glob_records_without_sdpa_liveness_errors(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    with dynalens.Recorder(model, tmp_path / "s", sites="transformer.h.*", every=1) as rec:
        ids = torch.randint(0, 50, (2, 5))
        model(ids, labels=ids).loss.backward()
        rec.step(0)
    assert list(rec.sites) == ["transformer.h.0", "transformer.h.1"]
    assert hook_count(model) == 0


def test_info_says_which_sites_a_pattern_matched(tmp_path, mlp, data, capsys):
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites=["fc*", nn.ReLU], every=1) as rec:
        train(mlp, rec, x, y, steps=1)
    assert main(["info", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "'fc*' matched 2: fc1, fc2" in out and "'type ReLU' matched 2: act1, act2" in out


def test_a_restarted_enumerate_is_refused_at_step(tmp_path, mlp, data):
    x, y = data
    rec = dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1)
    train(mlp, rec, x, y, steps=3)
    mlp(x[:8]).sum().backward()
    with pytest.raises(InvalidParameterError, match="global step"):
        rec.step(0)  # epoch 2 restarts enumerate()
    rec.step(3)  # a global step goes on
    rec.step()  # so does counting
    rec.close()
    assert dynalens.open_store(tmp_path / "s").steps().tolist() == [0, 1, 2, 3, 4]


def test_capture_as_a_single_string(tmp_path, mlp, data):
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", capture="gradients") as rec:
        train(mlp, rec, x, y, steps=1)
    assert rec.capture == ("gradients",)
    store = dynalens.open_store(tmp_path / "s")
    assert store.gradients("fc1").shape == (1, 8, 8)


class KeywordOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 2)

    def forward(self, *, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.inner(hidden_states)


def test_inputs_of_a_module_called_with_keywords_only(tmp_path):
    model = nn.ModuleDict({"blk": KeywordOnly()})
    x = torch.randn(4, 3)
    with dynalens.Recorder(model, tmp_path / "s", sites="blk", capture=("inputs",)) as rec:
        model["blk"](hidden_states=x).sum().backward()
        rec.step(0)
    got = dynalens.open_store(tmp_path / "s").inputs("blk", 0)
    np.testing.assert_array_equal(got, x.numpy())


def test_lstm_with_batch_first_false_subsamples_the_batch_axis(tmp_path):
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5)  # (T, B, F)
    model = nn.ModuleDict({"rnn": lstm})
    x = torch.randn(7, 6, 3)
    with dynalens.Recorder(model, tmp_path / "s", sites="rnn", rows=4) as rec:
        out, _ = lstm(x)
        out.sum().backward()
        rec.step(0)
    store = dynalens.open_store(tmp_path / "s")
    acts = store.activations("rnn", 0, source="batch")
    assert acts.shape == (7, 4, 5)  # all time steps, 4 of the 6 sequences
    assert store.meta["sites"]["rnn"]["axes"] == ["pos", "batch", "feature"]
    kept = [
        j for j in range(6) if any(np.allclose(acts[:, i], out[:, j].detach()) for i in range(4))
    ]
    assert len(kept) == 4


class ViewThenInplace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # a view on 3-d input
        h += x  # in place: replaces the tensor the gradient hook sits on
        return h


def test_missing_gradients_after_an_inplace_op_on_a_view_name_the_cause_every_step(tmp_path):
    model = ViewThenInplace()
    rec = dynalens.Recorder(model, tmp_path / "s", sites="fc", every=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for step in range(3):
            model(torch.randn(2, 3, 4)).sum().backward()
            rec.step(step)
    rec.close()
    msgs = [str(w.message) for w in seen if "no gradient reached" in str(w.message)]
    assert len(msgs) == 3 and all("in-place op" in m and "view" in m for m in msgs)


def test_a_store_opened_before_a_new_run_follows_it_after_refresh(tmp_path, mlp, data):
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1, run="a") as rec:
        train(mlp, rec, x, y, steps=1)
    store = dynalens.open_store(tmp_path / "s")
    rec = dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1, run="b")
    train(mlp, rec, x, y, steps=2)
    rec.flush()
    assert store.run == "a" and store.refresh().run == "b"
    assert store.steps().tolist() == [0, 1]
    train(mlp, rec, x, y, steps=0)
    mlp(x[:8]).sum().backward()
    rec.step(2)
    rec.flush()
    assert store.steps().tolist() == [0, 1, 2]  # no refresh needed within a run
    rec.close()
    pinned = dynalens.open_store(tmp_path / "s", "a")
    assert pinned.refresh().run == "a"
