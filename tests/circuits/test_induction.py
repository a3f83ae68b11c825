"""The induction task with a random gap and the per-head attention scores (ground truth:
the copies where they were put, a per-example float64 loop over attention patterns)."""

import pytest
import torch

from dynalens.circuits import ReferenceConfig, ReferenceTransformer
from dynalens.circuits.induction import (
    BOS,
    attention_scores,
    copy_accuracy,
    copy_log_probs,
    copy_loss,
    copy_metric,
    induction_batch,
    induction_scores,
    previous_token_scores,
)
from dynalens.circuits.metrics import metric_key
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.probe.interventions import record_activations


def test_copies_sit_after_a_random_gap():
    b = induction_batch(500, seq_len=40, k=8, max_gap=12, d_vocab=64, seed=3)
    assert b.tokens.shape == (500, 40) and (b.tokens[:, 0] == BOS).all()
    assert ((b.tokens[:, 1:] >= 1) & (b.tokens[:, 1:] < 64)).all()
    gap = b.second - b.first - 8
    assert gap.min() == 0 and gap.max() == 12  # every gap occurs: no fixed offset to exploit
    assert b.first.min() >= 1 and (b.second + 8).max() <= 40
    for i in range(500):
        f, s = int(b.first[i]), int(b.second[i])
        assert torch.equal(b.tokens[i, f : f + 8], b.tokens[i, s : s + 8])
        changed = (b.tokens[i] != b.corrupt[i]).nonzero().flatten()
        assert ((changed >= f) & (changed < f + 8)).all()  # only the first copy is corrupted
    assert (b.tokens != b.corrupt).any(1).float().mean() > 0.99
    assert torch.equal(b.targets(), b.tokens.gather(1, b.second[:, None] + 1 + torch.arange(7)))
    assert torch.equal(induction_batch(5, seed=1).tokens, induction_batch(5, seed=1).tokens)
    with pytest.raises(InvalidParameterError, match="seq_len >= 29"):
        induction_batch(4, seq_len=20)


def test_loss_accuracy_and_metric_agree():
    b = induction_batch(6, seq_len=24, k=5, max_gap=4, d_vocab=16, seed=0)
    logits = torch.randn(6, 24, 16, generator=torch.Generator().manual_seed(0))
    logp = copy_log_probs(logits, b)
    torch.testing.assert_close(copy_loss(logits, b).double(), -logp.mean(), rtol=1e-6, atol=1e-6)
    perfect = torch.zeros(6, 24, 16)
    q = b.query_positions()
    perfect[torch.arange(6)[:, None], q, b.targets()] = 10.0
    assert copy_accuracy(perfect, b) == 1.0
    metric = copy_metric(b)
    torch.testing.assert_close(metric(logits), logp.mean(1))
    assert metric_key(metric)[0] == "copy_logprob"
    with pytest.raises(InvalidInputError, match="do not match"):
        copy_loss(logits[:, :10], b)


def test_scores_equal_a_float64_loop_over_patterns():
    model = ReferenceTransformer(
        ReferenceConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=16, n_ctx=24, d_mlp=None), seed=1
    ).eval()
    b = induction_batch(5, seq_len=24, k=5, max_gap=4, d_vocab=16, seed=2)
    sites = [f"blocks.{lay}.attn.hook_pattern" for lay in range(2)]
    patterns = record_activations(model, b.tokens, sites)
    ind, prev = induction_scores(model, b), previous_token_scores(model, b)
    for lay, site in enumerate(sites):
        p = patterns[site].double()
        for h in range(2):
            for i in range(5):
                f, s = int(b.first[i]), int(b.second[i])
                want = sum(float(p[i, h, s + j, f + 1 + j]) for j in range(4)) / 4
                assert ind.values[lay, h, i].item() == pytest.approx(want, abs=1e-12)
                want = sum(float(p[i, h, q, q - 1]) for q in range(1, 24)) / 23
                assert prev.values[lay, h, i].item() == pytest.approx(want, abs=1e-12)
    table = ind.table()
    assert list(table.columns) == ["layer", "head", "score", "name"] and len(table) == 4
    # a position attends to itself only at position 0: the score there is 1 for every head
    ones = attention_scores(
        model, b.tokens, torch.zeros(5, 1, dtype=torch.long), torch.zeros(5, 1, dtype=torch.long)
    )
    torch.testing.assert_close(ones, torch.ones(2, 2, 5, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="causal"):
        attention_scores(
            model, b.tokens, torch.zeros(5, 1, dtype=torch.long), torch.ones(5, 1, dtype=torch.long)
        )
