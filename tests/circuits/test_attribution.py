"""Attribution patching and node-level EAP-IG against exact activation patching."""

from pathlib import Path

import pytest
import torch

from dynalens.circuits import (
    ReferenceConfig,
    ReferenceTransformer,
    activation_patching,
    logit_diff,
)
from dynalens.circuits.attribution import attribution_patching
from dynalens.circuits.tasks import VOCAB, ioi_pairs, train_on_pairs
from dynalens.errors import CapabilityError, InvalidInputError, InvalidParameterError

from ..probe.conftest import hook_count

FIXTURE = Path(__file__).parent / "fixtures" / "ioi_attn_only_2l.pt"
IOI_CONFIG = ReferenceConfig(
    n_layers=2, d_model=64, n_heads=4, d_mlp=None, d_vocab=len(VOCAB), n_ctx=16
)


def pearson(a, b):
    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


@pytest.fixture(scope="module")
def ioi_model():
    """The IOI toy trained by ``train_on_pairs(model, ioi_pairs, steps=150, batch=96)``
    (weights shipped: 170 KB; see test_ioi_toy_trains_from_scratch)."""
    model = ReferenceTransformer(IOI_CONFIG, seed=0)
    model.load_state_dict(torch.load(FIXTURE, weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def ioi():
    pairs = ioi_pairs(64, seed=99)
    return pairs, logit_diff(pairs.answer, pairs.wrong)


def random_task(seed=0, batch=8, pos=7):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 20, (batch, pos), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 5) % 20
    answer, wrong = (
        torch.randint(0, 20, (batch,), generator=g),
        torch.randint(0, 20, (batch,), generator=g),
    )
    return clean, corrupt, logit_diff(answer, wrong)


def test_exact_where_the_metric_is_linear_in_the_node():
    """Without LayerNorm, the logits are linear in the last layer's head outputs, so the
    first-order estimate is the patching effect itself."""
    model = ReferenceTransformer(ReferenceConfig(layer_norm=False, d_mlp=None), seed=2).eval()
    clean, corrupt, metric = random_task()
    for mode in ("denoising", "noising"):
        kw = {"components": ["head_out"], "layers": [1], "positions": "each", "mode": mode}
        exact = activation_patching(model, clean, corrupt, metric, **kw)
        estimate = attribution_patching(model, clean, corrupt, metric, **kw)
        assert estimate.cells == exact.cells
        torch.testing.assert_close(estimate.values, exact.values, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(estimate.clean, exact.clean, atol=1e-5, rtol=0)
        torch.testing.assert_close(estimate.corrupt, exact.corrupt, atol=1e-5, rtol=0)
    assert hook_count(model) == 0


def test_integrated_gradients_complete_at_the_embedding():
    """Σ over the embedding of IG attributions -> m(clean) - m(corrupt) as steps grow."""
    model = ReferenceTransformer(seed=3).eval()
    clean, corrupt, metric = random_task(seed=1)
    gap = (metric(model(clean)) - metric(model(corrupt))).double().detach()
    errors = []
    for steps in (1, 4, 64):
        r = attribution_patching(
            model, clean, corrupt, metric, sites=["hook_embed"], positions="all", ig_steps=steps
        )
        errors.append((r.values[0] - r.base - gap).abs().max().item())
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.02 * gap.abs().max().item()


FAMILIES = {
    "heads by position": {"components": ["head_out"], "positions": "each"},
    "heads, all positions": {"components": ["head_out"], "positions": "all"},
    "resid_pre by position": {"components": ["resid_pre"], "positions": "each"},
    "q/k/v, all positions": {"components": ["q", "k", "v"], "positions": "all"},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_eap_ig_tracks_exact_patching_on_the_trained_ioi_toy(ioi_model, ioi, family):
    """Issue 12: Pearson >= 0.99 with exact patching for every node family, and EAP-IG
    closer than plain attribution. Along the activations it holds everywhere; along the
    embeddings (the default) for all but heads over all positions, whose estimate keeps a
    bias that more steps do not remove (0.987 at m = 16 and at m = 64)."""
    pairs, metric = ioi
    kw = FAMILIES[family]
    exact = activation_patching(ioi_model, pairs.clean, pairs.corrupt, metric, **kw).effect()

    def estimate(**more):
        r = attribution_patching(ioi_model, pairs.clean, pairs.corrupt, metric, **kw, **more)
        return r.effect()

    atp = estimate()
    inputs = estimate(ig_steps=16)
    activations = estimate(ig_steps=16, ig_path="activations")
    assert pearson(activations, exact) >= 0.998
    assert pearson(inputs, exact) >= (0.985 if family == "heads, all positions" else 0.99)
    error = {
        name: (e - exact).abs().mean()
        for name, e in [("atp", atp), ("in", inputs), ("act", activations)]
    }
    assert error["act"] < error["in"] < error["atp"]  # EAP-IG is closer, the activation path most


def test_activation_path_is_complete_for_its_site():
    """Along a site's own activations, the estimates of its nodes sum to the exact effect
    of patching the whole site as steps grow (integrated gradients' completeness), and the
    embedding site's own path is the input path."""
    model = ReferenceTransformer(seed=3).eval()
    clean, corrupt, metric = random_task(seed=1)
    site = "blocks.1.hook_resid_pre"
    exact = activation_patching(model, clean, corrupt, metric, sites=[site], positions="all")
    errors = []
    for steps in (1, 8, 128):
        r = attribution_patching(
            model, clean, corrupt, metric, sites=[site], ig_steps=steps, ig_path="activations"
        )
        errors.append((r.values[0] - exact.values[0]).abs().max().item())
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.01 * (exact.values[0] - exact.base).abs().max().item()
    kw = {"sites": ["hook_embed"], "positions": "each", "ig_steps": 5}
    along_inputs = attribution_patching(model, clean, corrupt, metric, **kw)
    along_itself = attribution_patching(model, clean, corrupt, metric, ig_path="activations", **kw)
    torch.testing.assert_close(along_itself.values, along_inputs.values, atol=1e-5, rtol=0)


def test_activation_path_chunks_equal_one_forward():
    model = ReferenceTransformer(seed=4).eval()
    clean, corrupt, metric = random_task(seed=2)
    kw = {
        "components": ["head_out", "mlp_out", "resid_pre"],
        "ig_steps": 3,
        "ig_path": "activations",
    }
    one = attribution_patching(model, clean, corrupt, metric, **kw)
    chunked = attribution_patching(model, clean, corrupt, metric, max_rows=1, **kw)
    torch.testing.assert_close(chunked.values, one.values, atol=1e-6, rtol=0)
    assert hook_count(model) == 0
    plain = attribution_patching(model, clean, corrupt, metric, components=kw["components"])
    torch.testing.assert_close(one.base, plain.base, atol=1e-6, rtol=0)
    assert "activations" in one.mode


def test_attribution_on_a_random_model_correlates_with_exact():
    model = ReferenceTransformer(seed=4).eval().requires_grad_(False)  # frozen works too
    clean, corrupt, metric = random_task(seed=2)
    kw = {"components": ["head_out", "mlp_out"], "positions": "each"}
    exact = activation_patching(model, clean, corrupt, metric, **kw).effect()
    atp = attribution_patching(model, clean, corrupt, metric, **kw).effect()
    assert pearson(atp, exact) >= 0.99


@pytest.mark.slow
def test_ioi_toy_trains_from_scratch(ioi):
    """The recipe behind the shipped fixture: 150 steps reach 100 % held-out accuracy and
    a large clean/corrupt logit-difference gap."""
    pairs, metric = ioi
    model = train_on_pairs(ReferenceTransformer(IOI_CONFIG, seed=0), ioi_pairs, steps=150, batch=96)
    with torch.no_grad():
        accuracy = (model(pairs.clean)[:, -1].argmax(-1) == pairs.answer).double().mean()
        gap = (metric(model(pairs.clean)) - metric(model(pairs.corrupt))).mean()
    assert accuracy >= 0.99 and gap > 3.0


def test_bad_input():
    model = ReferenceTransformer(seed=0).eval()
    clean, corrupt, metric = random_task()
    with pytest.raises(InvalidParameterError, match="ig_steps"):
        attribution_patching(model, clean, corrupt, metric, ig_steps=0)
    with pytest.raises(InvalidParameterError, match="mode must be"):
        attribution_patching(model, clean, corrupt, metric, mode="mean")
    with pytest.raises(InvalidParameterError, match="ig_path"):
        attribution_patching(model, clean, corrupt, metric, ig_path="embeddings")
    with pytest.raises(InvalidInputError, match="same shape"):
        attribution_patching(model, clean, corrupt[:, :5], metric)
    with pytest.raises(InvalidInputError, match="one value per example"):
        attribution_patching(model, clean, corrupt, lambda lg: metric(lg).mean())
    with pytest.raises(InvalidInputError, match="training mode"):
        attribution_patching(ReferenceTransformer(seed=0), clean, corrupt, metric)
    net = torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.Linear(4, 20)).eval()
    with pytest.raises(CapabilityError, match="embed_site="):
        attribution_patching(net, clean, corrupt, metric, sites=["1"])
    r = attribution_patching(net, clean, corrupt, metric, sites=["1"], embed_site="0")
    exact = activation_patching(net, clean, corrupt, metric, sites=["1"], positions="all")
    torch.testing.assert_close(r.values, exact.values, atol=1e-5, rtol=0)  # linear: exact
