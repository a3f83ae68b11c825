r"""Per-column scores on probabilities and a stratified percentile bootstrap.

ROC-AUC is the Mann-Whitney statistic with average ranks for ties,
:math:`\mathrm{AUC} = (R_1 - n_1(n_1+1)/2)/(n_1 n_0)` (Hanley & McNeil 1982), equal to
scikit-learn's ``roc_auc_score``; F1 is the macro mean over the classes {0, 1} of
:math:`2\,TP/(2\,TP + FP + FN)` (a class with no true and no predicted member scores 0,
as scikit-learn's ``zero_division=0``). Columns with a single class get NaN AUC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

__all__ = [
    "auc_columns",
    "average_ranks",
    "bootstrap_counts",
    "bootstrap_interval",
    "f1_columns",
    "macro_ovr_auc",
    "ovo_auc",
    "row_means",
    "weighted_auc_columns",
    "weighted_bootstrap_interval",
    "weighted_macro_ovr_auc",
]


def _sorted_ties(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort each column of x (n, k) once: the order (k, n) and, for each sorted position,
    the first and last position (0-based, inclusive) of its tie group. Works on the
    contiguous transpose (sorting along the last axis is far faster)."""
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
    return order, start, end


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based) of each column of x (n, k); ties share their mean rank."""
    order, start, end = _sorted_ties(x)
    mean_rank = (start + end).to(x.dtype) / 2 + 1
    return torch.empty(order.shape, dtype=x.dtype).scatter_(1, order, mean_rank).T


def auc_columns(labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """ROC-AUC of each column of ``scores`` (n, k) for binary ``labels`` (n, k);
    NaN where a column has a single class."""
    ranks = average_ranks(scores)
    n1 = labels.sum(0)
    n0 = labels.shape[0] - n1
    r1 = (ranks * labels).sum(0)
    auc = (r1 - n1 * (n1 + 1) / 2) / (n1 * n0)
    return torch.where((n1 > 0) & (n0 > 0), auc, torch.full_like(auc, float("nan")))


def weighted_auc_columns(
    labels: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor, *, chunk: int = 1 << 18
) -> torch.Tensor:
    r"""ROC-AUC (B, k) of each column of ``scores`` (n, k) for ``labels`` (n, k) under each
    row of multiplicity ``weights`` (B, n), from one sort per column: the AUC of the
    sample in which row i appears ``weights[b, i]`` times. In sorted order a positive row
    beats the negative weight below its tie group and ties half of the negative weight
    inside it, so the Mann-Whitney numerator is
    :math:`\sum_t w_t^+ (N_{<}(t) + N_{\le}(t))/2` with N the cumulative negative weight
    (without ties simply :math:`\sum_t w_t^+ N_{\le}(t)`). Integer weights (bootstrap
    counts) keep every sum an exact integer or half in float64, so each replicate equals
    :func:`auc_columns` on the resampled rows bit for bit. ``chunk`` bounds the elements
    processed at once (cache-sized blocks of replicates). NaN where a replicate holds a
    single class."""
    order, start, end = _sorted_ties(scores)
    lab = labels.T.to(weights.dtype).gather(1, order)  # (k, n) labels in sorted order
    ties = (end != start).any(1).tolist()
    b, n = weights.shape
    out = torch.empty(lab.shape[0], b, dtype=weights.dtype)
    step = max(1, chunk // max(1, n))
    for j, tied in enumerate(ties):
        for lo in range(0, b, step):
            w = weights[lo : lo + step].index_select(1, order[j])  # (B_c, n), sorted
            neg = w * (1 - lab[j])
            pos = w - neg
            cum = neg.cumsum(-1)
            if tied:
                below = (cum - neg).index_select(1, start[j])
                num = (pos * (below + cum.index_select(1, end[j]))).sum(-1) / 2
            else:
                num = (pos * cum).sum(-1)
            n1, n0 = pos.sum(-1), neg.sum(-1)
            auc = num / (n1 * n0)
            out[j, lo : lo + step] = torch.where((n1 > 0) & (n0 > 0), auc, torch.nan)
    return out.T


def f1_columns(
    labels: torch.Tensor, predicted: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Macro F1 over the classes {0, 1} of each column (hard predictions, (n, k)); with
    multiplicity ``weights`` (B, n), one row (B, k) per replicate."""

    def total(x: torch.Tensor) -> torch.Tensor:
        return x.sum(0) if weights is None else weights @ x

    tp = total(labels * predicted)
    fp = total((1 - labels) * predicted)
    fn = total(labels * (1 - predicted))
    n = labels.shape[0] if weights is None else weights.sum(1, keepdim=True)
    tn = n - tp - fp - fn

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


def weighted_macro_ovr_auc(
    y: torch.Tensor, proba: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """:func:`macro_ovr_auc` under each row of multiplicity ``weights`` (B, n): (B,)."""
    t = proba.shape[1]
    onehot = torch.nn.functional.one_hot(y, t).to(proba.dtype)
    if t == 2:
        return weighted_auc_columns(onehot[:, 1:], proba[:, 1:], weights)[:, 0]
    return row_means(weighted_auc_columns(onehot, proba, weights))


def row_means(values: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Mean (B,) of each row's non-NaN entries (and ``keep``); NaN for an empty row.
    One reduction per row, the same as ``float(row[ok].mean())`` on each replicate."""
    ok = ~torch.isnan(values) if keep is None else keep & ~torch.isnan(values)
    nan = torch.tensor(float("nan"), dtype=values.dtype)
    return torch.stack([v[m].mean() if m.any() else nan for v, m in zip(values, ok, strict=True)])


def _replicate_rows(
    n: int, strata: torch.Tensor | None, n_boot: int, seed: int
) -> Iterator[torch.Tensor]:
    """The rows of each bootstrap replicate, resampled within each stratum (so every
    class keeps its count); one seeded generator, so every caller sees the same draws."""
    g = torch.Generator().manual_seed(seed)
    groups = (
        [torch.arange(n)]
        if strata is None
        else [(strata == s).nonzero().flatten() for s in strata.unique()]
    )
    for _ in range(n_boot):
        parts = [grp[torch.randint(len(grp), (len(grp),), generator=g)] for grp in groups]
        yield torch.cat(parts)


def _interval(
    values: torch.Tensor, level: float, kind: str, estimate: float | None
) -> tuple[float, float]:
    v = values[~torch.isnan(values)]
    if v.numel() == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    q = torch.quantile(v, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    if kind == "basic":
        assert estimate is not None  # internal call contract, not user input
        return 2 * estimate - float(q[1]), 2 * estimate - float(q[0])
    return float(q[0]), float(q[1])


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
    r"""Bootstrap interval of ``statistic(rows)`` over resampled row indices, resampling
    within each stratum (e.g. each class of y) so every class keeps its count.
    ``kind="percentile"``: the quantiles of the replicates; ``"basic"``: the reverse
    percentile interval :math:`[2\hat\theta - q_{hi}, 2\hat\theta - q_{lo}]` around
    ``estimate``, which corrects a bias of the statistic. Replicates whose statistic is
    NaN are dropped; (nan, nan) if all are."""
    values = [statistic(rows) for rows in _replicate_rows(n, strata, n_boot, seed)]
    return _interval(torch.tensor(values, dtype=torch.float64), level, kind, estimate)


def bootstrap_counts(
    n: int, *, strata: torch.Tensor | None, n_boot: int, seed: int
) -> Iterator[torch.Tensor]:
    """The replicates of :func:`bootstrap_interval` (same seed, same draws) as
    multiplicity weights: chunks (B_c, n) float64 of how often each row was drawn."""
    step = max(1, (1 << 22) // max(1, n))
    chunk: list[torch.Tensor] = []
    for rows in _replicate_rows(n, strata, n_boot, seed):
        chunk.append(torch.bincount(rows, minlength=n).to(torch.float64))
        if len(chunk) == step:
            yield torch.stack(chunk)
            chunk = []
    if chunk:
        yield torch.stack(chunk)


def weighted_bootstrap_interval(
    statistic: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    strata: torch.Tensor | None,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    kind: str = "percentile",
    estimate: float | None = None,
) -> tuple[float, float]:
    """:func:`bootstrap_interval` for a statistic vectorised over replicates:
    ``statistic(weights)`` maps multiplicity weights (B, n) to B values. The same draws
    as the row-index version, so both give the same interval for the same statistic."""
    parts = [statistic(w) for w in bootstrap_counts(n, strata=strata, n_boot=n_boot, seed=seed)]
    values = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    return _interval(values.to(torch.float64), level, kind, estimate)


def ovo_auc(y: torch.Tensor, proba: torch.Tensor) -> float:
    r"""Macro one-vs-one ROC-AUC (Hand & Till 2001) of class scores ``proba`` (n, T) for
    labels ``y`` (n,) in [0, T): for each pair a < b of classes present in ``y``, on the
    rows of class a or b, :math:`(\mathrm{AUC}(y = a, p_a) + \mathrm{AUC}(y = b, p_b))/2`;
    the mean over pairs. Equal to scikit-learn's ``roc_auc_score(y, proba,
    multi_class="ovo")`` when every class is present; NaN with fewer than two classes."""
    present = torch.unique(y).tolist()
    pairs = []
    for ia, a in enumerate(present):
        for b in present[ia + 1 :]:
            rows = (y == a) | (y == b)
            lab = (y[rows] == a).to(proba.dtype)
            sa = auc_columns(lab[:, None], proba[rows, a : a + 1])[0]
            sb = auc_columns(1 - lab[:, None], proba[rows, b : b + 1])[0]
            pairs.append((sa + sb) / 2)
    return float(torch.stack(pairs).mean()) if pairs else float("nan")
