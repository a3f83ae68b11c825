"""Streaming ratio statistics for noise scales: update / compute / reset / merge.

A noise scale is a ratio of two expectations, ``B = E[x] / E[y]`` (``x_k``: an unbiased
estimate of ``tr Σ`` from step k, ``y_k``: one of ``|G|²``). The ratio of the per-step
estimates is biased (Jensen; and ``y_k`` can be ≤ 0), so numerator and denominator are
averaged separately and divided afterwards (McCandlish et al. 2018, arXiv:1812.06162,
App. A.1; Crowson's k-diffusion ``GradientNoiseScale``).

:class:`RatioStats` keeps fixed-size weighted co-moments of ``(x, y)`` for K groups at once
(e.g. every layer plus the total). Weights decay by ``beta`` per update: ``beta = 1`` is a
plain mean over all updates (a window when :meth:`reset` is called every W steps),
``beta < 1`` an exponential moving average with Adam-style bias correction (the running
sums are divided by the sum of weights, never started at an arbitrary value).

The interval is Fieller's (1954) for a ratio of means, from the weighted sample
(co)variances of the per-step estimates and the effective number of steps
``n_eff = (Σw)² / Σw²``; it assumes the steps' estimates are independent (true for
i.i.d. batches at a fixed point; optimistic along a trajectory where θ drifts). It is
unbounded above when ``|G|²`` is not significantly above 0 (e.g. at an optimum).

Merges are exact: :meth:`RatioStats.merge` appends another state's updates after this
one's (``beta^{n_other}`` discounts this state), so ``merge(update(a), update(b)) ==
update(a + b)``; with ``beta = 1`` it is commutative, e.g. across ranks with disjoint data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dynalens._validation import check_float, check_int
from dynalens.errors import InvalidInputError, InvalidParameterError

_FIELDS = ("sx", "sy", "sxx", "syy", "sxy")


class RatioStats:
    """Weighted co-moments of paired estimates ``(x, y)`` for ``n_groups`` groups.

    Args:
        n_groups: number of groups K (each update passes arrays of shape (K,)).
        beta: decay per update in (0, 1]; 1 = equal weights.

    Example:
        >>> s = RatioStats(1)
        >>> for x, y in [(4.0, 1.0), (6.0, 1.0)]:
        ...     s.update([x], [y])
        >>> s.compute()["ratio"]
        array([5.])
    """

    def __init__(self, n_groups: int = 1, beta: float = 1.0) -> None:
        self.n_groups = check_int("n_groups", n_groups, min=1)
        self.beta = check_float("beta", beta, min=0.0, max=1.0, min_inclusive=False)
        self.reset()

    def reset(self) -> None:
        """Back to the empty state."""
        self.n = 0
        self.w = 0.0
        self.w2 = 0.0
        K = self.n_groups
        self.sx: np.ndarray = np.zeros(K)
        self.sy: np.ndarray = np.zeros(K)
        self.sxx: np.ndarray = np.zeros(K)
        self.syy: np.ndarray = np.zeros(K)
        self.sxy: np.ndarray = np.zeros(K)

    def update(self, x: Any, y: Any) -> RatioStats:
        """Add one step's estimates ``x`` (numerator) and ``y`` (denominator), shape (K,)."""
        if not (_is_vector(x, self.n_groups) and _is_vector(y, self.n_groups)):
            x = np.asarray(x, dtype=np.float64).reshape(-1)
            y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.shape != (self.n_groups,) or y.shape != (self.n_groups,):
            raise InvalidInputError(
                f"update expects x and y of shape ({self.n_groups},), one value per group; "
                f"got {x.shape} and {y.shape}."
            )
        # The arrays are rebound, never changed in place: snapshots may share them.
        b = self.beta
        self.n += 1
        self.w = b * self.w + 1.0
        self.w2 = b * b * self.w2 + 1.0
        self.sx = b * self.sx + x
        self.sy = b * self.sy + y
        self.sxx = b * self.sxx + x * x
        self.syy = b * self.syy + y * y
        self.sxy = b * self.sxy + x * y
        return self

    def merge(self, other: RatioStats) -> RatioStats:
        """Append ``other``'s updates after this state's (exact); returns self."""
        if not isinstance(other, RatioStats):
            raise InvalidParameterError(f"merge expects a RatioStats; got {type(other).__name__}.")
        if other.n_groups != self.n_groups or other.beta != self.beta:
            raise InvalidParameterError(
                f"cannot merge states with different shapes or decays: this one has "
                f"n_groups={self.n_groups}, beta={self.beta}; the other n_groups="
                f"{other.n_groups}, beta={other.beta}. Build both with the same arguments."
            )
        d = self.beta**other.n
        self.n += other.n
        self.w = d * self.w + other.w
        self.w2 = d * d * self.w2 + other.w2
        for f in _FIELDS:
            setattr(self, f, d * getattr(self, f) + getattr(other, f))
        return self

    def state_dict(self) -> dict[str, Any]:
        """A copy of the state (numbers and float64 arrays)."""
        out: dict[str, Any] = {"n": self.n, "w": self.w, "w2": self.w2, "beta": self.beta}
        out.update({f: getattr(self, f).copy() for f in _FIELDS})
        return out

    def load_state_dict(self, state: dict[str, Any]) -> RatioStats:
        self.n, self.w, self.w2 = int(state["n"]), float(state["w"]), float(state["w2"])
        for f in _FIELDS:
            setattr(self, f, np.asarray(state[f], dtype=np.float64).copy())
        return self

    def update_many(self, x: Any, y: Any) -> RatioStates:
        """Add K steps' estimates at once, ``x`` and ``y`` of shape (K, n_groups), in order.

        Equal to K calls of :meth:`update` (up to rounding: the decayed sums are one
        product with the lower-triangular matrix ``beta^(r - j)``); returns the state after
        each of the K updates, for per-step snapshots.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        G = self.n_groups
        if x.ndim != 2 or x.shape[1:] != (G,) or y.shape != x.shape:
            raise InvalidInputError(
                f"update_many expects x and y of shape (K, {G}), one row per step; got "
                f"{x.shape} and {y.shape}."
            )
        K = x.shape[0]
        b = self.beta
        r = np.arange(K)
        decay = np.tril(b ** np.subtract.outer(r, r).clip(min=0))  # [r, j] = b^(r-j), j <= r
        carry = b ** (r + 1.0)  # weight of the state before the first of the K updates
        decay2 = decay * decay
        cols = {
            "sx": x, "sy": y, "sxx": x * x, "syy": y * y, "sxy": x * y,
        }  # fmt: skip
        new = {f: decay @ v + carry[:, None] * getattr(self, f) for f, v in cols.items()}
        states = RatioStates(
            n=self.n + r + 1,
            w=decay.sum(1) + carry * self.w,
            w2=decay2.sum(1) + carry * carry * self.w2,
            beta=b,
            **new,
        )
        if K:  # the arrays of the last row are views: never changed in place
            self.n = int(states.n[-1])
            self.w, self.w2 = float(states.w[-1]), float(states.w2[-1])
            for f in _FIELDS:
                setattr(self, f, getattr(states, f)[-1])
        return states

    def compute(self, z: float = 1.96) -> dict[str, np.ndarray]:
        """Means, ratio, Fieller interval at ``z`` standard errors and ``n_eff``.

        Returns arrays of shape (K,): ``x`` and ``y`` (weighted means), ``ratio`` = x/y,
        ``low`` / ``high`` (nan with fewer than 2 effective steps; ``high`` = inf when the
        denominator is not significantly positive), ``n_eff``.
        """
        st = self
        return ratio_results(np.float64(st.w), np.float64(st.w2), st.sx, st.sy, st.sxx,
                             st.syy, st.sxy, z)  # fmt: skip


@dataclass(frozen=True)
class RatioStates:
    """States of a :class:`RatioStats` after each of K updates (:meth:`RatioStats.update_many`):
    ``n``, ``w``, ``w2`` of shape (K,), the co-moment sums of shape (K, n_groups)."""

    n: np.ndarray
    w: np.ndarray
    w2: np.ndarray
    sx: np.ndarray
    sy: np.ndarray
    sxx: np.ndarray
    syy: np.ndarray
    sxy: np.ndarray
    beta: float

    def compute(self, z: float = 1.96) -> dict[str, np.ndarray]:
        """:meth:`RatioStats.compute` of every state at once: arrays of shape (K, n_groups)."""
        w, w2 = self.w[:, None], self.w2[:, None]
        return ratio_results(w, w2, self.sx, self.sy, self.sxx, self.syy, self.sxy, z)


def ratio_results(
    w: np.ndarray | np.floating,
    w2: np.ndarray | np.floating,
    sx: np.ndarray,
    sy: np.ndarray,
    sxx: np.ndarray,
    syy: np.ndarray,
    sxy: np.ndarray,
    z: float,
) -> dict[str, np.ndarray]:
    """Means, ratio, Fieller interval and ``n_eff`` from weighted sums (any leading shape;
    ``w``, ``w2`` broadcast against the sums; ``w = 0`` is the empty state)."""
    shape = np.broadcast_shapes(np.shape(w), np.shape(sx))
    empty = np.broadcast_to(w == 0, shape)
    with np.errstate(all="ignore"):  # empty states, zero variances, infinite ratios
        W = np.where(w == 0, np.nan, w)
        mx, my = sx / W, sy / W
        ratio = np.where(my != 0, mx / np.where(my != 0, my, 1.0), np.inf * np.sign(mx))
        n_eff = np.broadcast_to(W * W / w2, shape)
        corr = 1.0 / (1.0 - w2 / (W * W))  # reliability-weights unbiasing
        vxx = np.maximum(sxx / W - mx * mx, 0.0) * corr / n_eff
        vyy = np.maximum(syy / W - my * my, 0.0) * corr / n_eff
        vxy = (sxy / W - mx * my) * corr / n_eff
        low, high = fieller(mx, my, vxx, vyy, vxy, z)
    few = ~(n_eff > 1.0 + 1e-12)  # fewer than 2 effective steps (or empty): no interval
    low, high = np.where(few, np.nan, low), np.where(few, np.nan, high)
    ratio = np.where(empty, np.nan, ratio)
    return {"x": mx, "y": my, "ratio": ratio, "low": low, "high": high,
            "n_eff": np.array(n_eff)}  # fmt: skip


def fieller(
    mx: np.ndarray,
    my: np.ndarray,
    vxx: np.ndarray,
    vyy: np.ndarray,
    vxy: np.ndarray,
    z: float = 1.96,
) -> tuple[np.ndarray, np.ndarray]:
    """Fieller's interval for ``E x / E y`` restricted to ``[0, ∞]`` (noise scales are ≥ 0).

    Solves ``(mx − R my)² ≤ z² (vxx − 2R vxy + R² vyy)`` for R, with ``v`` the variances
    of the means. When ``my² ≤ z² vyy`` (the denominator is not significantly non-zero)
    the set is unbounded and ``high = inf``.
    """
    z2 = z * z
    a = my * my - z2 * vyy
    b = mx * my - z2 * vxy
    c = mx * mx - z2 * vxx
    disc = b * b - a * c
    low = np.zeros_like(mx)
    high = np.full_like(mx, math.inf)
    sq = np.sqrt(np.maximum(disc, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        bounded = (a > 0) & (disc >= 0)
        r1, r2 = (b - sq) / a, (b + sq) / a
        low = np.where(bounded, np.maximum(r1, 0.0), low)
        high = np.where(bounded, np.maximum(r2, 0.0), high)
        # a < 0: the set is (-inf, r2] ∪ [r1, inf) (a flips the roots); keep its part in [0, inf)
        upper_root = np.where(a < 0, np.maximum(r1, r2), 0.0)
        lower_root = np.where(a < 0, np.minimum(r1, r2), 0.0)
        open_low = np.where((a < 0) & (disc > 0) & (lower_root < 0), upper_root, 0.0)
        low = np.where(bounded, low, np.maximum(open_low, 0.0))
    return low, high


def _is_vector(a: Any, k: int) -> bool:
    """A float64 numpy array of shape (k,) (no conversion needed)."""
    return isinstance(a, np.ndarray) and a.dtype == np.float64 and a.shape == (k,)
