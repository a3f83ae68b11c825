"""Edge attribution patching (EAP, EAP-IG): chain-rule identity, exact edges, bad input."""

from pathlib import Path

import pytest
import torch

from dynalens.circuits import (
    ReferenceConfig,
    ReferenceTransformer,
    attribution_patching,
    logit_diff,
    path_patching,
)
from dynalens.circuits.edges import edge_attribution_patching
from dynalens.circuits.tasks import VOCAB, ioi_pairs
from dynalens.errors import CapabilityError, InvalidParameterError

from ..probe.conftest import hook_count


def random_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 20, (5, 7), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 4) % 20
    answer, wrong = torch.randint(0, 20, (5,), generator=g), torch.randint(0, 20, (5,), generator=g)
    return clean, corrupt, logit_diff(answer, wrong)


def node_sums(edges):
    sums = {}
    for (sender, _), values in zip(edges.edges, edges.values):
        sums[sender] = sums.get(sender, 0) + values
    return sums


def assert_edges_sum_to_nodes(
    model, clean, corrupt, metric, steps, has_mlp, embed="hook_embed", path="inputs"
):
    """The chain rule through the residual stream: a sender's edges sum to its node."""
    edges = edge_attribution_patching(model, clean, corrupt, metric, ig_steps=steps, ig_path=path)
    components = ["head_out", "mlp_out"] if has_mlp else ["head_out"]
    kw = {"positions": "all", "ig_steps": steps, "ig_path": path}
    nodes = attribution_patching(model, clean, corrupt, metric, components=components, **kw)
    embedding = attribution_patching(model, clean, corrupt, metric, sites=[embed], **kw)
    sums = node_sums(edges)
    for cell, values in zip(nodes.cells, nodes.values - nodes.base[None]):
        name = f"a{cell.layer}.h{cell.head}" if cell.component == "head_out" else f"m{cell.layer}"
        torch.testing.assert_close(sums[name], values, atol=1e-5, rtol=1e-5)
    in_embedding = embedding.values[0] - embedding.base
    torch.testing.assert_close(sums["input"], in_embedding, atol=1e-5, rtol=1e-5)
    return edges


@pytest.mark.parametrize("d_mlp", [64, None])
@pytest.mark.parametrize(("steps", "path"), [(1, "inputs"), (3, "inputs"), (3, "activations")])
def test_edges_of_a_sender_sum_to_its_node_attribution(d_mlp, steps, path):
    model = ReferenceTransformer(ReferenceConfig(d_mlp=d_mlp), seed=0).eval()
    edges = assert_edges_sum_to_nodes(model, *random_task(), steps, d_mlp is not None, path=path)
    # receivers: 24 q/k/v inputs (+ 2 MLPs) + logits; senders upstream of each
    assert len(edges.edges) == (110 if d_mlp else 81)
    assert hook_count(model) == 0
    table = edges.table()
    assert list(table.columns) == ["sender", "receiver", "score", "mode"]
    assert edges.score("a0.h1", "a1.h2<k>") == pytest.approx(
        float(table.query("sender == 'a0.h1' and receiver == 'a1.h2<k>'")["score"].iloc[0])
    )


def test_eap_ig_tracks_exact_edge_patching_on_the_trained_ioi_toy():
    cfg = ReferenceConfig(
        n_layers=2, d_model=64, n_heads=4, d_mlp=None, d_vocab=len(VOCAB), n_ctx=16
    )
    model = ReferenceTransformer(cfg)
    fixture = Path(__file__).parent / "fixtures" / "ioi_attn_only_2l.pt"
    model.load_state_dict(torch.load(fixture, weights_only=True))
    model.eval()
    pairs = ioi_pairs(64, seed=99)
    metric = logit_diff(pairs.answer, pairs.wrong)
    exact = {}  # path patching with frozen MLPs and heads = the exact edge intervention
    senders = [(0, h) for h in range(4)]
    for c in "qkv":
        for head in range(4):
            r = path_patching(
                model, pairs.clean, pairs.corrupt, metric, receivers=[(c, 1, head)], senders=senders
            )
            for cell, effect in zip(r.cells, r.effect()):
                exact[(f"a0.h{cell.head}", f"a1.h{head}<{c}>")] = effect.item()
    r = path_patching(model, pairs.clean, pairs.corrupt, metric, receivers="logits")
    for cell, effect in zip(r.cells, r.effect()):
        exact[(f"a{cell.layer}.h{cell.head}", "logits")] = effect.item()
    truth = torch.tensor(list(exact.values()), dtype=torch.float64)
    errors, kw = {}, {"ig_steps": 1, "ig_path": "inputs"}
    for kw["ig_steps"], kw["ig_path"], least in [(1, "inputs", 0.96), (16, "inputs", 0.97),
                                                 (8, "activations", 0.99)]:  # fmt: skip
        edges = edge_attribution_patching(model, pairs.clean, pairs.corrupt, metric, **kw)
        estimate = torch.tensor([edges.score(u, v) for u, v in exact], dtype=torch.float64)
        assert torch.corrcoef(torch.stack([estimate, truth]))[0, 1] >= least
        errors[kw["ig_path"], kw["ig_steps"]] = (estimate - truth).abs().mean()
    # EAP-IG is closer than EAP, along the activations most
    assert errors["activations", 8] < errors["inputs", 16] < errors["inputs", 1]


def test_bad_input():
    clean, corrupt, metric = random_task()
    net = torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.Linear(4, 20)).eval()
    with pytest.raises(CapabilityError, match="layered model"):
        edge_attribution_patching(net, clean, corrupt, metric)
    model = ReferenceTransformer(seed=0).eval()
    with pytest.raises(InvalidParameterError, match="ig_steps"):
        edge_attribution_patching(model, clean, corrupt, metric, ig_steps=0)
    with pytest.raises(InvalidParameterError, match="ig_path"):
        edge_attribution_patching(model, clean, corrupt, metric, ig_path="embeddings")
    edges = edge_attribution_patching(model, clean, corrupt, metric)
    with pytest.raises(InvalidParameterError, match="edges run from earlier to later"):
        edges.score("a1.h0", "a0.h0<q>")


@pytest.mark.parametrize("path", ["inputs", "activations"])
def test_integration_steps_stacked_on_the_batch_axis_equal_one_step_per_forward(monkeypatch, path):
    import dynalens.circuits.edges as edges_module

    model = ReferenceTransformer(ReferenceConfig(d_mlp=32), seed=1).eval()
    task = random_task(2)
    stacked = edge_attribution_patching(model, *task, ig_steps=5, ig_path=path)
    rows_per_step = 5 * (1 if path == "inputs" else 1 + 2 * 2)  # batch x interpolated sites
    for rows in (rows_per_step, 2 * rows_per_step):  # one step, then two steps per forward
        monkeypatch.setattr(edges_module, "_IG_ROWS", rows)
        alone = edge_attribution_patching(model, *task, ig_steps=5, ig_path=path)
        assert alone.edges == stacked.edges
        torch.testing.assert_close(alone.values, stacked.values, atol=1e-6, rtol=1e-6)
