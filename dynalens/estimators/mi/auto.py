"""Method registry and the automatic choice of an estimator (``method="auto"``).

The rules, in order (the first that applies wins; the reason is recorded in
``result.details["auto_reason"]``):

1. ``noise_var`` given → what y holds is detected from repeated inputs: if some x repeats
   with different y rows, y is the *observed* noisy layer → ``noisy_observed``
   (h(y) - h(noise), h(noise) exact); if every repeat has identical y rows, or no x
   repeats, y is taken as the clean activations → ``noisy`` (the known-channel estimator;
   the reason says which case applied, and ``method="noisy_observed"`` overrides).
2. both variables discrete → chosen by the coincidence structure (the Good-Turing coverage
   1 - f1/n of the counts that carry the MI; see the table of
   :func:`~dynalens.estimators.mi._counts.discrete_choice`):
   ``chao_shen`` when most samples are singletons (coverage < 0.5) and one variable is a
   function of the other; when neither is and y is a noisy function of x (20+ repeated x
   values, within-x index of coincidence >= 0.5 or y binary) ``coincidence`` (H(y|x) the
   maximum entropy at that coincidence: joint-count estimators leave the noise tail of
   p(y|x) unseen); ``binning`` when most joint samples are singletons otherwise
   (H(y|x) unresolved: the reason says the number is coarse), ``grassberger`` for an
   undersampled tail (0.5-0.99), ``binning`` (plug-in) when well sampled (>= 0.99); refused
   when no value repeats. MI = H(x) + H(y) - H(x, y) with the same estimator, so a
   deterministic y = f(x) gives exactly H(y).
3. one discrete, one continuous:

   * if the discrete one is (almost) all distinct rows — e.g. the 4096 inputs of the
     Shwartz-Ziv & Tishby task against a deterministic continuous layer — refuse: I(X;T)
     of a deterministic continuous layer over distinct inputs is H(X) for any injective
     layer (infinite for continuous X), so no estimator can give a meaningful number. Pass
     ``noise_var`` (stochastic layer) or ask for ``method="binning"`` explicitly;
   * if the continuous one has exact zeros (a ReLU layer) → ``zero_split`` (plug-in
     I(label; zero pattern) + Ross within each pattern);
   * otherwise → ``ksg`` (Ross 2014 estimator for a continuous variable and a label).
4. both continuous, more than 20 joint dimensions (a wide layer) → refuse: KSG is biased
   toward 0 there (a 1000-unit layer with 500 samples and a true 2.31 nats came back as
   0.003), so ``auto`` names the defensible choices instead: ``method="lossy"`` (a lower
   bound by data processing), ``noise_var`` (exact in any width), ``method="gaussian"``, or
   ``method="ksg"`` to accept the bias.
5. both continuous, one with exact zeros in some column beside non-zero values (ReLU units
   that are off on some inputs; faces of every dimension, where KSG and the Gao et al.
   mixture are biased) → ``zero_split`` (chain rule over the zero pattern).
6. both continuous → ``ksg`` (KSG-1, standardised, Gao et al. tie handling), then a
   convergence check: KSG is re-run on the two halves of the sample. A deterministic
   relation y = f(x) of continuous variables (infinite MI) makes the estimate grow by
   log 2 per doubling of n for ever (``mutual_information(x, 2 * x)`` = log(n / k)); a
   dependence beyond what n samples resolve grows almost as fast (kNN estimators need about
   exp(I) samples; Gao, Ver Steeg & Galstyan 2015, AISTATS). When the full-sample estimate
   exceeds the half-sample one by more than half of log 2, ``auto`` refuses and says why.

Decision table (first matching row wins; n samples, d joint dimensions):

=================  ==================================  ===============================
noise hint         data                                method
=================  ==================================  ===============================
noise_var          x repeats, y differs within repeats ``noisy_observed``
noise_var          otherwise                           ``noisy`` (y = clean activations)
--                 both discrete, no value repeats     refused
--                 both discrete, y noisy function of  ``coincidence``
                   x, coverage < 0.99
--                 both discrete, coverage < 0.5       ``chao_shen`` (y = f(x) or x = f(y))
                                                       / ``binning`` (coarse, joint)
--                 both discrete, coverage 0.5-0.99    ``grassberger``
--                 both discrete, coverage >= 0.99     ``binning``
--                 label vs continuous, label distinct refused
--                 label vs ReLU (exact zeros)         ``zero_split``
--                 label vs continuous                 ``ksg`` (Ross)
--                 continuous, d > 20                  refused (names the alternatives)
--                 continuous with exact zeros         ``zero_split``
--                 continuous                          ``ksg`` + convergence check
=================  ==================================  ===============================

Discreteness (when ``x_discrete`` / ``y_discrete`` are None), the same whatever the dtype:
integer or bool dtype, or floats whose every column is whole-valued or binary (two
values), so 0.0/1.0 input patterns stored as float get the refusal of rule 3 exactly as
the same patterns stored as int.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from dynalens.errors import EstimatorRegimeError
from dynalens.estimators.mi._base import MIEstimator, MIResult, Variable
from dynalens.estimators.mi.adaptive_binning import AdaptiveBinningMI
from dynalens.estimators.mi.binning import BinningMI
from dynalens.estimators.mi.chao_shen import ChaoShenMI
from dynalens.estimators.mi.coincidence import CoincidenceMI
from dynalens.estimators.mi.gaussian import GaussianCopulaMI, GaussianMI
from dynalens.estimators.mi.grassberger import GrassbergerMI
from dynalens.estimators.mi.kde import KDEMI
from dynalens.estimators.mi.ksg import KSGMI
from dynalens.estimators.mi.lossy import LossyMI
from dynalens.estimators.mi.neural import MINE, InfoNCE
from dynalens.estimators.mi.noisy import NoisyChannelMI
from dynalens.estimators.mi.nsb import NSBMI
from dynalens.estimators.mi.observed import ObservedNoisyMI
from dynalens.estimators.mi.pym import PYMMI
from dynalens.estimators.mi.renyi import CauchySchwarzQMI, RenyiMI
from dynalens.estimators.mi.zero_split import ZeroSplitMI, zero_inflated

__all__ = ["REGISTRY", "AutoMI", "select_method"]

#: registry name -> estimator class
REGISTRY: dict[str, type[MIEstimator]] = {
    cls.name: cls
    for cls in (
        BinningMI,
        GrassbergerMI,
        ChaoShenMI,
        CoincidenceMI,
        NSBMI,
        PYMMI,
        ZeroSplitMI,
        AdaptiveBinningMI,
        KDEMI,
        KSGMI,
        GaussianMI,
        GaussianCopulaMI,
        NoisyChannelMI,
        ObservedNoisyMI,
        LossyMI,
        RenyiMI,
        CauchySchwarzQMI,
        InfoNCE,
        MINE,
    )
}

#: methods that take ``noise_var``
NOISE_METHODS = ("noisy", "noisy_observed", "kde", "lossy")
ZERO_REASON = (
    "a continuous variable has exact zeros (ReLU units that are off): chain rule over the "
    "zero pattern, I(x; pattern) + sum_p p(p) I(x; active units | p); "
)
HIGH_DIM = 20


def _mostly_distinct(v: Variable) -> bool:
    codes = torch.unique(v.data, dim=0, return_inverse=True)[1]
    counts = torch.bincount(codes)
    return int((counts[codes] < 2).sum()) > 0.1 * v.n


def select_method(vx: Variable, vy: Variable, noise_var: float | None) -> tuple[str, str]:
    """(method, reason) for validated variables; raises EstimatorRegimeError where no
    estimator can give a meaningful number."""
    if noise_var is not None:
        from dynalens.estimators.mi.observed import varies_within_inputs

        varies = varies_within_inputs(vx, vy)
        if varies:
            return "noisy_observed", (
                "noise_var given and y differs between repeats of the same x, so y holds the "
                "observed noisy layer (a clean layer is a function of x): h(y) - h(noise) "
                "with h(noise) exact and h(y) by Kozachenko-Leonenko"
            )
        how = (
            "y is identical across repeats of each x, so it holds the clean activations"
            if varies is False
            else "x does not repeat or holds class labels, so y is taken as the clean "
            "activations (if y holds the observed noisy layer, pass method='noisy_observed')"
        )
        return "noisy", (
            f"noise_var given and {how}: known-channel Monte-Carlo estimate of the stochastic "
            "layer y given x"
        )
    if vx.discrete and vy.discrete:
        from dynalens.estimators.mi._counts import discrete_choice

        return discrete_choice(vx, vy)
    if vx.discrete != vy.discrete:
        disc = vx if vx.discrete else vy
        if _mostly_distinct(disc):
            raise EstimatorRegimeError(
                f"{disc.name} is discrete with (almost) every row distinct, and the other "
                "variable is continuous without a noise model: I(X;T) of a deterministic "
                "continuous layer over distinct inputs is H(X) for any injective layer, so no "
                "estimator can say anything about T. Pass noise_var=... (stochastic layer, "
                "method 'noisy'), or method='binning' to reproduce Shwartz-Ziv & Tishby."
            )
        if zero_inflated(vx) or zero_inflated(vy):
            return "zero_split", ZERO_REASON + "a label vs a ReLU layer"
        return "ksg", "one discrete, one continuous variable: Ross (2014) kNN estimator"
    d = vx.d + vy.d
    if d > HIGH_DIM:
        raise EstimatorRegimeError(
            f"x and y are continuous with {vx.d} + {vy.d} = {d} joint dimensions and "
            f"n = {vx.n} samples: beyond {HIGH_DIM} joint dimensions kNN estimators (KSG) are "
            "biased toward 0 (a 1000-unit layer with 500 samples and a true 2.31 nats came "
            "back as 0.003), so method='auto' gives no number here. Pick one you can defend: "
            "method='lossy' (PCA to a few dimensions, then KSG: a lower bound by data "
            "processing, with the variance it keeps), noise_var=... (a stochastic layer: the "
            "known-channel estimator is exact in any width), method='gaussian' (exact for "
            f"Gaussian data, needs n > {d + 1}), or method='ksg' to accept the downward bias."
        )
    if zero_inflated(vx) or zero_inflated(vy):
        return "zero_split", ZERO_REASON + "both continuous"
    return "ksg", "both continuous: KSG-1 (max-norm, standardised, Gao et al. ties)"


def _ceiling(n: int, k: int) -> float:
    """The largest KSG-1 estimate, psi(n) - psi(k) (every marginal count at its minimum)."""
    return float(torch.special.digamma(torch.tensor([float(n), float(k)])).diff().neg())


#: auto refuses a KSG estimate that grows by more than this many log 2 per doubling of n
MAX_GROWTH = 0.5


def check_converged(est: MIEstimator, vx: Variable, vy: Variable, full: MIResult) -> dict[str, Any]:
    """Re-run ``est`` (KSG) on the two halves of the sample; refuse when the estimate grows
    with n like that of a deterministic relation. Returns the diagnostics for ``details``."""
    n = vx.n
    params = {**est._check_params(), "n_permutations": 0}
    if n // 2 <= max(params["k"]) + 1:
        return {"convergence": f"not checked: {n} samples are too few to halve"}
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=gen).to(vx.data.device)
    halves = []
    for idx in (perm[: n // 2], perm[n // 2 :]):
        hx = dataclasses.replace(vx, data=vx.data[idx])
        hy = dataclasses.replace(vy, data=vy.data[idx])
        halves.append(est._estimate(hx, hy, dict(params)).estimate)
    half = sum(halves) / 2
    growth = (full.estimate - half) / math.log(2)
    if growth > MAX_GROWTH:
        raise EstimatorRegimeError(
            f"the KSG estimate has not converged: {full.estimate:.2f} nats on {n} samples but "
            f"{half:.2f} on halves of them, a growth of {growth:.2f} x log 2 per doubling of "
            "n. A deterministic relation of continuous variables (y = f(x), e.g. y = 2x) has "
            "infinite MI and makes KSG grow by log 2 per doubling up to its ceiling "
            f"psi(n) - psi(k) = {_ceiling(n, min(params['k'])):.2f} here; a dependence beyond "
            f"what {n} samples "
            "resolve grows almost as fast (kNN estimators need about exp(I) samples). Pass "
            "noise_var=... if y is a stochastic layer f(x) + noise (known-channel estimator), "
            "x_discrete=True for inputs that take finitely many values, or method='ksg' to get "
            "the sample-limited value anyway."
        )
    return {"ksg_half_sample": half, "growth_per_doubling": growth}


def _with_reason(res: MIResult, reason: str) -> MIResult:
    """The delegated estimator's result, with why ``auto`` chose it in ``details``."""
    return dataclasses.replace(res, details={**res.details, "auto_reason": reason})


class AutoMI(MIEstimator):
    """Pick a valid estimator from the data (see the module docstring) and run it.

    The result's ``method`` names the estimator that ran and ``details["auto_reason"]``
    says why. ``params`` are forwarded to the chosen estimator.

    Args:
        noise_var: variance of the noise added to the layer y, if it is stochastic.
        params: parameters of the chosen estimator (dict), e.g. ``{"k": 5}``.
    """

    name = "auto"
    symmetric = False
    supports_entropy = True

    def __init__(self, noise_var: float | None = None, params: dict[str, Any] | None = None):
        self.noise_var = noise_var
        self.params = params

    def _check_params(self) -> dict[str, Any]:
        if self.noise_var is not None:
            from dynalens.estimators.mi.noisy import check_noise_var

            check_noise_var(self.noise_var, "auto")
        return {"noise_var": self.noise_var, "params": dict(self.params or {})}

    def _make(self, method: str, params: dict[str, Any]) -> MIEstimator:
        from dynalens.estimators.mi import make_estimator

        return make_estimator(method, params["noise_var"], params["params"])

    def _estimate(self, vx: Variable, vy: Variable, params: dict[str, Any]) -> MIResult:
        method, reason = select_method(vx, vy, params["noise_var"])
        est = self._make(method, params)
        res = est._estimate(vx, vy, est._check_params())
        if method == "ksg" and not (vx.discrete or vy.discrete):
            res = dataclasses.replace(
                res, details={**res.details, **check_converged(est, vx, vy, res)}
            )
        return _with_reason(res, reason)

    def _entropy(self, v: Variable, params: dict[str, Any]) -> MIResult:
        if params["noise_var"] is not None:
            method, reason = "noisy", "noise_var given: entropy of the Gaussian mixture"
        elif v.discrete:
            method, reason = "binning", "discrete: plug-in entropy of the symbols"
        else:
            method, reason = "ksg", "continuous: Kozachenko-Leonenko kNN entropy"
        est = self._make(method, params)
        res = est._entropy(v, est._check_params())
        return _with_reason(res, reason)
