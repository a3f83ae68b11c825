"""Path patching: per-sender loop, linearity, transformer-lens's direct path, bad input."""

import contextlib
import io

import pytest
import torch

from dynalens.circuits import ReferenceConfig, ReferenceTransformer, activation_patching, logit_diff
from dynalens.circuits.path_patching import path_patching
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.probe.interventions import Intervention, intervene, logits_of, record_activations

from ..probe.conftest import hook_count


@pytest.fixture(scope="module")
def model():
    cfg = ReferenceConfig(n_layers=3, d_model=32, n_heads=4, d_mlp=64)
    return ReferenceTransformer(cfg, seed=5).eval()


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 20, (5, 7), generator=g)
    corrupt = clean.clone()
    corrupt[:, 1] = (corrupt[:, 1] + 7) % 20
    answer, wrong = torch.randint(0, 20, (5,), generator=g), torch.randint(0, 20, (5,), generator=g)
    return clean, corrupt, logit_diff(answer, wrong)


def path_loop(model, base, source, metric, sender, receivers, freeze_mlps, n_layers=3):
    """Wang et al.'s three steps for one sender, written out without batching."""
    z = [f"blocks.{lay}.attn.hook_z" for lay in range(n_layers)]
    mlps = [f"blocks.{lay}.hook_mlp_out" for lay in range(n_layers)] if freeze_mlps else []
    recv_sites = {
        f"blocks.{lay}.attn.hook_{c}" if c != "mlp_out" else f"blocks.{lay}.hook_mlp_out"
        for c, lay, _ in receivers
    }
    mlps = [m for m in mlps if m not in recv_sites]
    b_acts = record_activations(model, base, z + mlps)
    s_z = record_activations(model, source, z)
    frozen = []
    for lay, site in enumerate(z):
        value = b_acts[site].clone()
        if lay == sender[0]:
            value[:, :, sender[1]] = s_z[site][:, :, sender[1]]
        frozen.append(Intervention(site, value))
    frozen += [Intervention(m, b_acts[m]) for m in mlps]
    with intervene(model, frozen):
        if not receivers:
            return metric(logits_of(model(base))).double()
        got = record_activations(model, base, sorted(recv_sites))
    patch = []
    for c, lay, h in receivers:
        site = f"blocks.{lay}.hook_mlp_out" if c == "mlp_out" else f"blocks.{lay}.attn.hook_{c}"
        patch.append(Intervention(site, got[site], heads=h))
    with intervene(model, patch):
        return metric(logits_of(model(base))).double()


@pytest.mark.parametrize("max_rows", [5, 12, 1000])
@pytest.mark.parametrize(
    ("receivers", "freeze_mlps", "mode"),
    [
        ([("q", 2, 1), ("v", 2, 3)], True, "denoising"),
        ([("k", 1, 0)], False, "noising"),
        ([("mlp_out", 2, None)], True, "denoising"),
        ("logits", True, "noising"),
    ],
)
def test_batched_equals_per_sender_loop(model, task, max_rows, receivers, freeze_mlps, mode):
    clean, corrupt, metric = task
    r = path_patching(model, clean, corrupt, metric, receivers=receivers, mode=mode,
                      freeze_mlps=freeze_mlps, max_rows=max_rows)  # fmt: skip
    base, source = (corrupt, clean) if mode == "denoising" else (clean, corrupt)
    recv = [] if receivers == "logits" else receivers
    expected = torch.stack([
        path_loop(model, base, source, metric, (c.layer, c.head), recv, freeze_mlps)
        for c in r.cells
    ])  # fmt: skip
    torch.testing.assert_close(r.values, expected, atol=1e-6, rtol=0)
    assert hook_count(model) == 0


def test_last_layer_senders_to_logits_equal_activation_patching(model, task):
    clean, corrupt, metric = task
    senders = [(2, h) for h in range(4)]
    for mode in ("denoising", "noising"):
        path = path_patching(
            model, clean, corrupt, metric, senders=senders, mode=mode, freeze_mlps=False
        )
        act = activation_patching(
            model, clean, corrupt, metric, components=["head_out"], layers=[2],
            positions="all", mode=mode,
        )  # fmt: skip
        torch.testing.assert_close(path.values, act.values, atol=1e-6, rtol=0)


def test_freezing_mlps_changes_paths_through_them(model, task):
    clean, corrupt, metric = task
    kw = {"receivers": "logits", "senders": [(0, h) for h in range(4)]}
    frozen = path_patching(model, clean, corrupt, metric, freeze_mlps=True, **kw)
    free = path_patching(model, clean, corrupt, metric, freeze_mlps=False, **kw)
    assert not torch.allclose(frozen.values, free.values)


def test_equals_transformer_lens_direct_path():
    pytest.importorskip("transformer_lens")
    transformers = pytest.importorskip("transformers")
    from transformer_lens import patching as tl_patching
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    def hf():
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=20)
        return transformers.GPT2LMHeadModel(cfg).eval()

    bridge = build_bridge_from_module(hf(), "GPT2LMHeadModel", hf_config=hf().config).eval()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 20, (4, 6), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 1) % 20
    metric = logit_diff(3, 4)
    _, clean_cache = bridge.run_with_cache(clean)
    _, corrupt_cache = bridge.run_with_cache(corrupt)
    hf_model = hf()
    for component in "qkv":
        for src in (2,):
            with contextlib.redirect_stderr(io.StringIO()):
                theirs = tl_patching.get_act_patch_direct_path(
                    bridge, corrupt, clean_cache, corrupt_cache, lambda lg: metric(lg).mean(),
                    src_layer=0, src_head=src, component=component, verbose=False,
                )  # fmt: skip
            for m in (bridge, hf_model):  # the bridge, and the plain HF model by module paths
                ours = torch.stack([
                    path_patching(m, clean, corrupt, metric, receivers=[(component, 1, dst)],
                                  senders=[(0, src)]).mean()[0]
                    for dst in range(4)
                ])  # fmt: skip
                torch.testing.assert_close(ours, theirs[1].double(), atol=1e-6, rtol=0)


BACKENDS = ["native", "gpt2-bridge", "hooked-root-module", "hf-gpt2", "hf-llama"]
RECEIVERS = [[("q", 1, 1)], [("k", 1, 1), ("v", 1, 0)], [("mlp_out", 1, None)], "logits"]


@pytest.fixture(scope="module")
def backends():
    """Two-layer models of every backend, built once (transformer-lens imports are slow)."""
    pytest.importorskip("transformer_lens")
    pytest.importorskip("transformers")
    from .test_backends import bridge_of, hf_gpt2, hf_llama, hooked_root_module, native

    return {
        "native": native(),
        "gpt2-bridge": bridge_of(hf_gpt2, "GPT2LMHeadModel"),
        "hooked-root-module": hooked_root_module(),
        "hf-gpt2": hf_gpt2(),
        "hf-llama": hf_llama(),  # grouped-query attention: k / v receivers are kv heads
    }


@pytest.fixture(scope="module")
def small_task():
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 20, (3, 6), generator=g)
    corrupt = clean.clone()
    corrupt[:, 1] = (corrupt[:, 1] + 7) % 20
    return clean, corrupt, logit_diff(torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]))


@pytest.mark.parametrize("receivers", RECEIVERS, ids=["q", "k+v", "mlp", "logits"])
@pytest.mark.parametrize("kind", BACKENDS)
def test_every_receiver_on_every_backend(backends, small_task, kind, receivers):
    """Head q/k/v inputs, MLPs and the logits on transformer-lens bridges (boot_native
    too, where transformer-lens's direct path raises NotImplementedError), a
    HookedRootModule and plain Hugging Face GPT-2 / Llama: the batched engine equals the
    per-sender loop, and the paths move the metric."""
    model = backends[kind]
    clean, corrupt, metric = small_task
    r = path_patching(model, clean, corrupt, metric, receivers=receivers, max_rows=4)
    recv = [] if receivers == "logits" else receivers
    expected = torch.stack([
        path_loop(model, corrupt, clean, metric, (c.layer, c.head), recv, True, n_layers=2)
        for c in r.cells
    ])  # fmt: skip
    torch.testing.assert_close(r.values, expected, atol=1e-6, rtol=0)
    # Hugging Face's initialisation (std 0.02) leaves attention nearly uniform, so a query
    # moves the metric by about 1e-6 there; every other receiver by far more
    assert (r.values - r.base).abs().max() > (5e-7 if receivers == RECEIVERS[0] else 1e-4)


@pytest.mark.parametrize("kind", BACKENDS)
def test_last_layer_senders_to_logits_equal_activation_patching_on_every_backend(
    backends, small_task, kind
):
    """Guide test 4: the paths of the last layer's heads to the logits, MLPs not frozen,
    are those heads' whole effect."""
    model = backends[kind]
    clean, corrupt, metric = small_task
    senders = [(1, h) for h in range(4)]
    path = path_patching(model, clean, corrupt, metric, senders=senders, freeze_mlps=False)
    act = activation_patching(
        model, clean, corrupt, metric, components=["head_out"], layers=[1], positions="all"
    )
    torch.testing.assert_close(path.values, act.values, atol=1e-6, rtol=0)


@pytest.mark.parametrize("receivers", RECEIVERS[2:], ids=["mlp", "logits"])
def test_gpt2_bridge_equals_the_plain_hf_model(backends, small_task, receivers):
    clean, corrupt, metric = small_task
    kw = {"receivers": receivers, "freeze_mlps": True}
    bridge = path_patching(backends["gpt2-bridge"], clean, corrupt, metric, **kw)
    plain = path_patching(backends["hf-gpt2"], clean, corrupt, metric, **kw)
    torch.testing.assert_close(bridge.values, plain.values, atol=1e-5, rtol=0)


def test_closed_form_on_the_reference_model(task):
    """With MLPs and other heads frozen, a receiver reads its base input plus the sender's
    direct write Δ = (z_h(x_s) - z_h(x_b)) W_O^h (float64, written out by hand)."""
    clean, corrupt, metric = task
    cfg = ReferenceConfig(n_layers=3, d_model=32, n_heads=4, d_mlp=64)
    model = ReferenceTransformer(cfg, seed=5).eval().double()
    names = ["blocks.0.attn.hook_z", "blocks.1.hook_resid_mid", "blocks.2.hook_resid_post"]
    at_base = record_activations(model, corrupt, names)
    at_source = record_activations(model, clean, names[:1])
    senders = [(0, h) for h in range(4)]
    to_logits = path_patching(model, clean, corrupt, metric, senders=senders)
    to_mlp = path_patching(
        model, clean, corrupt, metric, senders=senders, receivers=[("mlp_out", 1, None)]
    )
    block = model.blocks[1]
    for h in range(4):
        delta = (at_source[names[0]] - at_base[names[0]])[:, :, h] @ model.blocks[0].attn.W_O[h]
        with torch.no_grad():
            logits = model.unembed(model.ln_final(at_base[names[2]] + delta))
            torch.testing.assert_close(to_logits.values[h], metric(logits), atol=1e-10, rtol=0)
            mlp_out = block.mlp(block.ln2(at_base[names[1]] + delta))
            with intervene(model, [Intervention("blocks.1.hook_mlp_out", mlp_out)]):
                expected = metric(model(corrupt))
        torch.testing.assert_close(to_mlp.values[h], expected, atol=1e-10, rtol=0)


def test_bad_input(model, task):
    clean, corrupt, metric = task
    with pytest.raises(InvalidInputError, match="before the first receiver layer 1"):
        path_patching(model, clean, corrupt, metric, receivers=[("q", 1, 0)], senders=[(1, 0)])
    with pytest.raises(InvalidParameterError, match="component in"):
        path_patching(model, clean, corrupt, metric, receivers=[("pattern", 1, 0)])
    with pytest.raises(InvalidInputError, match=r"head must be in 0\.\.3"):
        path_patching(model, clean, corrupt, metric, receivers=[("q", 1, 4)])
    with pytest.raises(InvalidParameterError, match="no head"):
        path_patching(model, clean, corrupt, metric, receivers=[("mlp_out", 1, 0)])
    with pytest.raises(InvalidParameterError, match="receivers must be"):
        path_patching(model, clean, corrupt, metric, receivers="resid")
    with pytest.raises(InvalidInputError, match="same shape"):
        path_patching(model, clean, corrupt[:, :3], metric)
    with pytest.raises(InvalidParameterError, match="mode must be"):
        path_patching(model, clean, corrupt, metric, mode="mean")
