"""CEM@l and CGIM: exact small cases, chance level, the class-level pitfall lowers CEM,
removing a concept from the task rule removes its importance, the softmax-shift quirk."""

from __future__ import annotations

import pytest
import torch

from dynalens.concepts import make_tabular_concepts, soft_concepts
from dynalens.concepts.data.factors import Rule
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import concept_existence, concept_global_importance
from dynalens.estimators.concepts._probe import fit_multinomial_probe

RULE = Rule((("circle",), ("red",), ("large", "top_left"), ("large", "top_right")), 4)
NO_RED = Rule((("circle",), ("large", "top_left"), ("large", "top_right")), 3)


def _head(c: torch.Tensor, y: torch.Tensor, t: int) -> torch.Tensor:
    return fit_multinomial_probe(c, y, t, C=10.0)


def test_cem_exact_small_case() -> None:
    c = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    u = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.9, 0.7]])
    theta = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # class 0 reads 0, 1; class 1: 2
    y_pred = torch.tensor([0, 0])
    # image 0: contributions 0.9, 1.6 -> top concept 1 (absent); top-2 = {1, 0}: 1/2
    # image 1: 0.2, 1.8 -> concept 1 (present); top-2 = {1, 0}: 1/2
    res = concept_existence(u, theta, c, y_pred=y_pred, n_boot=0)
    assert res.value == pytest.approx(0.5) and res.details["per_image"].tolist() == [0.0, 1.0]
    assert concept_existence(u, theta, c, y_pred=y_pred, top_l=2, n_boot=0).value == 0.5
    # predicted by the head itself: image 1 goes to class 0 (1.8 > 0.7), same as above
    assert concept_existence(u, theta, c, n_boot=0).value == pytest.approx(0.5)


def test_cem_random_ranking_is_chance() -> None:
    g = torch.Generator().manual_seed(0)
    c = (torch.rand(4000, 8, generator=g) < 0.3).double()
    res = concept_existence(torch.rand(4000, 8, generator=g), torch.randn(8, 3, generator=g), c)
    assert res.interval[0] <= res.details["chance"] <= res.interval[1]


def test_class_level_concepts_lower_cem() -> None:
    inst = make_tabular_concepts(3000, seed=0)
    cls = make_tabular_concepts(3000, annotation="class", seed=0)
    values = {}
    for name, data in (("instance", inst), ("class", cls)):
        u = data.c  # what a perfect concept model trained on these labels outputs
        theta = _head(u, data.y, 4)[:-1]
        values[name] = concept_existence(u, theta, data.c_full, y_true=data.y, n_boot=100)
    assert values["instance"].value == pytest.approx(1.0)
    assert values["class"].interval[1] < values["instance"].value - 0.1
    assert values["instance"].details["correct"] == pytest.approx(1.0)


def test_removing_a_concept_from_the_rule_removes_its_importance() -> None:
    red = 3
    res = {}
    for name, rule in (("with", RULE), ("without", NO_RED)):
        data = make_tabular_concepts(4000, rule=rule, seed=2)
        theta = _head(data.c, data.y, rule.n_classes)[:-1]
        res[name] = concept_global_importance(theta, data.c, data.y, n_boot=50)
    with_red = float(res["with"].per_concept[red])
    without = float(res["without"].per_concept[red])
    assert with_red > 0.5 and abs(without) < 0.1
    circle = 0  # still in both rules
    assert float(res["without"].per_concept[circle]) > 0.5


def test_cgim_exact_and_shift_invariant() -> None:
    c = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    y = torch.tensor([0, 1, 1, 1])  # V = [0, 2/3]
    theta = torch.tensor([[-1.0, 1.0]])
    expected = (2 / 3) / (2**0.5 * 2 / 3)
    assert concept_global_importance(theta, c, y, n_boot=0).value == pytest.approx(expected)
    shifted = theta + 5.0  # same softmax head
    assert concept_global_importance(shifted, c, y, n_boot=0).value == pytest.approx(expected)
    raw = concept_global_importance(shifted, c, y, center_weights=False, n_boot=0).value
    assert raw == pytest.approx(6 / 52**0.5)  # the raw cosine moves with the shift
    zero = concept_global_importance(torch.zeros(1, 2), c, y, n_boot=0)
    assert zero.value == 0.0  # no weight, no importance


def test_cgim_types_two_and_three() -> None:
    data = make_tabular_concepts(2000, rule=NO_RED, seed=3)
    theta = _head(data.c, data.y, 3)
    pred = (torch.cat([data.c, torch.ones(2000, 1)], 1).double() @ theta).argmax(1)
    u = data.c * 0.8 + 0.1
    t2 = concept_global_importance(theta[:-1], data.c, data.y, kind=2, c_scores=u, y_pred=pred)
    t3 = concept_global_importance(theta[:-1], data.c, data.y, kind=3, c_scores=u, y_pred=pred)
    # type 2 compares two non-negative class profiles: high even for unused red; type 3
    # is not centred (theta * U*), so red keeps a small weight
    assert float(t2.per_concept[3]) > 0.9
    assert float(t3.per_concept[3]) < 0.3 < 0.8 < float(t3.per_concept[0])
    with pytest.raises(InvalidParameterError, match="c_scores"):
        concept_global_importance(theta[:-1], data.c, data.y, kind=2)


def test_bad_input() -> None:
    c = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(InvalidInputError, match=r"head\.weight\.T"):
        concept_existence(c, torch.zeros(3, 2), c)
    with pytest.raises(InvalidInputError, match="y_true"):
        concept_existence(c, torch.eye(2), c, subset="correct")
    with pytest.raises(InvalidInputError, match="class counts"):
        concept_global_importance(torch.zeros(2, 3), c, torch.tensor([0, 1]))
    with pytest.raises(InvalidInputError, match="binary"):
        concept_existence(c, torch.eye(2), c * 0.5)


def test_cem_falls_as_concept_scores_leak_other_concepts() -> None:
    data = make_tabular_concepts(3000, seed=5)
    theta = _head(data.c, data.y, 4)[:-1]
    values = [
        concept_existence(
            soft_concepts(data.c, signal=2.0, noise=0.5, leak=leak, seed=0), theta, data.c,
            n_boot=0,
        ).value
        for leak in (0.0, 1.5, 3.0)
    ]  # fmt: skip
    assert values[0] > values[1] > values[2]
