"""The batched engine's shortcuts are exact: prefix replay and changed-rows-only stacking
equal the full per-cell loop (reference transformer, HF GPT-2, transformer-lens bridges),
blocks before a cell's layer really are not run, and hooks and forwards are restored."""

import pytest
import torch
from torch import nn

from dynalens.circuits import (
    ReferenceConfig,
    ReferenceTransformer,
    logit_diff,
    make_cells,
    run_cells,
)
from dynalens.circuits.prefix import first_block, replaying
from dynalens.errors import InvalidInputError
from dynalens.probe.interventions import Intervention, intervene, logits_of, record_activations
from dynalens.probe.interventions_sites import detect_backend

from ..probe.conftest import hook_count

COMPONENTS = ["resid_pre", "resid_mid", "attn_out", "mlp_out", "resid_post", "head_out", "q", "v"]


def reference(n_layers=3):
    cfg = ReferenceConfig(n_layers=n_layers, d_model=16, n_heads=2, d_mlp=32, d_vocab=20)
    return ReferenceTransformer(cfg, seed=3).eval()


def pair(vocab=20, batch=5, pos=6, corrupt_rows=None):
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, vocab, (batch, pos), generator=g)
    corrupt = clean.clone()
    rows = range(batch) if corrupt_rows is None else corrupt_rows
    for r in rows:
        corrupt[r, 3] = (clean[r, 3] + 1) % vocab
    metric = logit_diff(torch.randint(0, vocab, (batch,), generator=g), 1)
    return clean, corrupt, metric


def loop(model, cells, base, source, metric):
    """One forward per cell (float64 metric), no stacking, no replay."""
    cache = record_activations(model, source, list({c.site for c in cells}))
    out = []
    with torch.no_grad():
        for c in cells:
            iv = Intervention(c.site, cache[c.site], positions=c.position, heads=c.head)
            with intervene(model, [iv]):
                out.append(metric(logits_of(model(base))).double())
    return torch.stack(out)


def sweep(model, clean, corrupt, metric, components, **kw):
    backend = detect_backend(model)
    cells = make_cells(backend, clean.shape[1], components)
    sources = record_activations(model, clean, list({c.site for c in cells}))
    fast = run_cells(model, cells, corrupt, sources, metric, **kw)
    return cells, fast


@pytest.mark.parametrize("max_rows", [5, 23])
@pytest.mark.parametrize("corrupt_rows", [None, [0, 3]])
def test_reference_equals_loop_with_and_without_prefix_reuse(max_rows, corrupt_rows):
    model = reference()
    clean, corrupt, metric = pair(corrupt_rows=corrupt_rows)
    cells, fast = sweep(model, clean, corrupt, metric, COMPONENTS, max_rows=max_rows)
    _, full = sweep(
        model, clean, corrupt, metric, COMPONENTS, max_rows=max_rows, reuse_prefix=False
    )
    ref = loop(model, cells, corrupt, clean, metric)
    assert (fast - ref).abs().max() <= 1e-6
    assert (full - ref).abs().max() <= 1e-6
    assert hook_count(model) == 0
    assert not any("forward" in b.__dict__ for b in model.blocks)


def test_blocks_before_the_cells_layer_do_not_run():
    model = reference()
    clean, corrupt, metric = pair()
    calls = {"attn0": 0, "attn2": 0}
    model.blocks[0].attn.register_forward_hook(
        lambda *a: calls.__setitem__("attn0", calls["attn0"] + 1)
    )
    model.blocks[2].attn.register_forward_hook(
        lambda *a: calls.__setitem__("attn2", calls["attn2"] + 1)
    )
    backend = detect_backend(model)
    cells = make_cells(backend, clean.shape[1], ["resid_pre"], layers=[2], positions=[3, 4])
    sources = record_activations(model, clean, ["blocks.2.hook_resid_pre"])
    calls.update(attn0=0, attn2=0)
    values = run_cells(model, cells, corrupt, sources, metric)
    assert calls == {"attn0": 1, "attn2": 2}  # the base run; the cells run block 2 only
    assert (values - loop(model, cells, corrupt, clean, metric)).abs().max() <= 1e-6


def test_cells_that_write_the_base_value_do_not_run_and_give_the_base_metric():
    model = reference()
    clean, corrupt, metric = pair()
    forwards = []
    model.unembed.register_forward_hook(lambda m, a, out: forwards.append(out.shape[0]))
    backend = detect_backend(model)
    # before position 3 clean and corrupt agree at every layer (causal attention)
    cells = make_cells(backend, clean.shape[1], ["resid_pre", "head_out"], positions=[0, 1, 2])
    sources = record_activations(model, clean, list({c.site for c in cells}))
    forwards.clear()
    values = run_cells(model, cells, corrupt, sources, metric)
    assert forwards == [5]  # the base run only
    with torch.no_grad():
        base = metric(model(corrupt)).double()
    assert torch.equal(values, base.expand_as(values))


def test_only_changed_examples_are_stacked():
    model = reference()
    clean, corrupt, metric = pair(corrupt_rows=[1, 4])
    rows = []
    model.unembed.register_forward_hook(lambda m, a, out: rows.append(out.shape[0]))
    backend = detect_backend(model)
    cells = make_cells(backend, clean.shape[1], ["resid_pre"], layers=[0], positions=[3])
    sources = record_activations(model, clean, [cells[0].site])
    rows.clear()
    values = run_cells(model, cells, corrupt, sources, metric)
    assert rows == [5, 2]  # base run, then the two corrupted examples
    assert (values - loop(model, cells, corrupt, clean, metric)).abs().max() <= 1e-6


def test_first_block_by_module_identity():
    model = reference()
    backend = detect_backend(model)
    sites = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.2.mlp.W_in"]
    assert first_block(backend, sites) == {sites[0]: 0, sites[1]: 0, sites[2]: 1, sites[3]: 2}
    plain = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    assert first_block(detect_backend(plain), ["0"]) == {"0": 0}


def test_replay_restores_forward_on_exceptions():
    model = reference()
    blocks = list(model.blocks)
    with pytest.raises(RuntimeError, match="inside"):
        with replaying(blocks[:2], [torch.zeros(2, 6, 16)] * 2, 2, torch.tensor([0, 1, 1])):
            assert model.blocks[0](torch.ones(1)).shape == (3, 6, 16)
            raise RuntimeError("inside")
    assert not any("forward" in b.__dict__ for b in blocks)


def test_batch_statistics_in_eval_mode_are_refused():
    model = reference()
    model.blocks[1].norm = nn.BatchNorm1d(16, track_running_stats=False).eval()
    clean, corrupt, metric = pair()
    backend = detect_backend(model)
    cells = make_cells(backend, clean.shape[1], ["resid_pre"], layers=[1])
    with pytest.raises(InvalidInputError, match="batch statistics"):
        run_cells(model, cells, corrupt, {cells[0].site: clean.float()}, metric)


tl = pytest.importorskip("transformer_lens")
transformers = pytest.importorskip("transformers")


def hf_gpt2(n_layers=3):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=n_layers, n_embd=16, n_head=2, n_positions=16, vocab_size=20
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def gpt2_bridge():
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    hf = hf_gpt2()
    return build_bridge_from_module(hf, "GPT2LMHeadModel", hf_config=hf.config).eval()


@pytest.mark.parametrize("make", [hf_gpt2, gpt2_bridge])
def test_hugging_face_and_bridge_prefix_reuse_equals_loop(make):
    model = make()
    clean, corrupt, metric = pair(corrupt_rows=[0, 2, 4])
    comps = ["resid_pre", "attn_out", "mlp_out", "head_out"]
    cells, fast = sweep(model, clean, corrupt, metric, comps, max_rows=17)
    backend = detect_backend(model)
    assert max(first_block(backend, list({c.site for c in cells})).values()) == 2
    ref = loop(model, cells, corrupt, clean, metric)
    assert (fast - ref).abs().max() <= 1e-6
    blocks = backend.blocks()
    assert blocks is not None and not any("forward" in b.__dict__ for b in blocks)


def hf_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=3,
        hidden_size=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=32,
        vocab_size=20,
        max_position_embeddings=16,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("make", [hf_gpt2, hf_llama])
def test_causal_models_continue_from_cached_keys_and_values(make):
    """Cells at position p run positions p.. only (keys and values of earlier positions
    from the base run, as in generation); equal to the loop, and to the full forward."""
    model = make()
    clean, corrupt, metric = pair(corrupt_rows=[1, 2, 4])
    lengths = []
    head = model.lm_head
    head.register_forward_hook(lambda m, a, out: lengths.append(out.shape[1]))
    comps = ["resid_pre", "mlp_out", "head_out", "k"]
    cells, fast = sweep(model, clean, corrupt, metric, comps, max_rows=11)
    assert {1, 2, 3} <= set(lengths) and max(lengths) == 6  # positions 3.., 4.., 5.. and base
    _, full = sweep(model, clean, corrupt, metric, comps, reuse_prefix=False)
    ref = loop(model, cells, corrupt, clean, metric)
    assert (fast - ref).abs().max() <= 1e-6
    assert (full - ref).abs().max() <= 1e-6
