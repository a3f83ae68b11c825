"""Causal concept effect: a linear head on logits gives (w1 - w0) W exactly, a concept
outside the rule has effect 0, PyC's cace_score on the same interventions, bad input."""

from __future__ import annotations

import pytest
import torch

from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import (
    CausalConceptEffect,
    causal_concept_effect,
    percentile_writes,
    residual_effect,
)


def _head(k: int = 4, t: int = 3, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(k, t).double()
    return head


def test_linear_head_on_logits_gives_write_difference_times_weight() -> None:
    head = _head()
    logits = torch.randn(300, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = causal_concept_effect(head, logits, bottleneck="logit", output="raw", n_boot=30)
    expected = 10.0 * head.weight.detach().T  # (+5) - (-5) per concept, per class
    torch.testing.assert_close(r.per_concept, expected, rtol=0, atol=1e-12)
    assert r.interval == pytest.approx((r.value, r.value), abs=1e-12)  # no row variation
    off, on = percentile_writes(logits)
    r2 = causal_concept_effect(head, logits, bottleneck="logit", output="raw", writes=(off, on))
    torch.testing.assert_close(r2.per_concept, (on - off)[:, None] * expected / 10.0)


def test_a_concept_removed_from_the_rule_has_no_effect() -> None:
    head = _head()
    with torch.no_grad():
        head.weight[:, 2] = 0.0
    probs = torch.rand(200, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = causal_concept_effect(head, probs)
    assert r.per_concept[2].abs().max() == 0.0
    assert r.per_concept[[0, 1, 3]].abs().max() > 0.01
    # probabilities: effects on the classes sum to zero
    torch.testing.assert_close(r.per_concept.sum(1), torch.zeros(4, dtype=torch.float64))
    assert r.interval[0] <= r.value <= r.interval[1]


def test_concept_and_target_choose_the_reported_pair() -> None:
    head = _head()
    probs = torch.rand(100, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    r = causal_concept_effect(head, probs, concept=1, target=2, n_boot=0)
    assert r.value == float(r.per_concept[1, 2])
    best = causal_concept_effect(head, probs, n_boot=0)
    assert abs(best.value) == float(best.per_concept.abs().max())
    with pytest.raises(InvalidParameterError, match="concept"):
        CausalConceptEffect(concept=9).estimate(head, probs)


@pytest.mark.slow  # importing torch_concepts takes ~20 s (Lightning)
def test_equals_pyc_cace_score_where_installed() -> None:
    functional = pytest.importorskip("torch_concepts.nn.functional")
    head = _head()
    probs = torch.rand(150, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    r = causal_concept_effect(head, probs, n_boot=0)
    for j in range(4):
        low, high = probs.clone(), probs.clone()
        low[:, j], high[:, j] = 0.0, 1.0
        with torch.no_grad():
            ref = functional.cace_score(head(low).softmax(1), head(high).softmax(1))
        torch.testing.assert_close(r.per_concept[j], ref, rtol=0, atol=1e-12)
    before, after = torch.tensor([0.5, 0.4]), torch.tensor([0.1, 0.3])
    torch.testing.assert_close(
        residual_effect(before, after),
        functional.residual_concept_causal_effect(before, after).double(),
    )


def test_non_finite_outputs_refuse() -> None:
    probs = torch.rand(10, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def head(v: torch.Tensor) -> torch.Tensor:
        return torch.log(v - 0.5)  # NaN where a value falls below 0.5

    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        causal_concept_effect(head, probs)


def test_a_head_that_returns_its_input_sees_each_intervention_alone() -> None:
    """The interventions reuse one buffer: an identity head (float64, its output aliases
    the buffer) must still give do(c_j = 1) - do(c_j = 0) on the diagonal and 0 elsewhere."""
    c = torch.rand(30, 4, dtype=torch.float64)
    r = causal_concept_effect(lambda v: v, c, output="raw", n_boot=0)
    torch.testing.assert_close(r.per_concept, torch.eye(4, dtype=torch.float64), rtol=0, atol=0)
