r"""Per-column scores on probabilities and a stratified percentile bootstrap.

ROC-AUC is the Mann-Whitney statistic with average ranks for ties,
:math:`\mathrm{AUC} = (R_1 - n_1(n_1+1)/2)/(n_1 n_0)` (Hanley & McNeil 1982), equal to
scikit-learn's ``roc_auc_score``; F1 is the macro mean over the classes {0, 1} of
:math:`2\,TP/(2\,TP + FP + FN)` (a class with no true and no predicted member scores 0,
as scikit-learn's ``zero_division=0``). Columns with a single class get NaN AUC.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "auc_columns",
    "average_ranks",
    "bootstrap_interval",
    "f1_columns",
    "macro_ovr_auc",
]


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based) of each column of x (n, k); ties share their mean rank.
    Works on the contiguous transpose (sorting along the last axis is far faster)."""
    xt = x.T.contiguous()
    n = xt.shape[1]
    order = xt.argsort(dim=1, stable=True)
    xs = xt.gather(1, order)
    pos = torch.arange(n, dtype=torch.int64).expand_as(xs)
    new = torch.ones_like(xs, dtype=torch.bool)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    last = torch.ones_like(xs, dtype=torch.bool)
    last[:, :-1] = new[:, 1:]
    start = torch.where(new, pos, torch.zeros_like(pos)).cummax(1).values
    end = torch.where(last, pos, torch.full_like(pos, n)).flip(1).cummin(1).values.flip(1)
    mean_rank = (start + end).to(x.dtype) / 2 + 1
    return torch.empty_like(xt).scatter_(1, order, mean_rank).T


def auc_columns(labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """ROC-AUC of each column of ``scores`` (n, k) for binary ``labels`` (n, k);
    NaN where a column has a single class."""
    ranks = average_ranks(scores)
    n1 = labels.sum(0)
    n0 = labels.shape[0] - n1
    r1 = (ranks * labels).sum(0)
    auc = (r1 - n1 * (n1 + 1) / 2) / (n1 * n0)
    return torch.where((n1 > 0) & (n0 > 0), auc, torch.full_like(auc, float("nan")))


def f1_columns(labels: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Macro F1 over the classes {0, 1} of each column (hard predictions, (n, k))."""
    tp = (labels * predicted).sum(0)
    fp = ((1 - labels) * predicted).sum(0)
    fn = (labels * (1 - predicted)).sum(0)
    tn = labels.shape[0] - tp - fp - fn

    def f1(t: torch.Tensor, f_p: torch.Tensor, f_n: torch.Tensor) -> torch.Tensor:
        den = 2 * t + f_p + f_n
        return torch.where(den > 0, 2 * t / den.clamp_min(1e-300), torch.zeros_like(t))

    return (f1(tp, fp, fn) + f1(tn, fn, fp)) / 2


def macro_ovr_auc(y: torch.Tensor, proba: torch.Tensor) -> float:
    """Macro one-vs-rest ROC-AUC of class probabilities ``proba`` (n, T) for labels
    ``y`` (n,); T = 2 is the ordinary AUC of column 1. Classes absent from ``y`` (or
    present in every row) are skipped; NaN if none is left."""
    t = proba.shape[1]
    onehot = torch.nn.functional.one_hot(y, t).to(proba.dtype)
    if t == 2:
        return float(auc_columns(onehot[:, 1:], proba[:, 1:])[0])
    aucs = auc_columns(onehot, proba)
    valid = ~torch.isnan(aucs)
    return float(aucs[valid].mean()) if valid.any() else float("nan")


def bootstrap_interval(
    statistic: Callable[[torch.Tensor], float],
    n: int,
    *,
    strata: torch.Tensor | None,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    kind: str = "percentile",
    estimate: float | None = None,
) -> tuple[float, float]:
    """Bootstrap interval of ``statistic(rows)`` over resampled row indices, resampling
    within each stratum (e.g. each class of y) so every class keeps its count.
    ``kind="percentile"``: the quantiles of the replicates; ``"basic"``: the reverse
    percentile interval :math:`[2\\hat\theta - q_{hi}, 2\\hat\theta - q_{lo}]` around
    ``estimate``, which corrects a bias of the statistic. Replicates whose statistic is
    NaN are dropped; (nan, nan) if all are."""
    g = torch.Generator().manual_seed(seed)
    groups = (
        [torch.arange(n)]
        if strata is None
        else [(strata == s).nonzero().flatten() for s in strata.unique()]
    )
    values = []
    for _ in range(n_boot):
        parts = [grp[torch.randint(len(grp), (len(grp),), generator=g)] for grp in groups]
        values.append(statistic(torch.cat(parts)))
    v = torch.tensor(values, dtype=torch.float64)
    v = v[~torch.isnan(v)]
    if v.numel() == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    q = torch.quantile(v, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    if kind == "basic":
        assert estimate is not None  # internal call contract, not user input
        return 2 * estimate - float(q[1]), 2 * estimate - float(q[0])
    return float(q[0]), float(q[1])
