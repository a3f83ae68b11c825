"""The tabular concept data: the rule holds, each knob does what it says, bad knobs refuse."""

from __future__ import annotations

import pytest
import torch

from dynalens.concepts import CONCEPT_NAMES, GROUPS, Rule, make_tabular_concepts, soft_concepts
from dynalens.concepts.data.factors import DEFAULT_RULE
from dynalens.errors import InvalidInputError, InvalidParameterError


def test_rule_gives_labels_and_groups_are_exclusive() -> None:
    data = make_tabular_concepts(2000, seed=3)
    c = data.c_full
    top = c[:, 8] + c[:, 9]
    expected = c[:, 0] + c[:, 3] + c[:, 7] * top
    assert torch.equal(data.y, expected.long())
    for members in GROUPS.values():
        assert torch.equal(c[:, list(members)].sum(1), torch.ones(2000))
    assert set(data.y.tolist()) == {0, 1, 2, 3}
    assert data.x.shape == (2000, 16) and data.x.dtype == torch.float32


def test_rho_sets_colour_shape_co_occurrence() -> None:
    for rho in (0.0, 0.5, 1.0):
        data = make_tabular_concepts(20000, rho=rho, seed=0)
        shape = data.c_full[:, 0:3].argmax(1)
        colour = data.c_full[:, 3:6].argmax(1)
        agree = float((shape == colour).double().mean())
        assert agree == pytest.approx(rho + (1 - rho) / 3, abs=0.015)


def test_hidden_concept_stays_in_the_rule_but_leaves_the_bottleneck() -> None:
    data = make_tabular_concepts(500, hidden=("red",), seed=1)
    assert "red" not in data.names and data.c.shape == (500, 11)
    assert torch.equal(data.y, DEFAULT_RULE.apply(data.c_full))
    assert data.groups[1] == (3, 4)  # colour group lost "red"
    assert all(max(g) < 11 for g in data.groups)


def test_class_annotation_is_constant_within_each_class() -> None:
    data = make_tabular_concepts(3000, annotation="class", seed=2)
    for t in range(4):
        rows = data.c[data.y == t]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    # class 0 never holds circle or red: its majority says so
    assert data.c[data.y == 0][0, CONCEPT_NAMES.index("circle")] == 0


def test_concept_and_label_noise_flip_at_their_rates() -> None:
    data = make_tabular_concepts(20000, concept_noise=0.1, label_noise=0.2, seed=4)
    assert float((data.c != data.c_full).double().mean()) == pytest.approx(0.1, abs=0.01)
    clean = DEFAULT_RULE.apply(data.c_full)
    assert float((data.y != clean).double().mean()) == pytest.approx(0.2, abs=0.01)


def test_same_world_different_samples() -> None:
    a = make_tabular_concepts(100, seed=0, input_noise=0.0)
    b = make_tabular_concepts(100, seed=1, input_noise=0.0)
    assert not torch.equal(a.c_full, b.c_full)
    # rows with equal concepts map to equal inputs: one fixed phi
    i = 0
    j = int((b.c_full == a.c_full[i]).all(1).nonzero()[0])
    assert torch.allclose(a.x[i], b.x[j])
    assert torch.equal(make_tabular_concepts(100, seed=0).x, make_tabular_concepts(100, seed=0).x)


def test_custom_rule_as_data() -> None:
    rule = Rule((("square", "blue"),), n_classes=2)
    data = make_tabular_concepts(400, rule=rule, seed=5)
    assert torch.equal(data.y, (data.c_full[:, 1] * data.c_full[:, 5]).long())


def test_bad_knobs_refuse() -> None:
    with pytest.raises(InvalidParameterError, match="rho"):
        make_tabular_concepts(10, rho=1.5)
    with pytest.raises(InvalidParameterError, match="did you mean 'red'"):
        make_tabular_concepts(10, hidden=("redd",))
    with pytest.raises(InvalidParameterError, match="annotation"):
        make_tabular_concepts(10, annotation="instances")


def test_soft_concepts_signal_leak_and_source() -> None:
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = soft_concepts(c, signal=1.0, leak=0.5, noise=0.0)
    # column 0 of row 0: c=1, source = concept 1 = 0
    assert p[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item())
    assert p[1, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(-0.5)).item())
    with pytest.raises(InvalidInputError, match="leak_source"):
        soft_concepts(c, leak_source=torch.ones(3, 1))
