"""Circuits results round-trip through the store's result tables bit for bit, and metrics
carry the names a cache is keyed by (issue 12, section 4)."""

import pytest
import torch

import dynalens
from dynalens.circuits import (
    EdgeScores,
    Faithfulness,
    PatchingResult,
    ReferenceConfig,
    ReferenceTransformer,
    activation_patching,
    circuit_nodes,
    edge_attribution_patching,
    faithfulness,
    kl_to_clean,
    logit_diff,
    probability,
)
from dynalens.circuits.metrics import metric_key, named_metric
from dynalens.errors import InvalidInputError, InvalidParameterError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = ReferenceTransformer(
        ReferenceConfig(n_layers=2, d_model=16, n_heads=2, n_ctx=8), seed=3
    )
    model.eval()
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 20, (5, 6), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 7) % 20
    metric = logit_diff(
        torch.randint(0, 20, (5,), generator=g), torch.randint(0, 20, (5,), generator=g)
    )
    path = tmp_path_factory.mktemp("ser") / "s"
    rec = dynalens.Recorder(model, path, sites="unembed", capture=("activations",))
    model(clean)
    rec.step(0, loss=0.0)
    rec.close()
    return model, clean, corrupt, metric, dynalens.open_store(path, mode="a")


def roundtrip(store, name, result):
    arrays, attrs = result.to_arrays()
    store.put_result(name, arrays, attrs)
    got = store.get_result(name)
    assert got is not None
    return type(result).from_arrays(*got)


def same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(torch.int64), b.view(torch.int64))  # bitwise, NaN included


@pytest.mark.parametrize("mode", ["denoising", "zero"])
def test_patching_result_roundtrips_bit_exactly(setup, mode):
    model, clean, corrupt, metric, store = setup
    corrupt_in = None if mode == "zero" else corrupt
    res = activation_patching(
        model, clean, corrupt_in, metric, components=["resid_pre", "head_out"], mode=mode
    )
    back = roundtrip(store, f"patching-{mode}", res)
    assert back.cells == res.cells and back.mode == res.mode
    for field in ("values", "base", "clean"):
        same(getattr(back, field), getattr(res, field))
    if mode == "zero":
        assert back.corrupt is None
    else:
        same(back.corrupt, res.corrupt)
        same(back.normalised(), res.normalised())


def test_edge_scores_and_faithfulness_roundtrip_bit_exactly(setup):
    model, clean, corrupt, metric, store = setup
    edges = edge_attribution_patching(model, clean, corrupt, metric, ig_steps=2)
    back = roundtrip(store, "edges", edges)
    assert isinstance(back, EdgeScores) and back.edges == edges.edges and back.mode == edges.mode
    same(back.values, edges.values)
    nodes = circuit_nodes(model)
    f = faithfulness(model, clean, corrupt, metric, [nodes, [], nodes[:3]])
    back_f = roundtrip(store, "faith", f)
    assert isinstance(back_f, Faithfulness) and back_f.circuits == f.circuits
    for field in ("values", "clean", "corrupt"):
        same(getattr(back_f, field), getattr(f, field))


def test_from_arrays_refuses_another_result_type(setup):
    model, clean, corrupt, metric, _store = setup
    edges = edge_attribution_patching(model, clean, corrupt, metric)
    with pytest.raises(InvalidInputError, match="EdgeScores"):
        PatchingResult.from_arrays(*edges.to_arrays())


def test_metrics_are_named_with_their_parameters():
    a, w = torch.tensor([1, 2]), torch.tensor([3, 4])
    name, params = metric_key(logit_diff(a, w, position=2))
    assert name == "logit_diff" and params["position"] == 2 and torch.equal(params["answer"], a)
    assert metric_key(probability(3))[0] == "probability"
    assert metric_key(kl_to_clean(torch.zeros(2, 3, 5)))[0] == "kl_to_clean"
    logits = torch.randn(2, 4, 5)
    assert torch.equal(
        logit_diff(a, w)(logits), logits[:, -1, 1:3].diagonal() - logits[:, -1, 3:5].diagonal()
    )
    mine = named_metric(lambda x: x[:, -1, 0], "first", token=0)
    assert metric_key(mine) == ("first", {"token": 0})
    assert torch.equal(mine(logits), logits[:, -1, 0])
    with pytest.raises(InvalidParameterError, match="named_metric"):
        metric_key(lambda x: x[:, -1, 0])
    with pytest.raises(InvalidParameterError, match="non-empty"):
        named_metric(lambda x: x, "")


def test_edge_faithfulness_round_trips(setup):
    from dynalens.circuits.edge_faithfulness import edge_faithfulness
    from dynalens.circuits.edges import edge_graph

    model, clean, corrupt, metric, store = setup
    edges = edge_graph(model).edges()
    result = edge_faithfulness(model, clean, corrupt, metric, [edges[:5], [], edges[3:9]])
    got = roundtrip(store, "edge_faithfulness", result)
    assert got.circuits == result.circuits and got.ablation == result.ablation
    for a, b in ((got.values, result.values), (got.clean, result.clean)):
        same(a.double(), b.double())
    assert isinstance(got.circuits[0][0], tuple)
