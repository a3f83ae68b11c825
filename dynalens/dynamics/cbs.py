"""Critical batch size: McCandlish's step/example trade-off, Zhang's CBS, power laws.

**McCandlish et al. 2018** (arXiv:1812.06162, eq. 2.11). To reach a given loss with batch
size ``B`` a run takes ``S`` optimizer steps and ``E = B·S`` examples, and

    (S / S_min − 1) (E / E_min − 1) = 1   ⇔   S(B) = S_min + E_min / B
                                          ⇔   E(B) = E_min + S_min · B

``S_min`` is the number of steps as ``B → ∞``, ``E_min`` the number of examples as
``B → 0``; the critical batch size ``B_crit = E_min / S_min`` (examples) is where both
are twice their minimum. The paper predicts ``B_crit ≈ B_noise`` (≤ ``B_simple``) at the
same loss, both growing as the loss falls.

*Fit.* ``S`` is linear in ``(1, 1/B)``. The noise of a crossing time is roughly
proportional to the time, so the fit is weighted least squares on relative errors
(weights ``1 / Ŝ_i²``, iterated: IRLS), constrained to ``S_min, E_min ≥ 0``.
*Interval.* Expanded percentile bootstrap (quantiles at ``Φ(−t_{n−2})`` instead of
``(1 − level)/2``; Hesterberg 2015), as a sweep has few points: ``"residual"`` resamples
the relative residuals (divided by ``√(1 − h_i)``, ``h`` the leverage) around the fitted
curve; ``"cases"`` resamples the runs within each batch size (replicate seeds; needs ≥ 2
per ``B``; it under-covers by about ``(m − 1)/m`` in variance with ``m`` replicates).
An upper bound of ``inf`` means that ``S_min = 0`` (no step floor) is not excluded.

**Zhang et al. 2024** ("How does critical batch size scale in pre-training?",
arXiv:2410.21676) call critical the batch size at which reaching the target takes 20 %
more steps than perfect linear scaling from a small batch ``B0``, i.e.
``S(B)·B / (S(B0)·B0) = E(B) / E(B0) = 1 + o`` with overhead ``o = 0.2``. Under
McCandlish's model this is

    B_zhang = o · B_crit + (1 + o) · B0  ≈  0.2 · B_crit       (:func:`cbs_zhang_model`)

so the two "critical batch sizes" differ by about 5×; this module names them apart:
``b_crit`` is always McCandlish's, ``cbs_zhang_*`` Zhang's. :func:`cbs_zhang_data`
interpolates the crossing from the measured ``E(B)`` instead of the fit.

**Power laws** (:func:`fit_power_law`): ``y = a · x^k`` by least squares on
``log y = log a + k log x``, with Student-t intervals (exact for Gaussian log errors) --
``B_crit`` against the target loss or against the data size ``D`` (Zhang et al. 2024;
Bergsma et al. 2025, "Power Lines", arXiv:2505.13738, fit ``B_opt`` and ``B_crit ∝ D^k``).

Example:
    >>> fit = fit_critical_batch_size([16, 32, 64, 128], [700, 400, 250, 175])
    >>> round(fit.b_crit), fit.b_crit_interval, fit.cbs_zhang()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dynalens._validation import check_float, check_int, check_option
from dynalens.errors import InvalidInputError

BOOTSTRAPS = ("residual", "cases")


# ------------------------------------------------------------------ McCandlish fit
@dataclass(frozen=True)
class CriticalBatchFit:
    """Result of :func:`fit_critical_batch_size` (McCandlish's model).

    Attributes:
        s_min, e_min: fitted minimum steps (B → ∞) and minimum examples (B → 0).
        b_crit: ``E_min / S_min`` in examples (``inf`` when ``S_min = 0``).
        b_crit_interval, s_min_interval, e_min_interval: bootstrap percentile intervals
            at ``level`` (nan without bootstrap).
        batch_sizes, steps: the finite points that were fitted.
        residuals: relative residuals ``(S_i − Ŝ_i) / Ŝ_i``.
        n_dropped: points left out because the target was not reached (nan / inf steps).
    """

    s_min: float
    e_min: float
    b_crit: float
    b_crit_interval: tuple[float, float]
    s_min_interval: tuple[float, float]
    e_min_interval: tuple[float, float]
    level: float
    bootstrap: str
    n_boot: int
    batch_sizes: np.ndarray = field(repr=False)
    steps: np.ndarray = field(repr=False)
    residuals: np.ndarray = field(repr=False)
    n_dropped: int = 0

    def predict_steps(self, batch_size: Any) -> np.ndarray:
        """``S(B) = S_min + E_min / B``."""
        return self.s_min + self.e_min / np.asarray(batch_size, np.float64)

    def predict_examples(self, batch_size: Any) -> np.ndarray:
        """``E(B) = E_min + S_min · B``."""
        return self.e_min + self.s_min * np.asarray(batch_size, np.float64)

    def cbs_zhang(self, b0: float | None = None, overhead: float = 0.2) -> float:
        """Zhang et al.'s CBS implied by this fit, ``o·B_crit + (1 + o)·B0``; ``b0``
        defaults to the smallest fitted batch size."""
        b0 = float(self.batch_sizes.min()) if b0 is None else b0
        return cbs_zhang_model(self.b_crit, b0, overhead)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no arrays but the relative residuals)."""
        return {
            "s_min": self.s_min,
            "e_min": self.e_min,
            "b_crit": self.b_crit,
            "b_crit_interval": list(self.b_crit_interval),
            "s_min_interval": list(self.s_min_interval),
            "e_min_interval": list(self.e_min_interval),
            "level": self.level,
            "bootstrap": self.bootstrap,
            "n_boot": self.n_boot,
            "n_points": len(self.steps),
            "n_dropped": self.n_dropped,
            "cbs_zhang_model": self.cbs_zhang(),
            "relative_residuals": self.residuals.tolist(),
        }


def _as_points(batch_sizes: Any, steps: Any) -> tuple[np.ndarray, np.ndarray, int]:
    b = np.asarray(batch_sizes, np.float64).reshape(-1)
    s = np.asarray(steps, np.float64).reshape(-1)
    if b.shape != s.shape:
        raise InvalidInputError(
            f"batch_sizes and steps must have one entry per run; got {b.size} batch sizes and "
            f"{s.size} step counts. Pass them as two equal-length sequences (repeat a batch "
            "size for each seed)."
        )
    if not np.all(np.isfinite(b)) or np.any(b <= 0):
        raise InvalidInputError(f"batch sizes must be finite and > 0; got {b.tolist()}.")
    keep = np.isfinite(s)
    if np.any(s[keep] <= 0):
        raise InvalidInputError(
            f"steps to the target must be > 0; got {s[keep][s[keep] <= 0].tolist()}. Mark "
            "runs that never reached the target with nan (they are left out)."
        )
    return b[keep], s[keep], int((~keep).sum())


def _wls(x: np.ndarray, w: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative weighted least squares of ``y ≈ a + b x`` for each row of ``y``.

    ``x``, ``w``: (n,) or (R, n); ``y``: (R, n). Two unknowns, so the constrained optimum
    is the unconstrained one when feasible, else the better of the faces a = 0, b = 0.
    """
    sw, swx, swxx = (w).sum(-1), (w * x).sum(-1), (w * x * x).sum(-1)
    swy, swxy, swyy = (w * y).sum(-1), (w * x * y).sum(-1), (w * y * y).sum(-1)
    det = sw * swxx - swx * swx
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (swxx * swy - swx * swxy) / det
        b = (sw * swxy - swx * swy) / det
        b_only = np.maximum(swxy / swxx, 0.0)  # a = 0
        a_only = np.maximum(swy / sw, 0.0)  # b = 0
    loss_b = swyy - 2 * b_only * swxy + b_only**2 * swxx
    loss_a = swyy - 2 * a_only * swy + a_only**2 * sw
    feasible = (a >= 0) & (b >= 0)
    face_b = loss_b <= loss_a
    a = np.where(feasible, a, np.where(face_b, 0.0, a_only))
    b = np.where(feasible, b, np.where(face_b, b_only, 0.0))
    return a, b


def _leverage(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Diagonal of the hat matrix of the weighted fit on ``(1, x)``."""
    X = np.stack([np.ones_like(x), x], 1)
    inv = np.linalg.pinv(X.T @ (w[:, None] * X))
    return w * np.einsum("ij,jk,ik->i", X, inv, X)


def _ratio(e: np.ndarray, s: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s > 0, e / np.where(s > 0, s, 1.0), np.inf)


def _expanded_tail(level: float, dof: int) -> float:
    """Tail probability of the expanded percentile interval (Hesterberg 2015): the
    bootstrap quantiles at ``Φ(−t_{(1+level)/2, dof})`` instead of ``(1 − level)/2``, which
    corrects the under-coverage of percentile intervals with few points."""
    from dynalens._optional import require

    t = float(require("scipy.stats", "bootstrap intervals").t.ppf((1 + level) / 2, dof))
    return 0.5 * math.erfc(t / math.sqrt(2.0))


def _interval(v: np.ndarray, tail: float) -> tuple[float, float]:
    big = np.finfo(np.float64).max / 4  # inf (S_min = 0 resamples) without inf - inf
    lo, hi = np.quantile(np.minimum(v, big), [tail, 1.0 - tail], method="linear")
    return tuple(float(q) if q < big / 2 else math.inf for q in (lo, hi))  # type: ignore[return-value]


def fit_critical_batch_size(
    batch_sizes: Sequence[float] | np.ndarray,
    steps: Sequence[float] | np.ndarray,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: str = "residual",
    iterations: int = 10,
) -> CriticalBatchFit:
    """Fit ``S(B) = S_min + E_min / B`` to steps-to-target; ``B_crit = E_min / S_min``.

    Args:
        batch_sizes: batch size of each run (repeat a value for replicate seeds).
        steps: steps each run took to reach the target; nan / inf = not reached (dropped).
        bootstrap: bootstrap resamples for the intervals (0: no interval).
        seed: seed of the bootstrap.
        level: coverage of the percentile intervals.
        method: ``"residual"`` or ``"cases"`` (within each batch size), see the module doc.
        iterations: IRLS iterations of the relative-error weights.

    Returns:
        A :class:`CriticalBatchFit`.
    """
    check_int("bootstrap", bootstrap, min=0)
    check_int("seed", seed, min=0)
    check_int("iterations", iterations, min=1)
    check_float("level", level, min=0.0, max=1.0, min_inclusive=False)
    check_option("method", method, BOOTSTRAPS)
    b, s, dropped = _as_points(batch_sizes, steps)
    if s.size < 3 or np.unique(b).size < 2:
        raise InvalidInputError(
            f"the fit needs at least 3 runs that reached the target at 2 or more batch sizes; "
            f"got {s.size} run(s) at {np.unique(b).size} batch size(s) ({dropped} did not reach "
            "it). Add batch sizes, raise max_steps, or choose an easier target."
        )
    x = 1.0 / b
    fitted = s.copy()
    for _ in range(iterations):
        w = 1.0 / np.maximum(fitted, 1e-300) ** 2
        a, e = _wls(x, w, s[None])
        fitted = np.maximum(a[0] + e[0] * x, 1e-12 * s.max())
    s_min, e_min = float(a[0]), float(e[0])
    resid = (s - fitted) / fitted
    nan2 = (math.nan, math.nan)
    ci_b = ci_s = ci_e = nan2
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        n = s.size
        if method == "residual":
            r = resid / np.sqrt(np.maximum(1.0 - _leverage(x, w), 1e-3))
            r = r - r.mean()
            ys = fitted * (1.0 + r[rng.integers(0, n, size=(bootstrap, n))])
            xs, ws = x, w
        else:
            groups = [np.flatnonzero(b == v) for v in np.unique(b)]
            if min(len(g) for g in groups) < 2:
                raise InvalidInputError(
                    "method='cases' resamples the runs of each batch size and needs at least "
                    "2 runs (seeds) per batch size; got "
                    f"{ {float(v): int((b == v).sum()) for v in np.unique(b)} }. Use "
                    "method='residual', or run more seeds."
                )
            idx = np.concatenate(
                [g[rng.integers(0, len(g), size=(bootstrap, len(g)))] for g in groups], axis=1
            )
            ys, xs, ws = s[idx], x[idx], w[idx]
        a_b, e_b = _wls(xs, ws, ys)
        tail = _expanded_tail(level, n - 2)
        ci_b = _interval(_ratio(e_b, a_b), tail)
        ci_s, ci_e = _interval(a_b, tail), _interval(e_b, tail)
    return CriticalBatchFit(
        s_min=s_min,
        e_min=e_min,
        b_crit=float(_ratio(np.array(e_min), np.array(s_min))),
        b_crit_interval=ci_b,
        s_min_interval=ci_s,
        e_min_interval=ci_e,
        level=level,
        bootstrap=method if bootstrap > 0 else "none",
        n_boot=bootstrap,
        batch_sizes=b,
        steps=s,
        residuals=resid,
        n_dropped=dropped,
    )


# --------------------------------------------------------------------- Zhang's CBS
def cbs_zhang_model(b_crit: float, b0: float, overhead: float = 0.2) -> float:
    """Zhang et al.'s CBS under McCandlish's model: ``o·B_crit + (1 + o)·B0``.

    Solves ``E(B) / E(B0) = 1 + o`` with ``E(B) = E_min + S_min B``.
    """
    check_float("overhead", overhead, min=0.0, min_inclusive=False)
    check_float("b0", b0, min=0.0, min_inclusive=False)
    return overhead * float(b_crit) + (1.0 + overhead) * float(b0)


def cbs_zhang_data(
    batch_sizes: Sequence[float] | np.ndarray,
    steps: Sequence[float] | np.ndarray,
    *,
    overhead: float = 0.2,
) -> float:
    """Zhang et al.'s CBS interpolated from measured steps, without a model.

    Steps are averaged per batch size (geometric mean over the runs that reached the
    target); with ``B0`` the smallest batch size, returns the first ``B`` where
    ``E(B) / E(B0) = B S(B) / (B0 S(B0))`` reaches ``1 + overhead``, linearly interpolated
    in ``log B``; ``inf`` when the sweep never reaches it (the CBS is above its largest
    batch size).
    """
    check_float("overhead", overhead, min=0.0, min_inclusive=False)
    b, s, _ = _as_points(batch_sizes, steps)
    sizes = np.unique(b)
    if sizes.size < 2:
        raise InvalidInputError(
            f"cbs_zhang_data needs runs at 2 or more batch sizes that reached the target; got "
            f"{sizes.tolist()}."
        )
    e = np.array([v * math.exp(np.log(s[b == v]).mean()) for v in sizes])
    r = e / e[0]
    above = np.flatnonzero(r >= 1.0 + overhead)
    if above.size == 0:
        return math.inf
    j = int(above[0])
    t = (1.0 + overhead - r[j - 1]) / (r[j] - r[j - 1])
    return float(math.exp(math.log(sizes[j - 1]) + t * math.log(sizes[j] / sizes[j - 1])))


# ---------------------------------------------------------------------- power laws
@dataclass(frozen=True)
class PowerLawFit:
    """``y = coefficient · x^exponent`` fitted in log-log space (:func:`fit_power_law`).

    Intervals are Student-t at ``level`` (nan with fewer than 3 points);
    ``residuals`` are ``log y − log ŷ``.
    """

    coefficient: float
    exponent: float
    coefficient_interval: tuple[float, float]
    exponent_interval: tuple[float, float]
    level: float
    residuals: np.ndarray = field(repr=False)

    def predict(self, x: Any) -> np.ndarray:
        return self.coefficient * np.asarray(x, np.float64) ** self.exponent

    def to_dict(self) -> dict[str, Any]:
        return {
            "coefficient": self.coefficient,
            "exponent": self.exponent,
            "coefficient_interval": list(self.coefficient_interval),
            "exponent_interval": list(self.exponent_interval),
            "level": self.level,
            "n_points": len(self.residuals),
        }


def fit_power_law(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, level: float = 0.95
) -> PowerLawFit:
    """Least-squares fit of ``log y = log a + k log x``; returns a :class:`PowerLawFit`.

    Points with a non-finite or non-positive ``x`` or ``y`` are rejected (say which), so
    pass only measured values (e.g. drop targets whose ``B_crit`` is ``inf``).
    """
    check_float("level", level, min=0.0, max=1.0, min_inclusive=False)
    xa = np.asarray(x, np.float64).reshape(-1)
    ya = np.asarray(y, np.float64).reshape(-1)
    if xa.shape != ya.shape or xa.size < 2:
        raise InvalidInputError(
            f"fit_power_law needs x and y of the same length ≥ 2; got {xa.size} and {ya.size}."
        )
    bad = ~(np.isfinite(xa) & np.isfinite(ya) & (xa > 0) & (ya > 0))
    if bad.any():
        raise InvalidInputError(
            f"power laws are fitted in log space, so x and y must be finite and > 0; points "
            f"{np.flatnonzero(bad).tolist()} are not (x={xa[bad].tolist()}, "
            f"y={ya[bad].tolist()}). Drop them before fitting."
        )
    lx, ly = np.log(xa), np.log(ya)
    if np.ptp(lx) == 0:
        raise InvalidInputError("fit_power_law needs at least two distinct x values.")
    mx = lx.mean()
    sxx = ((lx - mx) ** 2).sum()
    k = float(((lx - mx) * (ly - ly.mean())).sum() / sxx)
    c = float(ly.mean() - k * mx)
    resid = ly - (c + k * lx)
    n = xa.size
    ci_k = ci_a = (math.nan, math.nan)
    if n >= 3:
        from dynalens._optional import require

        t = float(require("scipy.stats", "fit_power_law intervals").t.ppf((1 + level) / 2, n - 2))
        s2 = float((resid**2).sum() / (n - 2))
        se_k = math.sqrt(s2 / sxx)
        se_c = math.sqrt(s2 * (1.0 / n + mx * mx / sxx))
        ci_k = (k - t * se_k, k + t * se_k)
        ci_a = (math.exp(c - t * se_c), math.exp(c + t * se_c))
    return PowerLawFit(
        coefficient=math.exp(c),
        exponent=k,
        coefficient_interval=ci_a,
        exponent_interval=ci_k,
        level=level,
        residuals=resid,
    )
