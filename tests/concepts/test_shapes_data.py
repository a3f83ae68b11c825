"""The concept-image generator: masks mark the object of every present concept, pixels
carry the colour, sizes and areas match their geometry, the spurious background works."""

from __future__ import annotations

import math

import pytest
import torch

from dynalens.concepts import CONCEPT_NAMES, make_shapes
from dynalens.concepts.data.factors import DEFAULT_RULE
from dynalens.errors import InvalidParameterError


@pytest.fixture(scope="module")
def data():
    return make_shapes(600, seed=0)


def test_shapes_and_masks(data) -> None:
    assert data.x.shape == (600, 3, 24, 24) and data.x.dtype == torch.float32
    assert data.masks.shape == (600, 12, 24, 24) and data.masks.dtype == torch.bool
    present = data.masks.flatten(2).any(2)
    assert torch.equal(present, data.c_full.bool())  # non-empty iff the concept is present
    obj = data.masks.any(1)
    for j in range(12):
        rows = data.c_full[:, j] == 1
        assert torch.equal(data.masks[rows, j], obj[rows])  # one object, shared mask


def test_mask_lies_in_its_quadrant(data) -> None:
    for q, name in enumerate(CONCEPT_NAMES[8:]):
        rows = data.c_full[:, 8 + q] == 1
        masks = data.masks[rows, 8 + q]
        top, left = q // 2, q % 2
        outside = masks.clone()
        outside[:, top * 12 : top * 12 + 12, left * 12 : left * 12 + 12] = False
        assert not outside.any(), name


def test_object_pixels_carry_their_colour(data) -> None:
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
    obj = data.masks.any(1)
    for k in range(3):
        rows = (data.c_full[:, 3 + k] == 1).nonzero().flatten()
        pixels = data.x[rows].permute(0, 2, 3, 1)[obj[rows]]
        assert torch.allclose(pixels.mean(0), colours[k], atol=0.01)
    background = data.x.permute(0, 2, 3, 1)[~obj]
    assert float(background.mean()) < 0.2


def test_areas_follow_the_geometry(data) -> None:
    area = data.masks.any(1).flatten(1).sum(1).float()
    r = 24 / 5  # large shapes; small ones (r = 3 px) are too coarse for a closed form
    expected = {0: math.pi * r**2, 1: (1.7 * r) ** 2, 2: 2 * r**2}  # triangle: base 2r
    for shape, value in expected.items():
        is_shape = data.c_full[:, shape] == 1
        large = area[is_shape & (data.c_full[:, 7] == 1)]
        small = area[is_shape & (data.c_full[:, 6] == 1)]
        assert float(large.mean()) == pytest.approx(value, rel=0.15)
        assert float(small.max()) < float(large.min())
    assert torch.equal(data.y, DEFAULT_RULE.apply(data.c_full))


def test_spurious_background_encodes_the_class_only_when_asked() -> None:
    tied = make_shapes(400, spurious=1.0, pixel_noise=0.0, seed=1)
    free = make_shapes(400, spurious=0.0, pixel_noise=0.0, seed=1)
    corner = lambda d: d.x[:, 0, 0, 0]  # noqa: E731 - the top-left pixel is background
    for t in range(4):
        values = corner(tied)[(tied.y == t) & ~tied.masks.any(1)[:, 0, 0]]
        assert torch.allclose(values, torch.full_like(values, 0.05 + 0.1 * t / 3))
    levels = torch.round((corner(free) - 0.05) / (0.1 / 3)).long()
    assert float((levels == free.y).double().mean()) < 0.4


def test_knobs_are_shared_with_the_tabular_variant_and_checked() -> None:
    data = make_shapes(200, hidden=("red", "green", "blue"), annotation="class", seed=2)
    assert data.c.shape == (200, 9) and len(data.groups) == 3
    with pytest.raises(InvalidParameterError, match="size"):
        make_shapes(10, size=8)
    with pytest.raises(InvalidParameterError, match="spurious"):
        make_shapes(10, spurious=2.0)
