"""RatioStats: exact merges (property tests), weighted means, Fieller coverage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynalens.dynamics.stats import RatioStats, fieller
from dynalens.errors import InvalidInputError, InvalidParameterError

finite = st.floats(-1e3, 1e3, allow_nan=False)
pairs = st.lists(st.tuples(finite, finite, finite, finite), min_size=0, max_size=12)


def _fed(beta: float, rows: list) -> RatioStats:
    s = RatioStats(2, beta=beta)
    for x1, x2, y1, y2 in rows:
        s.update([x1, x2], [y1, y2])
    return s


def _assert_same(a: RatioStats, b: RatioStats) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["n"] == sb["n"]
    for k in ("w", "w2", "sx", "sy", "sxx", "syy", "sxy"):
        np.testing.assert_allclose(sa[k], sb[k], rtol=1e-9, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(a=pairs, b=pairs, beta=st.sampled_from([1.0, 0.9, 0.5]))
def test_merge_equals_update_on_concatenation(a: list, b: list, beta: float) -> None:
    _assert_same(_fed(beta, a).merge(_fed(beta, b)), _fed(beta, a + b))


@settings(max_examples=40, deadline=None)
@given(a=pairs, b=pairs, c=pairs)
def test_merge_is_associative_and_commutative_for_equal_weights(a: list, b: list, c: list) -> None:
    left = _fed(1.0, a).merge(_fed(1.0, b)).merge(_fed(1.0, c))
    right = _fed(1.0, a).merge(_fed(1.0, b).merge(_fed(1.0, c)))
    _assert_same(left, right)
    _assert_same(_fed(1.0, a).merge(_fed(1.0, b)), _fed(1.0, b).merge(_fed(1.0, a)))


@settings(max_examples=60, deadline=None)
@given(a=pairs, b=pairs, beta=st.sampled_from([1.0, 0.9, 0.5, 0.01]))
def test_update_many_equals_sequential_updates_and_snapshots_each(
    a: list, b: list, beta: float
) -> None:
    s = _fed(beta, a)
    rows = np.array(b, dtype=np.float64).reshape(-1, 4)
    states = s.update_many(rows[:, :2], rows[:, 2:])
    _assert_same(s, _fed(beta, a + b))
    assert states.n.shape == (len(b),)
    batch = states.compute()
    for k in range(len(b)):  # row k is the state after the k-th update
        row = _from_states(states, k, beta)
        _assert_same(row, _fed(beta, a + b[: k + 1]))
        # the vectorised compute is the single-state compute of the same numbers
        want = row.compute()
        for key in ("x", "y", "ratio", "low", "high", "n_eff"):
            np.testing.assert_array_equal(batch[key][k], want[key])


def _from_states(states, k: int, beta: float) -> RatioStats:
    s = RatioStats(2, beta=beta)
    s.n, s.w, s.w2 = int(states.n[k]), float(states.w[k]), float(states.w2[k])
    for f in ("sx", "sy", "sxx", "syy", "sxy"):
        setattr(s, f, getattr(states, f)[k])
    return s


def test_update_many_checks_shapes() -> None:
    with pytest.raises(InvalidInputError, match=r"shape \(K, 2\)"):
        RatioStats(2).update_many(np.zeros((3, 3)), np.zeros((3, 3)))


def test_reset_and_empty() -> None:
    s = _fed(0.9, [(1, 2, 3, 4)])
    s.reset()
    assert s.n == 0 and np.isnan(s.compute()["ratio"]).all()


def test_ema_bias_correction_and_weights() -> None:
    """beta < 1: weighted means with weights beta^(n-1-k), no start-up bias."""
    xs, ys = np.array([1.0, 2.0, 4.0]), np.array([1.0, 1.0, 2.0])
    s = RatioStats(1, beta=0.5)
    for x, y in zip(xs, ys):
        s.update([x], [y])
    w = 0.5 ** np.arange(2, -1, -1)
    out = s.compute()
    assert out["x"][0] == pytest.approx((w * xs).sum() / w.sum())
    assert out["ratio"][0] == pytest.approx((w * xs).sum() / (w * ys).sum())
    assert out["n_eff"][0] == pytest.approx(w.sum() ** 2 / (w**2).sum())


def test_fieller_coverage() -> None:
    """Nominal 95%: observed coverage over 400 seeded replicates in [0.91, 0.98]."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        x = rng.normal(10.0, 3.0, 30)
        y = rng.normal(2.0, 1.0, 30)
        s = RatioStats(1)
        for a, b in zip(x, y):
            s.update([a], [b])
        out = s.compute()
        hits += out["low"][0] <= 5.0 <= out["high"][0]
    assert 0.91 <= hits / 400 <= 0.98


def test_fieller_unbounded_when_denominator_is_noise() -> None:
    low, high = fieller(np.array([5.0]), np.array([0.1]), np.array([1.0]), np.array([1.0]),
                        np.array([0.0]))  # fmt: skip
    assert high[0] == np.inf and low[0] >= 0


def test_validation() -> None:
    with pytest.raises(InvalidInputError, match="one value per group"):
        RatioStats(2).update([1.0], [1.0])
    with pytest.raises(InvalidParameterError, match="beta"):
        RatioStats(1, beta=0.0)
    with pytest.raises(InvalidParameterError, match="same arguments"):
        RatioStats(1).merge(RatioStats(2))
