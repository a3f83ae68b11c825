"""The multi-object generator: one object per present concept in its own cell, masks
mark exactly the object's pixels, co-occurrence follows its closed form, fast."""

from __future__ import annotations

import pytest
import torch

from dynalens.concepts.data.factors import Rule
from dynalens.concepts.data.multi_shapes import make_multi_shapes
from dynalens.errors import InvalidParameterError


@pytest.fixture(scope="module")
def data():
    return make_multi_shapes(800, rho=0.0, seed=0)


def test_masks_and_pixels(data) -> None:
    assert data.x.shape == (800, 3, 32, 32) and data.masks.shape == (800, 4, 32, 32)
    assert torch.equal(data.masks.flatten(2).any(2), data.c_full.bool())
    assert not (data.masks.sum(1) > 1).any()  # objects never overlap
    obj = data.masks.any(1)
    rgb = data.x.permute(0, 2, 3, 1)
    assert float(rgb[~obj].mean()) == pytest.approx(0.05, abs=0.01)
    assert torch.allclose(rgb[obj].max(1).values.mean(), torch.tensor(0.9), atol=0.01)
    cell = data.masks.view(800, 4, 2, 16, 2, 16).any((3, 5)).flatten(2).sum(2)
    assert int(cell.max()) == 1  # each object within one 16x16 cell


@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0])
def test_cooccurrence_closed_form(rho) -> None:
    d = make_multi_shapes(6000, size=8, rho=rho, p_present=0.3, seed=1)  # labels only
    p = 0.3
    expected = rho + (1 - rho) * (p**2 + (1 - p) ** 2)
    for a, b in ((0, 1), (2, 3)):
        same = float((d.c[:, a] == d.c[:, b]).float().mean())
        assert same == pytest.approx(expected, abs=0.02)
    assert float((d.c[:, 0] == d.c[:, 2]).float().mean()) == pytest.approx(
        p**2 + (1 - p) ** 2, abs=0.02
    )  # across pairs: independent


def test_rule_annotation_and_noise() -> None:
    rule = Rule((("circle",), ("cross",)), n_classes=3)
    d = make_multi_shapes(500, rule=rule, seed=2)
    assert torch.equal(d.y, (d.c_full[:, 0] + d.c_full[:, 3]).long())
    cls = make_multi_shapes(500, rule=rule, annotation="class", seed=2)
    for t in range(3):
        assert (cls.c[cls.y == t] == cls.c[cls.y == t][0]).all()  # one vector per class
    noisy = make_multi_shapes(4000, size=8, concept_noise=0.2, seed=3)
    assert float((noisy.c != noisy.c_full).float().mean()) == pytest.approx(0.2, abs=0.02)


def test_other_kinds_and_grid() -> None:
    d = make_multi_shapes(50, size=36, grid=3, kinds=("diamond", "ring", "cross", "circle",
                          "square", "triangle"), pairs=((0, 1),), seed=4)  # fmt: skip
    assert d.masks.shape == (50, 6, 36, 36) and d.names[0] == "diamond"


def test_bad_parameters() -> None:
    with pytest.raises(InvalidParameterError, match="hexagon"):
        make_multi_shapes(10, kinds=("circle", "hexagon"))
    with pytest.raises(InvalidParameterError, match="grid"):
        make_multi_shapes(10, grid=1)
    with pytest.raises(InvalidParameterError, match="disjoint"):
        make_multi_shapes(10, pairs=((0, 1), (1, 2)))
    with pytest.raises(InvalidParameterError, match="divisible"):
        make_multi_shapes(10, size=33)
    with pytest.raises(InvalidParameterError, match="rule"):
        make_multi_shapes(10, rule=Rule((("red",),), 2))
