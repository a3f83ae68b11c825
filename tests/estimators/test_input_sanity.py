"""Regression tests: estimator inputs that used to give a silent wrong number or a
misleading error (complex values, transposed arrays, float-stored discrete columns)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynalens.errors import EstimatorRegimeError, InvalidInputError
from dynalens.estimators import entropy, mutual_information
from dynalens.estimators.mi._base import as_variable


def twelve_bit_patterns() -> np.ndarray:
    """All 4096 12-bit input patterns of the Shwartz-Ziv & Tishby task, 0/1 as uint8."""
    return ((np.arange(4096)[:, None] >> np.arange(12)) & 1).astype(np.uint8)


# --------------------------------------------------------------------------- complex


@pytest.mark.parametrize(
    "make",
    [
        lambda z: z,  # numpy complex128
        lambda z: z.astype(np.complex64),
        lambda z: list(z),  # python complex numbers
        lambda z: torch.from_numpy(z),  # torch complex tensor
    ],
    ids=["numpy", "complex64", "list", "torch"],
)
def test_complex_input_is_refused_not_cast_to_its_real_part(make):
    rng = np.random.default_rng(0)
    z = rng.normal(size=200) + 1j * rng.normal(size=200)
    y = z.imag + 0.1 * rng.normal(size=200)  # depends only on the part a cast would drop
    with pytest.raises(InvalidInputError, match=r"real numbers.*imaginary part"):
        mutual_information(make(z), y)
    with pytest.raises(InvalidInputError, match="real numbers"):
        mutual_information(y, make(z), method="gaussian")
    with pytest.raises(InvalidInputError, match="real numbers"):
        entropy(make(z))


def test_complex_input_split_explicitly_measures_the_dependence():
    rng = np.random.default_rng(0)
    z = rng.normal(size=2000) + 1j * rng.normal(size=2000)
    y = z.imag + 0.5 * rng.normal(size=2000)
    parts = np.column_stack([z.real, z.imag])  # what the message tells the user to pass
    truth = 0.5 * np.log(1 + 1 / 0.25)  # I(imag; imag + N(0, 0.25)) = 0.80 nats
    assert mutual_information(parts, y, method="gaussian") == pytest.approx(truth, abs=0.05)


# --------------------------------------------------------------------------- transposed


def test_transposed_arrays_get_a_transposed_error_not_one_about_k():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 3)), rng.normal(size=(500, 3))
    with pytest.raises(InvalidInputError, match=r"shape \(3, 500\).*looks transposed.*x\.T"):
        mutual_information(x.T, y.T)  # used to say "k must be smaller than ... (3)"
    with pytest.raises(InvalidInputError, match="looks transposed"):
        mutual_information(torch.from_numpy(x.T), torch.from_numpy(y.T), method="gaussian")
    with pytest.raises(InvalidInputError, match="looks transposed"):
        entropy(x.T)


def test_one_transposed_array_is_named_in_the_length_error():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(500, 30)), rng.normal(size=500)
    with pytest.raises(InvalidInputError, match=r"same number of samples.*x has shape \(30, 500\)"):
        mutual_information(x.T, y)
    with pytest.raises(InvalidInputError, match=r"y has shape \(30, 500\).*y\.T"):
        mutual_information(y, x.T)


def test_wide_but_not_transposed_arrays_pass_the_check():
    # 20 samples of 50 dims: unusual, but not readable as transposed (>= 10 samples)
    v = as_variable("x", np.random.default_rng(0).normal(size=(20, 50)), None)
    assert (v.n, v.d) == (20, 50)


# --------------------------------------------------------------------------- discreteness


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, bool, np.float32, np.float64])
def test_12bit_patterns_through_tanh_are_refused_whatever_the_dtype(dtype):
    """Binary inputs stored as float (the normal PyTorch case) used to bypass the
    deterministic-layer refusal and return 1.157 nats."""
    f = twelve_bit_patterns()
    w = np.random.default_rng(0).normal(size=(12, 3))
    t = np.tanh(f.astype(np.float64) @ w)
    with pytest.raises(EstimatorRegimeError, match=r"every row distinct.*noise_var"):
        mutual_information(f.astype(dtype), t)
    with pytest.raises(EstimatorRegimeError, match="every row distinct"):
        mutual_information(torch.from_numpy(f.astype(dtype)), torch.from_numpy(t))


def test_float_stored_patterns_give_the_int_answer_with_a_noise_model():
    f = twelve_bit_patterns()
    t = np.tanh(f @ np.random.default_rng(0).normal(size=(12, 3)))
    as_int = mutual_information(f, t, noise_var=0.1)
    assert mutual_information(f.astype(np.float32), t, noise_var=0.1) == as_int


@pytest.mark.parametrize(
    "column, discrete",
    [
        (np.tile([0.0, 1.0], 50), True),  # binary as float
        (np.tile([0.1, 0.9], 50), True),  # binary, not whole (label smoothing)
        (np.tile([-1.0, 1.0], 50), True),  # sign units
        (np.arange(100.0), True),  # whole values, as np.arange(100) would be
        (np.tile([0.0, 0.5, 1.0, 1.5], 25), False),  # four non-whole levels: continuous
        (np.full(100, 0.5), False),  # a non-whole constant stays continuous
        (np.linspace(0, 1, 100), False),
    ],
)
def test_discreteness_rule_per_column(column, discrete):
    assert as_variable("x", column, None).discrete is discrete
    ints = column.astype(np.int64)
    if np.array_equal(ints, column):  # the same values as an integer dtype: same answer
        assert as_variable("x", ints, None).discrete is discrete


def test_a_continuous_column_makes_the_variable_continuous():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.integers(0, 2, 100).astype(float), rng.normal(size=100)])
    assert not as_variable("x", x, None).discrete
