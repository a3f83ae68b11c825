"""Node-level circuit faithfulness over batches of prompt pairs."""

from pathlib import Path

import pytest
import torch

from dynalens.circuits import (
    ReferenceConfig,
    ReferenceTransformer,
    attribution_patching,
    logit_diff,
)
from dynalens.circuits.faithfulness import circuit_nodes, faithfulness, faithfulness_curve
from dynalens.circuits.results import Cell
from dynalens.circuits.tasks import VOCAB, ioi_pairs
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.probe.interventions import Intervention, intervene, record_activations

from ..probe.conftest import hook_count


@pytest.fixture(scope="module")
def model():
    return ReferenceTransformer(ReferenceConfig(n_layers=2, d_model=32, n_heads=4), seed=7).eval()


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 20, (6, 7), generator=g)
    corrupt = clean.clone()
    corrupt[:, 3] = (corrupt[:, 3] + 9) % 20
    answer, wrong = torch.randint(0, 20, (6,), generator=g), torch.randint(0, 20, (6,), generator=g)
    return clean, corrupt, answer, wrong


def test_full_circuit_is_one_and_empty_circuit_is_zero(model, task):
    clean, corrupt, answer, wrong = task
    nodes = circuit_nodes(model)
    assert len(nodes) == 1 + 2 * (4 + 1)
    f = faithfulness(model, clean, corrupt, logit_diff(answer, wrong), [nodes, []])
    torch.testing.assert_close(f.values[0], f.clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(f.values[1], f.corrupt, atol=1e-5, rtol=0)
    assert f.faithfulness().tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    assert hook_count(model) == 0


def test_batched_pairs_and_circuits_equal_the_per_pair_loop(model, task):
    clean, corrupt, answer, wrong = task
    nodes = circuit_nodes(model)
    circuits = [nodes[:1] + nodes[3:6], [nodes[0], nodes[5], nodes[10]], nodes[1:]]
    together = faithfulness(model, clean, corrupt, logit_diff(answer, wrong), circuits, max_rows=7)
    for b in range(clean.shape[0]):
        one = slice(b, b + 1)
        metric = logit_diff(answer[one], wrong[one])
        alone = faithfulness(model, clean[one], corrupt[one], metric, circuits)
        torch.testing.assert_close(together.values[:, b], alone.values[:, 0], atol=1e-6, rtol=0)


def test_one_circuit_equals_ablating_its_complement_by_hand(model, task):
    clean, corrupt, answer, wrong = task
    metric = logit_diff(answer, wrong)
    nodes = circuit_nodes(model)
    keep = [nodes[0], nodes[2], nodes[9]]  # embedding, L0H1, L1H3
    got = faithfulness(model, clean, corrupt, metric, [keep]).values[0]
    cache = record_activations(model, corrupt, list({n.site for n in nodes}))
    by_hand = [Intervention(n.site, cache[n.site], heads=n.head) for n in nodes if n not in keep]
    with intervene(model, by_hand):
        torch.testing.assert_close(got, metric(model(clean)).double(), atol=1e-6, rtol=0)
    mean = faithfulness(model, clean, corrupt, metric, [keep], ablation="mean", reference=corrupt)
    ref = {s: v.mean(0, keepdim=True) for s, v in cache.items()}
    by_hand = [Intervention(n.site, ref[n.site], heads=n.head) for n in nodes if n not in keep]
    with intervene(model, by_hand):
        torch.testing.assert_close(mean.values[0], metric(model(clean)).double(), atol=1e-6, rtol=0)


def test_curve_on_the_trained_ioi_toy():
    model = ReferenceTransformer(
        ReferenceConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=None, d_vocab=len(VOCAB), n_ctx=16)
    )
    fixture = Path(__file__).parent / "fixtures" / "ioi_attn_only_2l.pt"
    model.load_state_dict(torch.load(fixture, weights_only=True))
    model.eval()
    pairs = ioi_pairs(64, seed=99)
    metric = logit_diff(pairs.answer, pairs.wrong)
    ranking = attribution_patching(
        model, pairs.clean, pairs.corrupt, metric, components=["head_out"], ig_steps=8
    )
    curve = faithfulness_curve(model, pairs.clean, pairs.corrupt, metric, ranking)
    f = curve.faithfulness()
    assert curve.sizes() == list(range(1, 10))  # the embedding plus 0..8 heads
    assert f[-1].item() == pytest.approx(1.0, abs=1e-6)
    assert f[5].item() >= 0.9  # five heads carry 90 %
    assert torch.all(f[1:] >= f[:-1] - 0.02)  # close to monotone along the ranking


def test_bad_input(model, task):
    clean, corrupt, answer, wrong = task
    metric = logit_diff(answer, wrong)
    with pytest.raises(InvalidInputError, match="not nodes of this model"):
        faithfulness(model, clean, corrupt, metric, [[Cell("head_out", 5, "x", None, 0)]])
    with pytest.raises(InvalidParameterError, match="ablation must be"):
        faithfulness(model, clean, corrupt, metric, [[]], ablation="zero")
    with pytest.raises(InvalidInputError, match="same shape"):
        faithfulness(model, clean, corrupt[:, :4], metric, [[]])
    ranking = attribution_patching(model, clean, corrupt, metric, components=["head_out"])
    with pytest.raises(InvalidParameterError, match=r"sizes \[9\] out of range"):
        faithfulness_curve(model, clean, corrupt, metric, ranking, sizes=[9])
    same = faithfulness(model, clean, clean, metric, [[]])
    with pytest.raises(InvalidParameterError, match="faithfulness is undefined"):
        same.faithfulness()
