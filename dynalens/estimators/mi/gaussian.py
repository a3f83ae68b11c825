r"""Gaussian (canonical-correlation) and Gaussian-copula mutual information.

Formula (nats): for jointly Gaussian x (d_x) and y (d_y) with canonical correlations
:math:`\rho_1 \ge \dots \ge \rho_r`,

.. math:: I(X;Y) = -\tfrac12 \sum_i \log(1 - \rho_i^2)
                 = \tfrac12[\log\det\Sigma_x + \log\det\Sigma_y - \log\det\Sigma],

and :math:`h(X) = \tfrac12\log\det(2\pi e\,\Sigma_x)`. The copula variant first maps every
column to normal scores :math:`\Phi^{-1}(\mathrm{rank}/(n+1))` (average ranks for ties),
which makes the estimate invariant to strictly monotone maps of each column; it is exact
for Gaussian copulas (e.g. Gaussians pushed through monotone nonlinearities).

Bias: the plug-in estimate is biased *upward* (about :math:`d_x d_y / 2n` nats under
independence). ``bias_correction=True`` (default) removes the bias of each log-determinant
exactly for Gaussian data, :math:`E[\log\det S] = \log\det\Sigma + \sum_{i=1}^{d}
\psi((n-i)/2) + d\log(2/(n-1))`, so the corrected estimate is unbiased under the model
(and can be slightly negative under independence). Standard error: the delta-method
:math:`\sqrt{\sum_i \rho_i^2 / n}`.

Valid when: both variables are continuous and n > d_x + d_y + 1. Constant columns carry
no information and are dropped; linearly dependent columns are reduced to their span. For
non-Gaussian dependence the number is the MI of the Gaussian with the same covariance — a
cheap sanity value, usually a lower bound on strength of dependence, not the MI.
Refuses discrete inputs and perfectly (linearly) dependent pairs, whose Gaussian MI is
infinite, and, before allocating, variables so wide that the d x d covariances or their
O(d^3) decompositions exceed the machine (:mod:`~dynalens.estimators.mi._cost`).

References: Cover & Thomas, *Elements of Information Theory*, eq. 8.56; Kraskov et al.
2004 (Gaussian check); Ince et al. 2017, "A statistical framework for neuroimaging data
analysis based on mutual information estimated via a Gaussian copula", Hum. Brain Mapp.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dynalens._validation import check_bool
from dynalens.errors import EstimatorRegimeError
from dynalens.estimators.mi._base import MIEstimator, MIResult, Variable
from dynalens.estimators.mi._cost import check_cost, dense_seconds

__all__ = ["GaussianCopulaMI", "GaussianMI"]


def _logdet_bias(d: int, n: int) -> float:
    """E[log det S] - log det Sigma for the unbiased sample covariance S (n - 1 dof)."""
    halves = torch.tensor([(n - i) / 2.0 for i in range(1, d + 1)], dtype=torch.float64)
    return float(torch.special.digamma(halves).sum()) + d * math.log(2.0 / (n - 1))


def _span(z: torch.Tensor, tol: float = 1e-10) -> torch.Tensor:
    """Whitened coordinates of the column span of the centred z (drops constant and
    linearly dependent directions). Returns an (n, r) matrix with identity covariance."""
    z = z - z.mean(0, keepdim=True)
    sd = z.std(0)
    keep = sd > 0
    z = z[:, keep] / sd[keep]
    if z.shape[1] == 0:
        return z
    cov = z.T @ z / (z.shape[0] - 1)
    evals, evecs = torch.linalg.eigh(cov)
    good = evals > tol * evals.max()
    return z @ (evecs[:, good] / evals[good].sqrt())


def normal_scores(t: torch.Tensor) -> torch.Tensor:
    """Per-column Phi^{-1}(rank / (n + 1)), average ranks for ties."""
    n = t.shape[0]
    out = torch.empty_like(t)
    for j in range(t.shape[1]):
        col = t[:, j]
        _, inv, counts = torch.unique(col, return_inverse=True, return_counts=True)
        ends = torch.cumsum(counts, 0).to(t.dtype)
        avg_rank = ends - (counts.to(t.dtype) - 1) / 2.0  # 1-based average rank per value
        out[:, j] = torch.special.ndtri(avg_rank[inv] / (n + 1))
    return out


class GaussianMI(MIEstimator):
    """Gaussian / CCA mutual information, -1/2 sum log(1 - rho_i^2), in nats.

    Args:
        bias_correction: remove the finite-sample bias of the log-determinants (exact
            for Gaussian data). ``False`` gives the plug-in estimate (biased upward).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(2000, 1)); y = 0.8 * x + 0.6 * rng.normal(size=(2000, 1))
        >>> round(GaussianMI().estimate(x, y).estimate, 1)  # truth -1/2 log(1 - 0.64) = 0.51
        0.5
    """

    name = "gaussian"
    supports_entropy = True
    _copula = False

    def __init__(self, bias_correction: bool = True) -> None:
        self.bias_correction = bias_correction

    def _check_params(self) -> dict[str, Any]:
        return {"bias_correction": check_bool("bias_correction", self.bias_correction)}

    def _prepare(self, v: Variable) -> torch.Tensor:
        if v.discrete:
            raise EstimatorRegimeError(
                f"{self.name} MI assumes continuous variables, but {v.name} is discrete "
                "(integer dtype, or whole-valued or binary float columns). Use "
                "method='binning' for discrete-discrete or method='ksg' (Ross 2014) for "
                "discrete-continuous, or pass "
                f"{v.name}_discrete=False if it really is continuous."
            )
        t = v.data.to(torch.float64)
        return normal_scores(t) if self._copula else t

    def _check_cost(self, n: int, dims: tuple[int, ...], device: torch.device) -> None:
        """Refuse before allocating the d x d covariances (and their O(d^3)
        eigendecompositions) of variables far wider than the machine handles."""
        d_all = sum(dims)
        nbytes = 8.0 * (3 * n * d_all + 3 * sum(d * d for d in dims) + dims[0] * dims[-1])
        flops = sum(2.0 * n * d * d + 10.0 * d**3 for d in dims)
        check_cost(
            self.name,
            f"n = {n} samples of {' + '.join(map(str, dims))} dims",
            device=device,
            nbytes=nbytes,
            seconds=dense_seconds(flops, device),
            fix="Compress the variables first (method='lossy' with inner='gaussian', PCA to "
            "n_components dims) or select the columns that matter.",
        )

    def _estimate(self, vx: Variable, vy: Variable, params: dict[str, Any]) -> MIResult:
        self._check_cost(vx.n, (vx.d, vy.d), vx.data.device)
        zx, zy = _span(self._prepare(vx)), _span(self._prepare(vy))
        n, dx, dy = zx.shape[0], zx.shape[1], zy.shape[1]
        if dx == 0 or dy == 0:  # a constant variable shares no information
            return self._result(0.0, n, params, stderr=0.0, details={"canonical_corr": []})
        if n <= dx + dy + 1:
            raise EstimatorRegimeError(
                f"{self.name} MI needs more samples than dimensions: n={n} but x and y span "
                f"{dx} + {dy} dimensions; pass at least {dx + dy + 2} samples or compress "
                "the variables first (method='lossy')."
            )
        cxy = zx.T @ zy / (n - 1)
        rho = torch.linalg.svdvals(cxy).clamp(max=1.0)
        if float(rho.max()) > 1.0 - 1e-12:
            raise EstimatorRegimeError(
                f"x and y are linearly dependent (largest canonical correlation "
                f"{float(rho.max()):.12f}); their Gaussian MI is infinite. A deterministic "
                "relation needs a noise model (noise_var=...) or a discrete estimator."
            )
        mi = -0.5 * float(torch.log1p(-(rho**2)).sum())
        if params["bias_correction"]:
            mi -= 0.5 * (_logdet_bias(dx, n) + _logdet_bias(dy, n) - _logdet_bias(dx + dy, n))
        stderr = math.sqrt(float((rho**2).sum()) / n)
        return self._result(mi, n, params, stderr=stderr, details={"canonical_corr": rho.tolist()})

    def _entropy(self, v: Variable, params: dict[str, Any]) -> MIResult:
        self._check_cost(v.n, (v.d,), v.data.device)
        t = self._prepare(v)
        n, d = t.shape
        if n <= d + 1:
            raise EstimatorRegimeError(
                f"Gaussian entropy needs n > d + 1 samples; got n={n}, d={d}."
            )
        cov = torch.cov(t.T).reshape(d, d)
        sign, logdet = torch.linalg.slogdet(cov)
        if float(sign) <= 0:
            raise EstimatorRegimeError(
                f"{v.name} has a singular covariance (constant or linearly dependent "
                "columns); its differential entropy is -inf. Drop those columns first."
            )
        ld = float(logdet)
        if params["bias_correction"]:
            ld -= _logdet_bias(d, n)
        return self._result(0.5 * (d * math.log(2 * math.pi * math.e) + ld), n, params)


class GaussianCopulaMI(GaussianMI):
    """Gaussian-copula MI: normal scores per column, then :class:`GaussianMI` (nats).

    Invariant to strictly increasing maps of each column and exact for Gaussian copulas.
    For one-dimensional x and y it is a lower bound on the MI in the population: after
    the transform both marginals are standard normal, and among joints with those
    marginals and that covariance the Gaussian has the largest joint entropy (Ince et al.
    2017). For multi-column variables it is only a sanity value.
    """

    name = "gaussian_copula"
    _copula = True

    def _entropy(self, v: Variable, params: dict[str, Any]) -> MIResult:
        raise EstimatorRegimeError(
            "the copula transform discards the marginals, so it has no entropy; use "
            "method='gaussian' or 'ksg' for h(x)."
        )
