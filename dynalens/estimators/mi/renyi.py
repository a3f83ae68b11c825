r"""Kernel dependence measures: matrix-based Rényi α-entropy / MI and Cauchy-Schwarz QMI.

**These are not Shannon mutual information.** They are differentiable dependence measures
used as information-bottleneck regularisers; their values depend on the kernel width and
must not be plotted on a Shannon information plane (measured: CS-QMI returns 0.00-0.23
where the Shannon MI is 0.3-8 nats). Results carry ``quantity="renyi"`` or
``quantity="cauchy-schwarz"``; units are nats (natural logarithms) of those quantities.

* **Matrix-based Rényi α-entropy** (Sanchez Giraldo, Rao & Principe 2015, "Measures of
  entropy from data using infinitely divisible kernels", IEEE Trans. Inf. Theory): with a
  Gram matrix K (K_ii = 1) and A = K / tr K,

  .. math:: S_\alpha(A) = \frac{1}{1-\alpha}\log \operatorname{tr}(A^\alpha)
                        = \frac{1}{1-\alpha}\log\sum_i \lambda_i(A)^\alpha,

  joint entropy :math:`S_\alpha(A\circ B / \operatorname{tr}(A\circ B))` (Hadamard product)
  and :math:`I_\alpha = S_\alpha(A) + S_\alpha(B) - S_\alpha(A, B)`. α → 1 gives the von
  Neumann entropy :math:`-\sum\lambda\log\lambda`. Discrete variables use the delta kernel
  (K_ij = 1 if the rows are equal), for which S_α is exactly the plug-in Rényi entropy of
  the empirical distribution. Continuous variables use a Gaussian kernel on standardised
  columns; the default width is Scott's rule :math:`\sigma = \gamma n^{-1/(4+d)}` as used by
  Yu & Principe 2019 ("Understanding autoencoders with information theoretic concepts") and
  Yu et al. 2019 (TPAMI, multivariate matrix-based Rényi entropy).
  Bias: bounded above by log n; it shrinks as σ grows and approaches log n as σ → 0
  (every sample its own atom), so it measures the kernel as much as the data.
* **Cauchy-Schwarz quadratic MI** (Principe 2010, *Information Theoretic Learning*; Yu et
  al. 2024, "Cauchy-Schwarz divergence information bottleneck", ICLR):

  .. math:: I_{CS} = \log\frac{\frac1{N^2}\sum_{ij}K_{ij}L_{ij}\cdot
            \frac1{N^4}\sum_{ij}K_{ij}\sum_{ij}L_{ij}}
            {\big(\frac1{N^3}\sum_i\sum_jK_{ij}\sum_jL_{ij}\big)^2} \;\ge 0.

  ``sigma="cs_ib"`` reproduces the released CS-IB rule (σ = 10 × median pairwise squared
  distance, kernel exp(-D/2σ²)); it gives very wide kernels and tiny values.

Valid when: n <= ``max_n`` (the eigendecomposition is O(n³); subsample larger sets). Both
are symmetric and invariant to affine rescaling (columns are standardised).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dynalens._validation import check_float, check_int
from dynalens.errors import EstimatorRegimeError, InvalidParameterError
from dynalens.estimators.mi._base import MIEstimator, MIResult, Variable, standardize

__all__ = ["CauchySchwarzQMI", "RenyiMI", "gram_matrix"]


def _check_sigma(value: Any, options: tuple[str, ...]) -> float | str:
    if isinstance(value, str):
        if value not in options:
            raise InvalidParameterError(
                f"sigma must be a positive number or one of {list(options)}; got {value!r}."
            )
        return value
    return check_float("sigma", value, min=0.0, min_inclusive=False)


def gram_matrix(v: Variable, sigma: float | str, gamma: float) -> tuple[torch.Tensor, float]:
    """Gram matrix of one variable (delta kernel if discrete) and the width used (0 for
    the delta kernel)."""
    from dynalens.kernels.gauss_lse import gaussian_gram

    t = v.data.to(torch.float64)
    if v.discrete:
        codes = torch.unique(t, dim=0, return_inverse=True)[1]
        return (codes[:, None] == codes[None, :]).to(t.dtype), 0.0
    z = standardize(t)
    n, d = z.shape
    if sigma == "scott":
        s = gamma * n ** (-1.0 / (4 + d))
    elif sigma == "cs_ib":
        sq = torch.cdist(z, z).square()
        iu = torch.triu_indices(n, n, 1)
        med = float(sq[iu[0], iu[1]].median()) if n > 1 else 1.0
        s = 10.0 * max(med, 1e-2)
    else:
        s = float(sigma)
    return gaussian_gram(z, var=s * s), s


def _renyi_from_gram(k: torch.Tensor, alpha: float) -> float:
    a = k / torch.trace(k)
    lam = torch.linalg.eigvalsh(a).clamp(min=0.0)
    lam = lam[lam > lam.max() * lam.numel() * torch.finfo(lam.dtype).eps]  # drop round-off
    if abs(alpha - 1.0) < 1e-9:
        return float(-(lam * torch.log(lam)).sum())
    return float(torch.log((lam**alpha).sum()) / (1.0 - alpha))


class _KernelMeasure(MIEstimator):
    def __init__(
        self,
        alpha: float = 1.01,
        sigma: float | str = "scott",
        gamma: float = 1.0,
        max_n: int = 4000,
    ) -> None:
        self.alpha = alpha
        self.sigma = sigma
        self.gamma = gamma
        self.max_n = max_n

    def _check_params(self) -> dict[str, Any]:
        return {
            "alpha": check_float("alpha", self.alpha, min=0.0, min_inclusive=False),
            "sigma": _check_sigma(self.sigma, ("scott", "cs_ib")),
            "gamma": check_float("gamma", self.gamma, min=0.0, min_inclusive=False),
            "max_n": check_int("max_n", self.max_n, min=2),
        }

    def _check_n(self, n: int, max_n: int) -> None:
        if n > max_n:
            raise EstimatorRegimeError(
                f"{self.name} builds dense n x n Gram matrices and eigendecomposes them "
                f"(O(n^3)); n={n} exceeds max_n={max_n}. Subsample the rows (e.g. "
                f"x[:{max_n}]) or raise max_n if you can afford it."
            )


class RenyiMI(_KernelMeasure):
    """Matrix-based Rényi α-order mutual information (NOT Shannon MI; nats).

    Args:
        alpha: Rényi order (> 0; α = 1 gives von Neumann entropy). Default 1.01 as in
            Yu et al.
        sigma: Gaussian kernel width on standardised columns, or ``"scott"`` for
            γ n^{-1/(4+d)}, or ``"cs_ib"`` for the CS-IB release rule.
        gamma: multiplier of Scott's rule.
        max_n: refuse larger inputs (dense O(n³) eigendecomposition).
    """

    name = "renyi"
    quantity = "renyi"
    supports_entropy = True

    def _estimate(self, vx: Variable, vy: Variable, params: dict[str, Any]) -> MIResult:
        self._check_n(vx.n, params["max_n"])
        kx, sx = gram_matrix(vx, params["sigma"], params["gamma"])
        ky, sy = gram_matrix(vy, params["sigma"], params["gamma"])
        hx = _renyi_from_gram(kx, params["alpha"])
        hy = _renyi_from_gram(ky, params["alpha"])
        hxy = _renyi_from_gram(kx * ky, params["alpha"])
        return self._result(
            hx + hy - hxy,
            vx.n,
            params,
            details={"sigma_x": sx, "sigma_y": sy, "h_x": hx, "h_y": hy, "h_xy": hxy},
        )

    def _entropy(self, v: Variable, params: dict[str, Any]) -> MIResult:
        self._check_n(v.n, params["max_n"])
        k, s = gram_matrix(v, params["sigma"], params["gamma"])
        return self._result(_renyi_from_gram(k, params["alpha"]), v.n, params, details={"sigma": s})


class CauchySchwarzQMI(_KernelMeasure):
    """Cauchy-Schwarz quadratic mutual information (NOT Shannon MI; nats, >= 0).

    Args:
        sigma: Gaussian kernel width on standardised columns, ``"scott"`` or ``"cs_ib"``.
        gamma: multiplier of Scott's rule.
        max_n: refuse larger inputs (dense n x n Gram matrices).
    """

    name = "cs_qmi"
    quantity = "cauchy-schwarz"

    def __init__(
        self, sigma: float | str = "scott", gamma: float = 1.0, max_n: int = 10000
    ) -> None:
        self.sigma = sigma
        self.gamma = gamma
        self.max_n = max_n

    def _check_params(self) -> dict[str, Any]:
        return {
            "sigma": _check_sigma(self.sigma, ("scott", "cs_ib")),
            "gamma": check_float("gamma", self.gamma, min=0.0, min_inclusive=False),
            "max_n": check_int("max_n", self.max_n, min=2),
        }

    def _estimate(self, vx: Variable, vy: Variable, params: dict[str, Any]) -> MIResult:
        self._check_n(vx.n, params["max_n"])
        k, sx = gram_matrix(vx, params["sigma"], params["gamma"])
        lm, sy = gram_matrix(vy, params["sigma"], params["gamma"])
        n = vx.n
        joint = float((k * lm).sum()) / n**2
        prod = float(k.sum()) * float(lm.sum()) / n**4
        cross = float((k.sum(1) * lm.sum(1)).sum()) / n**3
        value = math.log(joint) + math.log(prod) - 2.0 * math.log(cross)
        return self._result(max(value, 0.0), n, params, details={"sigma_x": sx, "sigma_y": sy})
