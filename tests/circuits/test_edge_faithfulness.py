"""Edge-level circuit faithfulness: a float64 per-receiver forward written out by hand,
the full / empty circuits, node faithfulness, batching, backends, bad input."""

import math
from pathlib import Path

import pytest
import torch

from dynalens.circuits import ReferenceConfig, ReferenceTransformer, logit_diff
from dynalens.circuits.edge_faithfulness import (
    edge_faithfulness,
    edge_faithfulness_curve,
    edges_among,
)
from dynalens.circuits.edges import edge_attribution_patching, edge_graph
from dynalens.circuits.faithfulness import circuit_nodes, faithfulness
from dynalens.circuits.results import Cell
from dynalens.circuits.tasks import VOCAB, ioi_pairs
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.probe.interventions import record_activations

from ..probe.conftest import hook_count


def make_model(d_mlp=64, seed=7):
    cfg = ReferenceConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=d_mlp)
    return ReferenceTransformer(cfg, seed=seed).eval()


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 20, (6, 7), generator=g)
    corrupt = clean.clone()
    corrupt[:, 3] = (corrupt[:, 3] + 9) % 20
    answer, wrong = torch.randint(0, 20, (6,), generator=g), torch.randint(0, 20, (6,), generator=g)
    metric = logit_diff(answer, wrong)
    return clean, corrupt, metric


def random_circuit(model, seed, share=0.5):
    edges = edge_graph(model).edges()
    keep = torch.rand(len(edges), generator=torch.Generator().manual_seed(seed)) < share
    return [e for e, k in zip(edges, keep) if k]


def by_hand(model, clean, corrupt, circuit):
    """The definition, one receiver at a time, in float64 from the reference model's
    weights: in_v = constants + Σ_{u->v ∈ C} w_u(this run) + Σ_{u->v ∉ C} w_u(corrupt)."""
    graph, kept = edge_graph(model), set(circuit)
    blocks, t = model.blocks, clean.shape[1]
    sites = ["hook_embed"] + [f"blocks.{i}.attn.hook_z" for i in range(2)]
    sites += [f"blocks.{i}.hook_mlp_out" for i in range(2) if graph.has_mlp]
    at_corrupt = record_activations(model, corrupt, sites)
    ablated = {"input": at_corrupt["hook_embed"]}
    for lay, block in enumerate(blocks):
        for h in range(4):
            ablated[f"a{lay}.h{h}"] = at_corrupt[sites[1 + lay]][:, :, h] @ block.attn.W_O[h]
        if graph.has_mlp:
            ablated[f"m{lay}"] = at_corrupt[f"blocks.{lay}.hook_mlp_out"]
    writes = {"input": model.embed(clean)}
    constant = model.pos_embed(torch.arange(t))

    def read(v, bias_layers):
        total = constant + sum(blocks[i].attn.b_O for i in range(bias_layers))
        for u in graph.senders_of(v):
            total = total + (writes[u] if (u, v) in kept else ablated[u])
        return total

    mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
    for lay, block in enumerate(blocks):
        attn = block.attn
        for h in range(4):
            q, k, v = (
                block.ln1(read(f"a{lay}.h{h}<{c}>", lay)) @ w[h]
                for c, w in zip("qkv", (attn.W_Q, attn.W_K, attn.W_V))
            )
            scores = (q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])).masked_fill(~mask, -math.inf)
            writes[f"a{lay}.h{h}"] = torch.softmax(scores, -1) @ v @ attn.W_O[h]
        if graph.has_mlp:
            writes[f"m{lay}"] = block.mlp(block.ln2(read(f"m{lay}", lay + 1)))
    return model.unembed(model.ln_final(read("logits", 2)))


@pytest.mark.parametrize("d_mlp", [64, None])
def test_equals_the_per_receiver_forward_written_out_by_hand(task, d_mlp):
    clean, corrupt, metric = task
    model = make_model(d_mlp).double()
    circuits = [random_circuit(model, seed) for seed in range(3)]
    got = edge_faithfulness(model, clean, corrupt, metric, circuits, max_rows=100)
    with torch.no_grad():
        expected = torch.stack([metric(by_hand(model, clean, corrupt, c)) for c in circuits])
    torch.testing.assert_close(got.values, expected, atol=1e-10, rtol=0)
    assert ((got.values - got.clean).abs().amax(1) > 0.05).all()  # not the full model ...
    assert ((got.values - got.corrupt).abs().amax(1) > 0.05).all()  # ... nor the corrupt one
    assert hook_count(model) == 0


@pytest.mark.parametrize("d_mlp", [64, None])
def test_full_edge_set_is_one_and_empty_is_zero(task, d_mlp):
    clean, corrupt, metric = task
    model = make_model(d_mlp)
    every = edge_graph(model).edges()
    f = edge_faithfulness(model, clean, corrupt, metric, [every, []])
    torch.testing.assert_close(f.values[0], f.clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(f.values[1], f.corrupt, atol=1e-5, rtol=0)
    assert f.faithfulness().tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    mean = edge_faithfulness(model, clean, corrupt, metric, [every], ablation="mean")
    torch.testing.assert_close(mean.values[0], f.clean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("d_mlp", [64, None])
@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_all_edges_among_a_node_set_equal_node_faithfulness(task, d_mlp, ablation):
    clean, corrupt, metric = task
    model = make_model(d_mlp)
    nodes = circuit_nodes(model)
    sets = [nodes[:1] + nodes[3:6], [nodes[0], nodes[5], nodes[-1]], nodes[1:], nodes[::2]]
    kw = {"ablation": ablation, "reference": clean[:3] if ablation == "mean" else None}
    node_f = faithfulness(model, clean, corrupt, metric, sets, **kw)
    among = [edges_among(model, s) for s in sets]
    edge_f = edge_faithfulness(model, clean, corrupt, metric, among, **kw)
    torch.testing.assert_close(edge_f.values, node_f.values, atol=1e-5, rtol=0)
    assert len(edges_among(model, nodes)) == len(edge_graph(model).edges())


def test_batched_pairs_and_circuits_equal_the_per_pair_loop(task):
    clean, corrupt, metric = task
    answer, wrong = metric.params["answer"], metric.params["wrong"]
    model = make_model()
    circuits = [random_circuit(model, seed) for seed in range(4)]
    together = edge_faithfulness(model, clean, corrupt, metric, circuits, max_rows=1)
    for b in range(clean.shape[0]):
        one = slice(b, b + 1)
        per_pair = logit_diff(answer[one], wrong[one])
        alone = edge_faithfulness(model, clean[one], corrupt[one], per_pair, circuits)
        torch.testing.assert_close(together.values[:, b], alone.values[:, 0], atol=1e-6, rtol=0)


def test_curve_on_the_trained_ioi_toy():
    cfg = ReferenceConfig(
        n_layers=2, d_model=64, n_heads=4, d_mlp=None, d_vocab=len(VOCAB), n_ctx=16
    )
    model = ReferenceTransformer(cfg)
    fixture = Path(__file__).parent / "fixtures" / "ioi_attn_only_2l.pt"
    model.load_state_dict(torch.load(fixture, weights_only=True))
    model.eval()
    pairs = ioi_pairs(64, seed=99)
    metric = logit_diff(pairs.answer, pairs.wrong)
    scores = edge_attribution_patching(model, pairs.clean, pairs.corrupt, metric, ig_steps=8)
    sizes = [0, 10, 20, len(scores.edges)]
    curve = edge_faithfulness_curve(model, pairs.clean, pairs.corrupt, metric, scores, sizes=sizes)
    f = curve.faithfulness().tolist()
    assert curve.sizes() == sizes
    assert f[0] == pytest.approx(0.0, abs=1e-6) and f[-1] == pytest.approx(1.0, abs=1e-6)
    assert f[2] >= 0.9  # the top quarter of the 81 edges by EAP-IG carries 90 %


def test_default_curve_sizes(task):
    clean, corrupt, metric = task
    model = make_model()
    scores = edge_attribution_patching(model, clean, corrupt, metric)
    curve = edge_faithfulness_curve(model, clean, corrupt, metric, scores)
    n = len(scores.edges)
    assert curve.sizes() == sorted({round(n * i / 32) for i in range(33)})
    f = curve.faithfulness()
    assert f[0].item() == pytest.approx(0.0, abs=1e-5) and f[-1].item() == pytest.approx(
        1.0, abs=1e-5
    )


def test_bad_input(task):
    clean, corrupt, metric = task
    model = make_model()
    with pytest.raises(InvalidInputError, match="not edges of this model"):
        edge_faithfulness(model, clean, corrupt, metric, [[("a1.h0", "a0.h0<q>")]])
    with pytest.raises(InvalidInputError, match="iterable of"):
        edge_faithfulness(model, clean, corrupt, metric, [["a0.h0"]])
    with pytest.raises(InvalidParameterError, match="ablation must be"):
        edge_faithfulness(model, clean, corrupt, metric, [[]], ablation="zero")
    with pytest.raises(InvalidInputError, match="same shape"):
        edge_faithfulness(model, clean, corrupt[:, :4], metric, [[]])
    with pytest.raises(InvalidInputError, match="not a node of the edge graph"):
        edges_among(model, [Cell("resid_pre", 0, "blocks.0.hook_resid_pre")])
    scores = edge_attribution_patching(model, clean, corrupt, metric)
    with pytest.raises(InvalidParameterError, match=r"sizes \[999\] out of range"):
        edge_faithfulness_curve(model, clean, corrupt, metric, scores, sizes=[999])


@pytest.mark.parametrize("kind", ["native", "hf-gpt2", "hf-llama"])
def test_backends_full_empty_and_node_sets(kind):
    pytest.importorskip("transformer_lens")
    pytest.importorskip("transformers")
    from .test_backends import hf_gpt2, hf_llama, native

    model = {"native": native, "hf-gpt2": hf_gpt2, "hf-llama": hf_llama}[kind]()
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 20, (4, 6), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 5) % 20
    metric = logit_diff(torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8]))
    model(clean)  # transformer-lens bridges wire hooks of their own on the first forward
    before = hook_count(model)
    nodes = circuit_nodes(model)
    sets = [nodes, [], [nodes[0], nodes[2], nodes[7], nodes[-1]]]
    node_f = faithfulness(model, clean, corrupt, metric, sets)
    edge_f = edge_faithfulness(model, clean, corrupt, metric, [edges_among(model, s) for s in sets])
    if kind != "hf-llama":  # under GQA a key / value input is shared by two heads
        torch.testing.assert_close(edge_f.values, node_f.values, atol=1e-5, rtol=0)
    torch.testing.assert_close(edge_f.values[0], edge_f.clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(edge_f.values[1], edge_f.corrupt, atol=1e-5, rtol=0)
    assert (edge_f.values[2] - edge_f.clean).abs().max() > 1e-3
    assert hook_count(model) == before
