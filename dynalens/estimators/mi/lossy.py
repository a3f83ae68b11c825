r"""Compress-then-estimate ("lossy compression") MI for high-dimensional layers.

Butakov et al. 2024 ("Information bottleneck analysis of deep neural networks via lossy
compression", ICLR): map X and T to a few dimensions with a compressor φ (PCA by default; a
small autoencoder optionally), then estimate :math:`I(φ(X); φ(T))` with a low-dimensional
estimator (``inner``: ``ksg`` by default, ``noisy`` for stochastic layers, or any other
method of this package). Units: nats.

Bias: *downward* by construction — by the data-processing inequality
:math:`I(φ(X); φ(T)) \le I(X; T)` — plus the inner estimator's own bias. With the ``noisy``
inner estimator only the layer is compressed, by an orthonormal PCA projection, which keeps
the noise N(0, σ² I) isotropic, so the result is a valid estimate of a lower bound. The
fraction of variance kept by each compression is reported in ``details`` (a small value
means the bound may be loose).

Valid when: the layer is too wide for kNN / kernel estimators (d >~ 10) and the dependence
lives in a few directions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dynalens._validation import check_int, check_option
from dynalens.errors import InvalidParameterError
from dynalens.estimators.mi._base import MIEstimator, MIResult, Variable

__all__ = ["LossyMI", "pca_compress"]

COMPRESSORS = ("pca", "autoencoder")


def pca_compress(t: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Project centred t on its top-k principal axes (orthonormal); (scores, var. kept)."""
    tc = t - t.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(tc, full_matrices=False)
    total = float((s**2).sum())
    kept = float((s[:k] ** 2).sum()) / total if total > 0 else 1.0
    return tc @ vh[:k].T, kept


def ae_compress(t: torch.Tensor, k: int, steps: int, seed: int) -> tuple[torch.Tensor, float]:
    """Train a small MLP autoencoder (standardised input) and return its codes and the
    fraction of variance its reconstruction explains."""
    x = t.to(torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-12)
    d, h = x.shape[1], max(32, 2 * k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k))
        dec = nn.Sequential(nn.Linear(k, h), nn.ReLU(), nn.Linear(h, d))
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
        for _ in range(steps):
            idx = torch.randint(x.shape[0], (min(256, x.shape[0]),))
            loss = (dec(enc(x[idx])) - x[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            codes = enc(x)
            kept = 1.0 - float((dec(codes) - x).pow(2).mean() / x.var(0).mean())
    return codes.to(t.dtype), kept


class LossyMI(MIEstimator):
    """Compress each continuous variable to ``n_components`` dims, then run ``inner`` (nats).

    Args:
        n_components: target dimension per variable (variables already this small are
            left alone; discrete variables are never compressed).
        compressor: ``"pca"`` or ``"autoencoder"``.
        inner: registry name of the estimator run on the compressed data (``"ksg"``,
            ``"noisy"``, ``"gaussian"``, ...).
        inner_params: parameters of the inner estimator (dict).
        noise_var: forwarded to a ``noisy`` / ``kde`` inner estimator.
        ae_steps: training steps of the autoencoder.
        seed: seed of the autoencoder.
    """

    name = "lossy"

    def __init__(
        self,
        n_components: int = 4,
        compressor: str = "pca",
        inner: str = "ksg",
        inner_params: dict[str, Any] | None = None,
        noise_var: float | None = None,
        ae_steps: int = 300,
        seed: int = 0,
    ) -> None:
        self.n_components = n_components
        self.compressor = compressor
        self.inner = inner
        self.inner_params = inner_params
        self.noise_var = noise_var
        self.ae_steps = ae_steps
        self.seed = seed

    def _check_params(self) -> dict[str, Any]:
        from dynalens.estimators.mi.auto import REGISTRY

        inner = check_option("inner", self.inner, [k for k in REGISTRY if k not in ("lossy",)])
        ip = dict(self.inner_params or {})
        if not isinstance(self.inner_params, (dict, type(None))):
            raise InvalidParameterError(
                f"inner_params must be a dict of parameters; got {self.inner_params!r}."
            )
        if self.noise_var is not None:
            ip.setdefault("noise_var", self.noise_var)
        self._inner_est = REGISTRY[inner](**ip)
        self._inner_est._check_params()
        return {
            "n_components": check_int("n_components", self.n_components, min=1),
            "compressor": check_option("compressor", self.compressor, COMPRESSORS),
            "inner": inner,
            "inner_params": ip,
            "ae_steps": check_int("ae_steps", self.ae_steps, min=1),
            "seed": check_int("seed", self.seed),
        }

    def _compress(self, v: Variable, params: dict[str, Any]) -> tuple[Variable, float]:
        k = params["n_components"]
        if v.discrete or v.d <= k:
            return v, 1.0
        if params["compressor"] == "pca":
            codes, kept = pca_compress(v.data, k)
        else:
            codes, kept = ae_compress(v.data, k, params["ae_steps"], params["seed"])
        return Variable(v.name, codes, False, False), kept

    def _estimate(self, vx: Variable, vy: Variable, params: dict[str, Any]) -> MIResult:
        inner = self._inner_est
        if inner.name in ("noisy", "kde"):
            if params["compressor"] != "pca":
                raise InvalidParameterError(
                    "the noisy/kde inner estimators need an orthonormal compression of the "
                    "layer (the noise must stay isotropic); use compressor='pca'."
                )
            cx, kx = vx, 1.0  # the conditioning variable is read by row identity
        else:
            cx, kx = self._compress(vx, params)
        cy, ky = self._compress(vy, params)
        res = inner._estimate(cx, cy, inner._check_params())
        return self._result(
            res.estimate,
            res.n,
            params,
            lower=res.lower,
            upper=res.upper,
            stderr=res.stderr,
            details={"variance_kept_x": kx, "variance_kept_y": ky, "inner": res},
        )
