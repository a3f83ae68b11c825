"""Patching on transformer-lens bridges and Hugging Face models: equal to
transformer-lens's own get_act_patch_* helpers, and HF models equal to their bridges."""

import pytest
import torch

from dynalens.circuits import activation_patching, logit_diff
from dynalens.errors import CapabilityError
from dynalens.probe.interventions import Intervention, intervene, record_activations
from dynalens.probe.interventions_sites import detect_backend

from ..probe.conftest import hook_count

tl = pytest.importorskip("transformer_lens")
transformers = pytest.importorskip("transformers")
from transformer_lens import patching as tl_patching  # noqa: E402
from transformer_lens.config import TransformerBridgeConfig  # noqa: E402
from transformer_lens.model_bridge.sources import build_bridge_from_module  # noqa: E402

VOCAB, POS = 20, 6


def hf_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=VOCAB)
    return transformers.GPT2LMHeadModel(cfg).eval()


def hf_llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=16,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def native(seed=0):
    cfg = TransformerBridgeConfig(
        d_model=32,
        d_head=8,
        n_heads=4,
        n_layers=2,
        n_ctx=16,
        d_vocab=VOCAB,
        attn_only=False,
        d_mlp=64,
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
    )
    return tl.TransformerBridge.boot_native(cfg).eval()


def hooked_root_module(seed=0):
    """The reference transformer as a legacy-style HookedRootModule (HookPoints, setup())."""
    from types import SimpleNamespace

    from transformer_lens.hook_points import HookPoint
    from transformer_lens.HookedRootModule import HookedRootModule

    from dynalens.circuits import ReferenceConfig, ReferenceTransformer
    from dynalens.circuits.reference import HookSite

    class HookedReference(HookedRootModule):
        forward = ReferenceTransformer.forward

        def __init__(self, ref):
            super().__init__()
            for name, child in ref.named_children():
                setattr(self, name, child)
            for name, mod in list(self.named_modules()):
                if isinstance(mod, HookSite):
                    parent, _, leaf = name.rpartition(".")
                    setattr(self.get_submodule(parent), leaf, HookPoint())
            c = ref.cfg
            self.cfg = SimpleNamespace(
                n_layers=c.n_layers, n_heads=c.n_heads, d_model=c.d_model, d_head=c.d_head,
                d_vocab=c.d_vocab, n_ctx=c.n_ctx, device="cpu", n_key_value_heads=None,
            )  # fmt: skip
            self.setup()

    cfg = ReferenceConfig(n_layers=2, d_model=32, n_heads=4, d_vocab=VOCAB, d_mlp=64)
    return HookedReference(ReferenceTransformer(cfg, seed=seed)).eval()


def make_tl_model(kind):
    if kind == "native":
        return native()
    if kind == "gpt2-bridge":
        return bridge_of(hf_gpt2, "GPT2LMHeadModel")
    return hooked_root_module()


def bridge_of(make, name):
    return build_bridge_from_module(make(), name, hf_config=make().config).eval()


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, VOCAB, (4, POS), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 1) % VOCAB
    answer, wrong = (
        torch.randint(0, VOCAB, (4,), generator=g),
        torch.randint(0, VOCAB, (4,), generator=g),
    )
    return clean, corrupt, logit_diff(answer, wrong)


def all_hooks(model):
    """torch hooks plus transformer-lens's own hook lists."""
    lens = sum(
        len(getattr(m, "fwd_hooks", [])) + len(getattr(m, "bwd_hooks", [])) for m in model.modules()
    )
    return hook_count(model) + lens


HELPERS = {  # component, positions -> transformer-lens helper
    ("resid_pre", "each"): "get_act_patch_resid_pre",
    ("attn_out", "each"): "get_act_patch_attn_out",
    ("mlp_out", "each"): "get_act_patch_mlp_out",
    ("head_out", "each"): "get_act_patch_attn_head_out_by_pos",
    ("head_out", "all"): "get_act_patch_attn_head_out_all_pos",
    ("q", "each"): "get_act_patch_attn_head_q_by_pos",
    ("k", "all"): "get_act_patch_attn_head_k_all_pos",
    ("v", "each"): "get_act_patch_attn_head_v_by_pos",
    ("pattern", "each"): "get_act_patch_attn_head_pattern_by_pos",
    ("pattern", "all"): "get_act_patch_attn_head_pattern_all_pos",
}


@pytest.mark.parametrize("make", ["native", "gpt2-bridge", "hooked-root-module"])
def test_sweeps_equal_transformer_lens_helpers(task, make):
    model = make_tl_model(make)
    clean, corrupt, metric = task
    _, clean_cache = model.run_with_cache(clean)
    mean_metric = lambda logits: metric(logits).mean()  # noqa: E731
    for (component, positions), helper in HELPERS.items():
        before = all_hooks(model)  # transformer-lens's run_with_cache leaves hooks of its own
        ours = activation_patching(
            model, clean, corrupt, metric, components=[component], positions=positions
        )
        assert all_hooks(model) == before
        theirs = getattr(tl_patching, helper)(model, corrupt, clean_cache, mean_metric)
        grid = ours.grid(component)
        assert grid.shape == theirs.shape, helper
        torch.testing.assert_close(grid, theirs.double(), atol=1e-6, rtol=0, msg=helper)


@pytest.mark.parametrize("make", ["native", "gpt2-bridge"])
def test_resid_mid_on_bridges_reaches_the_residual_stream(task, make):
    """Regression: a bridge's hook_resid_mid is an alias of ln2.hook_in, where a write
    changes the MLP's input but not the residual skip; dynalens writes resid_mid through
    attn_out so that patching it everywhere reproduces the clean run."""
    model = native() if make == "native" else bridge_of(hf_gpt2, "GPT2LMHeadModel")
    clean, corrupt, _ = task
    site = "blocks.1.hook_resid_mid"
    assert model.hook_dict[site] is model.hook_dict["blocks.1.ln2.hook_in"]
    model(clean)  # a bridge block wires capture hooks of its own at its first forward
    before = all_hooks(model)
    cache = record_activations(model, clean, [site])
    with intervene(model, [Intervention(site, cache[site])]):
        torch.testing.assert_close(model(corrupt), model(clean), atol=1e-5, rtol=0)
    assert all_hooks(model) == before
    _, tl_cache = model.run_with_cache(clean)
    torch.testing.assert_close(cache[site], tl_cache[site], atol=1e-6, rtol=0)


COMPONENTS = [
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "head_out",
    "q",
    "k",
    "v",
]


@pytest.mark.parametrize(
    ("make", "name"), [(hf_gpt2, "GPT2LMHeadModel"), (hf_llama, "LlamaForCausalLM")]
)
def test_hugging_face_models_equal_their_bridges(task, make, name):
    """Per-head sites split before the output projection (and GQA key/value heads) give
    the numbers transformer-lens's hook points give on a bridge of the same weights."""
    clean, corrupt, metric = task
    hf = make()
    backend = detect_backend(hf)
    assert backend.kind == ("hf-gpt2" if "GPT2" in name else "hf-llama")
    ours = activation_patching(hf, clean, corrupt, metric, components=COMPONENTS, max_rows=40)
    bridge = bridge_of(make, name)
    bridge(clean)  # a bridge block wires capture hooks of its own at its first forward
    before = all_hooks(bridge)
    bridged = activation_patching(bridge, clean, corrupt, metric, components=COMPONENTS)
    assert all_hooks(bridge) == before
    assert ours.cells == bridged.cells
    torch.testing.assert_close(ours.values, bridged.values, atol=1e-6, rtol=0)
    if "Llama" in name:
        assert ours.grid("k").shape == (2, POS, 2)  # two key/value heads
    assert all_hooks(hf) == 0


def test_hugging_face_full_patches_reproduce_clean_runs(task):
    clean, corrupt, _ = task
    hf = hf_llama()
    sites = [
        "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_mid",
        "blocks.1.attn.hook_z",
        "blocks.1.hook_attn_out",
    ]
    cache = record_activations(hf, clean, sites)
    for site in sites[:2]:
        with intervene(hf, [Intervention(site, cache[site])]):
            torch.testing.assert_close(hf(corrupt).logits, hf(clean).logits, atol=1e-5, rtol=0)
    with intervene(hf, [Intervention(sites[2], cache[sites[2]])]):  # every head's z
        by_heads = hf(corrupt).logits
    with intervene(hf, [Intervention(sites[3], cache[sites[3]])]):  # = the attention output
        torch.testing.assert_close(hf(corrupt).logits, by_heads, atol=1e-5, rtol=0)
    assert all_hooks(hf) == 0


def test_hugging_face_pattern_names_the_alternative(task):
    clean, corrupt, metric = task
    with pytest.raises(CapabilityError, match="build_bridge_from_module"):
        activation_patching(hf_gpt2(), clean, corrupt, metric, components=["pattern"])


def test_attribution_on_attention_only_native_bridge(task):
    """transformer-lens's node attribution_patch wants hook_mlp_out and fails on
    attention-only models; dynalens's runs and tracks exact patching."""
    from dynalens.circuits.attribution import attribution_patching

    cfg = TransformerBridgeConfig(
        d_model=32, d_head=8, n_heads=4, n_layers=2, n_ctx=16, d_vocab=VOCAB, attn_only=True,
        d_mlp=None, act_fn="gelu", normalization_type="LN", seed=1,
    )  # fmt: skip
    model = tl.TransformerBridge.boot_native(cfg).eval()
    clean, corrupt, metric = task
    kw = {"components": ["head_out"], "positions": "each"}
    exact = activation_patching(model, clean, corrupt, metric, **kw).effect()
    estimate = attribution_patching(model, clean, corrupt, metric, ig_steps=4, **kw).effect()
    assert torch.corrcoef(torch.stack([exact, estimate]))[0, 1] >= 0.99


def test_attribution_on_hugging_face_equals_its_bridge(task):
    from dynalens.circuits.attribution import attribution_patching

    clean, corrupt, metric = task
    kw = {"components": ["head_out", "mlp_out"], "positions": "each", "ig_steps": 3}
    ours = attribution_patching(hf_gpt2(), clean, corrupt, metric, **kw)
    bridged = attribution_patching(
        bridge_of(hf_gpt2, "GPT2LMHeadModel"), clean, corrupt, metric, **kw
    )
    torch.testing.assert_close(ours.values, bridged.values, atol=1e-5, rtol=0)


def test_edge_attribution_on_native_attention_only_and_hugging_face(task):
    """transformer-lens's edge attribution_patch fails on boot_native; dynalens's runs
    there and on plain Hugging Face models, and its edges sum to the node scores."""
    from dynalens.circuits.edges import edge_attribution_patching

    from .test_edges import assert_edges_sum_to_nodes

    clean, corrupt, metric = task
    cfg = TransformerBridgeConfig(
        d_model=32, d_head=8, n_heads=4, n_layers=2, n_ctx=16, d_vocab=VOCAB, attn_only=True,
        d_mlp=None, act_fn="gelu", normalization_type="LN", seed=1,
    )  # fmt: skip
    native_model = tl.TransformerBridge.boot_native(cfg).eval()
    assert_edges_sum_to_nodes(native_model, clean, corrupt, metric, 2, has_mlp=False)
    hf = hf_gpt2()
    ours = assert_edges_sum_to_nodes(hf, clean, corrupt, metric, 2, True, embed="transformer.wte")
    bridged = edge_attribution_patching(
        bridge_of(hf_gpt2, "GPT2LMHeadModel"), clean, corrupt, metric, ig_steps=2
    )
    assert ours.edges == bridged.edges
    torch.testing.assert_close(ours.values, bridged.values, atol=1e-5, rtol=1e-4)
