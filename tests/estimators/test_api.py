"""Functional API, auto-selection, validation messages, light import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dynalens.errors import EstimatorRegimeError, InvalidInputError, InvalidParameterError
from dynalens.estimators import KSGMI, METHODS, MIResult, entropy, mutual_information

from ._tasks import gaussian_pair, tishby_data


def test_functional_and_class_give_the_same_number():
    x, y, _ = gaussian_pair(1000, 2, 0.5)
    assert mutual_information(x, y, method="ksg", k=5) == KSGMI(k=5).estimate(x, y).estimate


def test_auto_selection_and_reasons():
    x, y, _ = gaussian_pair(1000, 2, 0.5)
    cont = mutual_information(x, y, return_result=True)
    assert cont.method == "ksg" and "both continuous" in cont.details["auto_reason"]
    labels = (x[:, 0] > 0).astype(int)
    assert mutual_information(y, labels, return_result=True).method == "ksg"
    disc = mutual_information(labels, labels, return_result=True)
    assert disc.method == "binning" and disc.estimate == pytest.approx(np.log(2), abs=0.01)
    noisy = mutual_information(np.arange(1000), y, noise_var=0.1, return_result=True)
    assert noisy.method == "noisy"
    h = entropy(labels, return_result=True)
    assert h.method == "binning"


def test_auto_refuses_distinct_inputs_against_deterministic_continuous_layer():
    f, _ = tishby_data()
    t = np.tanh(f.astype(float) @ np.random.default_rng(0).normal(size=(12, 3)))
    with pytest.raises(EstimatorRegimeError, match="noise_var"):
        mutual_information(f, t)


def test_discreteness_detection_rule_and_override():
    rng = np.random.default_rng(0)
    floats_few = (np.arange(100) % 3).astype(float)  # whole values, 3 distinct <= n/5
    r = mutual_information(floats_few, floats_few, return_result=True)
    assert r.method == "binning"
    cont = rng.normal(size=100)
    assert mutual_information(cont, cont + rng.normal(size=100), return_result=True).method == "ksg"
    forced = mutual_information(floats_few, cont, x_discrete=False, return_result=True)
    assert forced.details["mode"] == "ksg1-mixed"


def test_validation_messages():
    x, y, _ = gaussian_pair(100, 1, 0.5)
    with pytest.raises(InvalidParameterError, match="did you mean 'ksg'"):
        mutual_information(x, y, method="kgs")
    with pytest.raises(InvalidParameterError, match="noise_var is used by"):
        mutual_information(x, y, method="ksg", noise_var=0.1)
    with pytest.raises(InvalidParameterError, match="k must be >= 1"):
        mutual_information(x, y, method="ksg", k=0)
    with pytest.raises(InvalidInputError, match="same number of samples"):
        mutual_information(x[:50], y)
    with pytest.raises(InvalidParameterError, match="x_discrete"):
        mutual_information(x, y, x_discrete="yes")
    with pytest.raises(InvalidParameterError, match="estimates mutual information only"):
        entropy(x, method="cs_qmi")


def test_result_record():
    x, y, _ = gaussian_pair(500, 1, 0.5)
    res = mutual_information(x, y, method="gaussian", return_result=True)
    assert isinstance(res, MIResult) and res.units == "nats" and res.n == 500
    assert "gaussian" in repr(res) and float(res) == res.estimate
    assert res.params == {"bias_correction": True}
    assert set(METHODS) >= {
        "auto",
        "binning",
        "adaptive_binning",
        "kde",
        "ksg",
        "gaussian",
        "noisy",
        "lossy",
        "renyi",
        "cs_qmi",
        "infonce",
        "mine",
    }


def test_import_is_light():
    code = (
        "import sys, dynalens.estimators; "
        "print(sorted(m for m in ('scipy', 'sklearn', 'triton') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
