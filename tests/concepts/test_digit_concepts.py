"""Digits with class-level concepts: concepts are the class's table row, every class has
its own vector, noise flips at its rate, the concepts determine the class exactly."""

from __future__ import annotations

import pytest
import torch

from dynalens.concepts.data import load_digit_concepts
from dynalens.concepts.data.digits import DIGIT_CONCEPTS, concept_table
from dynalens.errors import InvalidParameterError


@pytest.fixture(scope="module")
def data():
    pytest.importorskip("sklearn")
    return load_digit_concepts()


def test_shapes_and_class_level(data) -> None:
    assert data.x.shape == (1797, 1, 8, 8) and data.c.shape == (1797, len(DIGIT_CONCEPTS))
    assert float(data.x.min()) >= 0 and float(data.x.max()) <= 1
    assert torch.equal(data.c, concept_table()[data.y])
    assert data.table[8].tolist() == [1, 0, 0, 0, 0, 1, 1, 1]  # eight: loops only
    for t in range(10):
        rows = data.c[data.y == t]
        assert (rows == rows[0]).all()  # one concept vector per class


def test_concepts_identify_the_class(data) -> None:
    assert len({tuple(r.tolist()) for r in data.table}) == 10
    # decode: the class whose table row equals the concepts
    decoded = (data.c[:, None, :] == data.table[None]).all(2).float().argmax(1)
    assert torch.equal(decoded, data.y)


def test_noise() -> None:
    pytest.importorskip("sklearn")
    noisy = load_digit_concepts(concept_noise=0.1, seed=1)
    assert float((noisy.c != noisy.c_full).float().mean()) == pytest.approx(0.1, abs=0.01)
    with pytest.raises(InvalidParameterError):
        load_digit_concepts(concept_noise=0.7)
