r"""Concept representations beyond one scalar per concept, and categorical concepts, for
the impurity scores (guide §3.3 / §3.4).

A soft representation is one of

- an (n, k) matrix: concept i is the scalar column i;
- an (n, k, m) tensor: concept i is the embedding slice ``[:, i, :]`` (CEM-style);
- a list of k arrays, (n,) or (n, m_i): concept i is element i (sizes may differ).

Categorical true concepts are an (n, k) matrix of non-negative integers (category codes);
the categories of column j are its distinct values, in increasing order. A probe from a
representation to a binary concept is an L2 logistic regression (C = 1, at convergence,
:mod:`._probe`) scored by the ROC-AUC of its decision function; to a categorical concept
it is a multinomial (softmax) probe scored by the macro one-vs-one AUC (Hand & Till 2001,
:func:`._scores.ovo_auc`). A true concept used as a probe input enters as its 0/1 column
(binary) or its one-hot indicators (categorical).

Example
-------
>>> import torch
>>> reps = as_representation("c_soft", torch.zeros(5, 3, 2), n=5)
>>> [tuple(r.shape) for r in reps]
[(5, 2), (5, 2), (5, 2)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import as_matrix
from dynalens.estimators.concepts._probe import (
    fit_binary_probes,
    fit_multinomial_probe,
    predict_multinomial,
)
from dynalens.estimators.concepts._scores import auc_columns, ovo_auc

__all__ = [
    "as_categorical_labels",
    "as_representation",
    "category_indicators",
    "is_structured",
    "label_features",
    "probe_scores",
    "purity_from_scores",
]


def is_structured(value: Any) -> bool:
    """Whether ``value`` is an embedding tensor (3-D) or a list of per-concept arrays."""
    if isinstance(value, (list, tuple)):
        return True
    return int(np.ndim(value) if not torch.is_tensor(value) else value.ndim) == 3


def as_representation(name: str, value: Any, *, n: int) -> list[torch.Tensor]:
    """Per-concept float64 feature blocks (n, m_i) of an (n, k), (n, k, m) or list input."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise InvalidInputError(f"{name} is an empty list; pass one array per concept.")
        return [as_matrix(f"{name}[{i}]", v, n=n) for i, v in enumerate(value)]
    t = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    if t.ndim == 3:
        flat = as_matrix(name, t.reshape(t.shape[0], -1), n=n)
        return list(flat.reshape(t.shape[0], t.shape[1], t.shape[2]).unbind(1))
    m = as_matrix(name, t, n=n)
    return [m[:, i : i + 1] for i in range(m.shape[1])]


def as_categorical_labels(
    name: str, value: Any, *, n: int
) -> tuple[torch.Tensor, list[int], list[list[float]]]:
    """Category codes (n, k) int64, re-indexed per column to 0..K_j-1, each K_j, and each
    column's original category values (code v is ``values[j][v]``)."""
    t = as_matrix(name, value, n=n)
    bad = (t != t.round()) | (t < 0)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise InvalidInputError(
            f"{name} must hold categorical concept codes 0, 1, 2, ... (non-negative "
            f"integers) when categorical=True; got {t[row, col].item()!r} at row {row}, "
            f"column {col}. Pass category indices, not one-hot or soft labels."
        )
    codes, sizes, originals = [], [], []
    for col in t.T:
        values, inverse = torch.unique(col, return_inverse=True)
        codes.append(inverse)
        sizes.append(len(values))
        originals.append(values.tolist())
    return torch.stack(codes, 1), sizes, originals


def category_indicators(
    codes: torch.Tensor,
    sizes: list[int],
    test_size: float,
    metric: str,
    names: Sequence[str] | None = None,
    values: list[list[float]] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """One-hot indicators (n, sum K_j) of every category, with a label per column
    ("concept j = category v"), after refusing a category too rare for the split (fewer
    than 2 expected members of it, or of its complement, in the smaller split)."""
    indicators = torch.cat(
        [torch.nn.functional.one_hot(codes[:, j], s) for j, s in enumerate(sizes)], 1
    ).to(torch.float64)
    labels = [
        f"{names[j] if names else f'concept {j}'} = "
        f"{'category ' + format(values[j][v], 'g') if values else f'code {v}'}"
        for j, s in enumerate(sizes)
        for v in range(s)
    ]
    n = codes.shape[0]
    counts = torch.minimum(indicators.sum(0), n - indicators.sum(0))
    smaller = min(test_size, 1 - test_size)
    rare = (counts * smaller < 2).nonzero().flatten().tolist()
    if rare:
        raise InvalidInputError(
            f"{metric} needs every category in the train and the test split; "
            f"{labels[rare[0]]} has {int(counts[rare[0]])} member(s) (or non-members) among "
            f"{n} rows, about {float(counts[rare[0]]) * smaller:.1f} in a {smaller:.0%} split "
            f"({len(rare)} such). Pass more rows, merge rare categories, or raise test_size."
        )
    return indicators, labels


def label_features(codes: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """True concepts as probe inputs: the 0/1 column (K = 2) or one-hot indicators."""
    out = []
    for j, size in enumerate(sizes):
        col = codes[:, j]
        if size <= 2:
            out.append(col[:, None].to(torch.float64))
        else:
            out.append(torch.nn.functional.one_hot(col, size).to(torch.float64))
    return out


def probe_scores(
    features: list[torch.Tensor],
    codes: torch.Tensor,
    sizes: list[int],
    train: torch.Tensor,
    test: torch.Tensor,
    C: float = 1.0,
) -> list[list[torch.Tensor]]:
    """Test-row scores ``[i][j]`` of the probe from ``features[i]`` to concept j, fitted on
    the train rows: the decision function (n_test,) for a binary concept (its AUC is the
    probability's), class probabilities (n_test, K_j) for a categorical one."""
    binary = [j for j, s in enumerate(sizes) if s <= 2]
    out: list[list[torch.Tensor]] = []
    for x in features:
        row: list[torch.Tensor] = [torch.empty(0)] * len(sizes)
        if binary:
            y = codes[train][:, binary].T.to(torch.float64)
            theta = fit_binary_probes(x[train], y, C=C)
            decision = x[test] @ theta[:, :-1].T
            for col, j in enumerate(binary):
                row[j] = decision[:, col]
        for j, size in enumerate(sizes):
            if size > 2:
                theta_m = fit_multinomial_probe(x[train], codes[train, j], size, C=C)
                row[j] = predict_multinomial(theta_m, x[test])
        out.append(row)
    return out


def purity_from_scores(
    scores: list[list[torch.Tensor]], codes: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """AUC matrix (k_rep, k) of the probe scores on the (test) ``rows``: ROC-AUC for a
    binary concept, macro one-vs-one AUC for a categorical one."""
    k_rep, k = len(scores), codes.shape[1]
    lab = codes if rows is None else codes[rows]
    out = torch.empty(k_rep, k, dtype=torch.float64)
    for j in range(k):
        s = [scores[i][j] if rows is None else scores[i][j][rows] for i in range(k_rep)]
        if s[0].ndim == 1:
            y = lab[:, j : j + 1].to(torch.float64).expand(-1, k_rep)
            out[:, j] = auc_columns(y, torch.stack(s, 1))
        else:
            for i in range(k_rep):
                out[i, j] = ovo_auc(lab[:, j], s[i])
    return out
