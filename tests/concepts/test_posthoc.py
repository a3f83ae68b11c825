"""Post-hoc CBMs: concept banks recover known concepts, the elastic-net head, edits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynalens.concepts.data import make_shapes, make_tabular_concepts
from dynalens.concepts.models.posthoc import (
    fit_elastic_net_head,
    fit_posthoc_cbm,
    learn_concept_bank,
)
from dynalens.concepts.models.posthoc_edit import finetune_head, prune_concepts
from dynalens.concepts.posthoc_reproduce import (
    BACKGROUND_CONCEPTS,
    ObjectAndBackground,
    background_concepts,
    repaint_background,
)
from dynalens.errors import InvalidInputError


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).double().mean())


def test_bank_recovers_the_known_concepts_and_the_head_reads_the_rule() -> None:
    data = make_tabular_concepts(800, seed=0)
    bank = learn_concept_bank(data.x, data.c, data.names, C=0.1, seed=0)
    assert bank.names == data.names and bank.layer == "embedding"
    assert float(bank.accuracies.min()) > 0.8  # x = φ(c) + noise: every concept is linear-ish
    z = (bank.margins(data.x) > 0).double()
    agree = (z == data.c).double().mean(0)
    assert float(agree.min()) > 0.8
    model = fit_posthoc_cbm(nn.Identity(), data.x, data.y, bank, alpha=1e-3)
    assert _accuracy(model, data.x, data.y) > 0.8
    # the rule's concepts carry the largest weights
    weight = model.weight.abs().sum(0)
    top = {data.names[i] for i in weight.argsort(descending=True)[:3].tolist()}
    assert {"circle", "red"} <= top | {"large"}


def test_proximal_head_reaches_the_elastic_net_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 6, generator=g, dtype=torch.float64)
    y = (z[:, :3] + 0.8 * torch.randn(300, 3, generator=g, dtype=torch.float64)).argmax(1)
    alpha, rho = 0.02, 0.5
    w, b = fit_elastic_net_head(z, y, 3, alpha=alpha, l1_ratio=rho, tol=1e-9)

    def objective(w_: torch.Tensor, b_: torch.Tensor) -> torch.Tensor:
        ce = nn.functional.cross_entropy(z @ w_.T + b_, y)
        return ce + alpha * (rho * w_.abs().sum() + (1 - rho) / 2 * (w_**2).sum())

    best = objective(w, b)
    for _ in range(20):  # no random perturbation improves it
        dw = 1e-3 * torch.randn(w.shape, generator=g, dtype=torch.float64)
        assert objective(w + dw, b) >= best - 1e-12
    assert (w[:, 3:] == 0).sum() > 0  # irrelevant features are exactly 0 (L1)
    assert (torch.diagonal(w[:, :3]) != 0).all()


def test_sgd_head_varies_with_its_seed_and_proximal_does_not() -> None:
    data = make_tabular_concepts(800, seed=1)
    bank = learn_concept_bank(data.x, data.c, data.names, seed=0)
    a = fit_posthoc_cbm(nn.Identity(), data.x, data.y, bank, solver="sgd", seed=0)
    b = fit_posthoc_cbm(nn.Identity(), data.x, data.y, bank, solver="sgd", seed=1)
    assert not torch.equal(a.weight, b.weight)
    p = fit_posthoc_cbm(nn.Identity(), data.x, data.y, bank, alpha=1e-3, seed=0)
    q = fit_posthoc_cbm(nn.Identity(), data.x, data.y, bank, alpha=1e-3, seed=1)
    assert torch.equal(p.weight, q.weight)


def test_pruning_the_spurious_background_raises_accuracy_when_it_flips() -> None:
    train = make_shapes(1200, spurious=0.9, seed=0)
    test = make_shapes(500, spurious=1.0, seed=1)
    flipped = repaint_background(test, shift=2, seed=0)  # background of class y + 2
    backbone = ObjectAndBackground()
    c = torch.cat([train.c, background_concepts(train.x)], 1)
    bank = learn_concept_bank(backbone(train.x), c, [*train.names, *BACKGROUND_CONCEPTS], C=0.01)
    model = fit_posthoc_cbm(backbone, train.x, train.y, bank, alpha=1e-3)
    edited = prune_concepts(model, list(BACKGROUND_CONCEPTS))
    before, after = _accuracy(model, flipped, test.y), _accuracy(edited, flipped, test.y)
    assert before < 0.3 and after > before + 0.15, (before, after)
    cols = [bank.names.index(n) for n in BACKGROUND_CONCEPTS]
    assert float(edited.weight[:, cols].abs().sum()) == 0.0
    assert float(model.weight[:, cols].abs().sum()) > 0.0  # the original is unchanged
    # renormalised pruning keeps each class row's norm
    renorm = prune_concepts(model, list(BACKGROUND_CONCEPTS), renormalize=True)
    torch.testing.assert_close(renorm.weight.norm(dim=1), model.weight.norm(dim=1))
    # a few shifted examples fine-tune the pruned head further; pruned weights stay 0
    tuned = finetune_head(edited, flipped[:100], test.y[:100], steps=50)
    assert float(tuned.weight[:, cols].abs().sum()) == 0.0
    assert (
        _accuracy(tuned, flipped[100:], test.y[100:])
        >= _accuracy(edited, flipped[100:], test.y[100:]) - 0.02
    )


def test_bad_input_is_refused() -> None:
    data = make_tabular_concepts(300, seed=0)
    with pytest.raises(InvalidInputError, match="needs 200 of each"):
        learn_concept_bank(data.x, data.c, data.names, n_samples=200)
    bank = learn_concept_bank(data.x, data.c, data.names, layer="fc")
    with pytest.raises(InvalidInputError, match="trained on layer 'fc'"):
        bank.margins(data.x, layer="conv")
    model = fit_posthoc_cbm(nn.Identity(), data.x, data.y, bank, alpha=1e-2)
    with pytest.raises(InvalidInputError, match="not in the bank"):
        prune_concepts(model, "purple")
