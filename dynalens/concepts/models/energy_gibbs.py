r"""Gibbs sampling for energy-based CBMs beyond exact enumeration (guide §4.5; Xu et al.
2024 energies, Geman & Geman 1984 sampler).

Two Boltzmann distributions of :class:`~dynalens.concepts.models.EnergyCBM` are sampled
by systematic-scan single-site Gibbs sampling:

- the global branch :math:`p(c \mid y) \propto \exp(-E(c, y))`
  (:func:`gibbs_concept_given_class`): site k is redrawn from
  :math:`p(c_k = 1 \mid c_{-k}, y) = \sigma(E(c^{k \leftarrow 0}, y) - E(c^{k \leftarrow 1}, y))`;
- the joint posterior :math:`p(c, y \mid x, c_S) \propto \exp(-E(x, c, y))` with the
  written concepts S clamped (:func:`gibbs_posterior`): y is redrawn from its exact
  conditional :math:`\mathrm{softmax}_y(-E(x, y) - \lambda_g E(c, y))`, then each free
  site from :math:`\sigma(-\lambda_c \Delta E(x, c_k) - \lambda_g \Delta E(c, y))`.

Estimates are Rao-Blackwellised (the conditional probabilities, not the 0/1 draws, are
averaged; Gelfand & Smith 1990), which lowers their variance. ``n_chains`` independent
chains, each started uniformly at random and run ``burn_in`` sweeps before
``n_samples`` recorded sweeps, give each estimate a Monte Carlo standard error: the
standard deviation over chains / sqrt(n_chains) (chains are independent, so this holds
whatever the autocorrelation within a chain; it needs n_chains ≥ 2). Policy: every
result carries its standard errors (``*_se``), and a ``RuntimeWarning`` names the largest
one when it exceeds ``max_se`` (run longer or with more chains). The sampler is seeded
(a private ``torch.Generator``), never the global RNG.

Example
-------
>>> import torch
>>> from torch import nn
>>> from dynalens.concepts.models import EnergyCBM
>>> model = EnergyCBM(nn.Linear(4, 8), 8, n_concepts=20, n_classes=3)
>>> out = gibbs_concept_given_class(model, n_samples=50, burn_in=10, max_se=None)
>>> tuple(out["marginal"].shape), tuple(out["marginal_se"].shape)
((3, 20), (3, 20))
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from dynalens._validation import check_float, check_int

__all__ = ["gibbs_concept_given_class", "gibbs_posterior"]


def _settings(
    n_samples: int, burn_in: int, n_chains: int, seed: int, max_se: float | None
) -> tuple[int, int, int, torch.Generator, float | None]:
    n_samples = check_int("n_samples", n_samples, min=1)
    burn_in = check_int("burn_in", burn_in, min=0)
    n_chains = check_int("n_chains", n_chains, min=2)
    gen = torch.Generator().manual_seed(check_int("seed", seed))
    limit = None if max_se is None else check_float("max_se", max_se, min=0.0)
    return n_samples, burn_in, n_chains, gen, limit


def _chain_stats(per_chain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over the chain axis 0."""
    return per_chain.mean(0), per_chain.std(0, correction=1) / per_chain.shape[0] ** 0.5


def _warn(se: torch.Tensor, limit: float | None, what: str) -> None:
    if limit is not None and float(se.max()) > limit:
        warnings.warn(
            f"Gibbs estimate of {what}: the largest Monte Carlo standard error is "
            f"{float(se.max()):.3g} > max_se={limit}; raise n_samples or n_chains (the "
            "error falls as 1 / sqrt(samples)).",
            RuntimeWarning,
            stacklevel=3,
        )


def _global(model: Any, c: torch.Tensor) -> torch.Tensor:
    """E(c, y) (m, T) in float64 for configurations c (m, k)."""
    dtype = next(model.global_energy.parameters(), torch.empty(0)).dtype
    return model.global_energy(c.to(dtype)).double()


def _progress(total: int, progress: bool, desc: str) -> Any:
    if not progress:
        return range(total)
    from tqdm.auto import tqdm

    return tqdm(range(total), desc=desc)


@torch.no_grad()
def gibbs_concept_given_class(
    model: Any,
    *,
    n_samples: int = 2000,
    burn_in: int = 200,
    n_chains: int = 8,
    seed: int = 0,
    prior: Any = None,
    max_se: float | None = 0.02,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Gibbs estimates of :meth:`EnergyCBM.concept_given_class`'s ``marginal`` (T, k) =
    p(c_k = 1 | y), ``pair`` (T, k, k) = p(c_i = 1, c_j = 1 | y) and ``given_concept``
    (k, k) = p(c_i = 1 | c_j = 1) under ``prior`` (T,) (default uniform), with
    ``marginal_se`` and ``pair_se``."""
    from dynalens.concepts.models.energy import _prior

    n_samples, burn_in, n_chains, gen, limit = _settings(n_samples, burn_in, n_chains, seed, max_se)
    k, t = model.k, model.n_classes
    pi = _prior(prior, t)
    c = (torch.rand(n_chains, t, k, generator=gen) < 0.5).double()
    cls = torch.arange(t).expand(n_chains, t).reshape(-1)
    marg = torch.zeros(n_chains, t, k, dtype=torch.float64)
    pair = torch.zeros(n_chains, t, k, k, dtype=torch.float64)
    for sweep in _progress(burn_in + n_samples, progress, "gibbs p(c|y)"):
        for j in range(k):
            both = c.reshape(-1, k).repeat(2, 1)
            m = both.shape[0] // 2
            both[:m, j], both[m:, j] = 0.0, 1.0
            e = _global(model, both).gather(1, cls.repeat(2)[:, None])[:, 0]
            p1 = torch.sigmoid(e[:m] - e[m:]).view(n_chains, t)
            if sweep >= burn_in:
                marg[..., j] += p1
            c[..., j] = (torch.rand(n_chains, t, generator=gen, dtype=torch.float64) < p1).double()
        if sweep >= burn_in:
            pair += c[..., :, None] * c[..., None, :]
    marginal, marginal_se = _chain_stats(marg / n_samples)
    pair_mean, pair_se = _chain_stats(pair / n_samples)
    _warn(marginal_se, limit, "p(c_k | y)")
    pair_all = torch.einsum("t,tij->ij", pi, pair_mean)
    return {
        "marginal": marginal,
        "marginal_se": marginal_se,
        "pair": pair_mean,
        "pair_se": pair_se,
        "given_concept": pair_all / (pi @ marginal)[None, :],
    }


@torch.no_grad()
def gibbs_posterior(
    model: Any,
    x: torch.Tensor,
    values: torch.Tensor | None = None,
    written: torch.Tensor | None = None,
    *,
    n_samples: int = 500,
    burn_in: int = 100,
    n_chains: int = 4,
    seed: int = 0,
    max_se: float | None = 0.02,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Gibbs estimates of :meth:`EnergyCBM.posterior` (``inference="marginal"``): ``proba_y``
    (n, T) = p(y | x, c_S), ``concepts`` (n, k) = p(c_k = 1 | x, c_S) (written ones are
    their values), with ``proba_y_se`` and ``concepts_se``."""
    n_samples, burn_in, n_chains, gen, limit = _settings(n_samples, burn_in, n_chains, seed, max_se)
    e_y, e_c = (e.double() for e in model.energies(x))
    n, k, t = e_y.shape[0], model.k, model.n_classes
    fixed = torch.zeros(n, k, dtype=torch.bool) if written is None else written.bool()
    vals = (
        torch.zeros(n, k, dtype=torch.float64)
        if values is None
        else (values.double() >= 0.5).double()
    )
    c = (torch.rand(n_chains, n, k, generator=gen) < 0.5).double()
    c = torch.where(fixed, vals, c)
    delta = model.lambda_c * (e_c[..., 1] - e_c[..., 0])  # (n, k)
    acc_y = torch.zeros(n_chains, n, t, dtype=torch.float64)
    acc_c = torch.zeros(n_chains, n, k, dtype=torch.float64)
    free = [j for j in range(k) if not bool(fixed[:, j].all())]
    for sweep in _progress(burn_in + n_samples, progress, "gibbs p(c, y|x)"):
        logits = -e_y - model.lambda_g * _global(model, c.reshape(-1, k)).view(n_chains, n, t)
        p_y = torch.softmax(logits, -1)
        y = torch.multinomial(p_y.reshape(-1, t), 1, generator=gen).view(-1)
        keep = sweep >= burn_in
        if keep:
            acc_y += p_y
        for j in free:
            both = c.reshape(-1, k).repeat(2, 1)
            m = both.shape[0] // 2
            both[:m, j], both[m:, j] = 0.0, 1.0
            e = _global(model, both).gather(1, y.repeat(2)[:, None])[:, 0]
            diff = delta[:, j] + model.lambda_g * (e[m:] - e[:m]).view(n_chains, n)
            p1 = torch.where(fixed[:, j], vals[:, j], torch.sigmoid(-diff))
            if keep:
                acc_c[..., j] += p1
            draw = (torch.rand(n_chains, n, generator=gen, dtype=torch.float64) < p1).double()
            c[..., j] = draw
    acc_c = torch.where(fixed, vals * n_samples, acc_c)
    proba_y, proba_y_se = _chain_stats(acc_y / n_samples)
    concepts, concepts_se = _chain_stats(acc_c / n_samples)
    _warn(torch.cat([proba_y_se.flatten(), concepts_se.flatten()]), limit, "the posterior")
    return {
        "proba_y": proba_y,
        "proba_y_se": proba_y_se,
        "concepts": concepts,
        "concepts_se": concepts_se,
    }
