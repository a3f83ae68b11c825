r"""Niche Impurity Score with categorical concepts (guide §3.3 / §3.4).

The probe of concept i reads every soft feature: an L2 logistic regression for a binary
concept, a multinomial (softmax) one for a categorical concept (C = 1, converged,
:mod:`._probe`). Soft concept j is in the niche of concept i at β when the largest
:math:`|\rho|` between one of j's features and one of i's category indicators exceeds β
(for a binary concept both indicators have the same :math:`|\rho|`, so this is the binary
niche). impurity(β) = mean over concepts of the held-out AUC of probe i with its niche's
features zeroed, ROC-AUC for a binary concept and macro one-vs-one AUC for a categorical
one. Intervals: percentile bootstrap over test rows with the probes fixed (rows
resampled, each replicate re-scored). With only binary concepts this equals
:class:`NicheImpurity`'s binary path (tested).
"""

from __future__ import annotations

import torch

from dynalens.estimators.concepts._probe import (
    fit_binary_probes,
    fit_multinomial_probe,
    predict_multinomial,
)
from dynalens.estimators.concepts._scores import auc_columns, bootstrap_interval, ovo_auc

__all__ = ["categorical_niche_curve", "categorical_niche_outputs"]

#: per concept: the test-row outputs of each distinct niche mask, and per β its mask index
Outputs = list[tuple[list[torch.Tensor], torch.Tensor]]


def _abs_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(0)
    b = b - b.mean(0)
    norm = a.norm(dim=0)[:, None] * b.norm(dim=0)[None, :]
    return torch.where(norm > 0, (a.T @ b).abs() / norm.clamp_min(1e-300), 0.0)


def categorical_niche_outputs(
    soft: torch.Tensor,
    groups: torch.Tensor,
    codes: torch.Tensor,
    sizes: list[int],
    train: torch.Tensor,
    test: torch.Tensor,
    betas: torch.Tensor,
    C: float,
) -> Outputs:
    """Probe outputs on the test rows for every distinct (concept, niche) pair:
    P(class 1) (n_test,) for a binary concept, class probabilities for a categorical one."""
    k = codes.shape[1]
    x_train, x_test = soft[train], soft[test]
    binary = [i for i, size in enumerate(sizes) if size <= 2]
    thetas = {}
    if binary:  # batched, as the binary path fits them
        y = codes[train][:, binary].T.to(torch.float64)
        thetas = dict(zip(binary, fit_binary_probes(x_train, y, C=C), strict=True))
    out: Outputs = []
    for i, size in enumerate(sizes):
        onehot = torch.nn.functional.one_hot(codes[train, i], size).to(torch.float64)
        rho = _abs_correlation(x_train, onehot).amax(1)  # (F,): feature vs concept i
        best = torch.zeros(k, dtype=torch.float64).scatter_reduce_(0, groups, rho, "amax")
        keep = (best[None, :] <= betas[:, None])[:, groups]  # (β, F): outside the niche
        masks, index = torch.unique(keep, dim=0, return_inverse=True)
        if size <= 2:
            theta = thetas[i]
            outs = [torch.sigmoid(x_test @ (theta[:-1] * m) + theta[-1]) for m in masks]
        else:
            theta_m = fit_multinomial_probe(x_train, codes[train, i], size, C=C)
            outs = [predict_multinomial(theta_m, x_test * m) for m in masks]
        out.append((outs, index))
    return out


def categorical_niche_curve(
    outputs: Outputs, codes_test: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """impurity(β) (len(betas),) from the stored outputs, on ``rows`` of the test split."""
    curves = []
    for i, (outs, index) in enumerate(outputs):
        lab = codes_test[:, i] if rows is None else codes_test[rows, i]
        aucs = []
        for o in outs:
            o = o if rows is None else o[rows]
            if o.ndim == 1:
                aucs.append(auc_columns(lab[:, None].to(torch.float64), o[:, None])[0])
            else:
                aucs.append(torch.tensor(ovo_auc(lab, o), dtype=torch.float64))
        curves.append(torch.stack(aucs)[index])
    return torch.stack(curves, 1).nanmean(1)


def categorical_bootstrap(
    outputs: Outputs,
    codes_test: torch.Tensor,
    integrate: object,
    n_boot: int,
    seed: int,
) -> tuple[float, float]:
    """Percentile bootstrap of the integrated curve over test rows (probes fixed)."""
    assert callable(integrate)
    return bootstrap_interval(
        lambda rows: float(integrate(categorical_niche_curve(outputs, codes_test, rows))),
        codes_test.shape[0],
        strata=None,
        n_boot=n_boot,
        seed=seed,
    )
