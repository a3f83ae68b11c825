r"""Oracle Impurity Score (Espinosa Zarlenga et al. 2023, "Towards Robust Metrics for
Concept Representation Evaluation", AAAI).

Purity matrices, both computed on one seeded train/test split (paired):

- :math:`P_{ij}` = held-out ROC-AUC of a logistic probe from soft representation i
  (column i of ``c_soft``) to true concept j;
- :math:`O_{ij}` = the same from true concept i to true concept j ("oracle"), diagonal 1.

.. math:: \mathrm{OIS} = \frac{\lVert O - P \rVert_F}{k/2},

in [0, 1] while every AUC is >= 0.5. A pure representation (column i carries concept i and
nothing else) predicts other concepts exactly as well as the true concept does, so P ≈ O;
a column that also carries concept j predicts it better than c_i can: impurity.
``include_diagonal=False`` sets both diagonals to 1 first (otherwise a weak own-concept
predictor also counts as impurity). The inter-concept leakage of Mahinpei et al. 2021 is
:math:`\max(P - O, 0)` off the diagonal (``details["leakage"]``).

Probe: L2 logistic regression on one feature, at convergence; its held-out AUC depends
only on the sign of its weight, which is the sign of the train covariance for every
regularisation strength (proof in ``_pairwise_probe_directions``), so no iterative fit is
needed and no C parameter changes the result. ``compat="cem"`` uses the cem reference's
probe instead (:mod:`._cem_probes`: a 1-32-1 MLP per pair, Adam 1e-3, 25 epochs, batch
min(512, n_train), P and O on two independent splits, seeded here where cem's are not);
it is noisy: at n = 500 it does not separate a pure from a leaky representation, which the
default does, while at n = 10k both do (tests/estimators/concepts/test_cem_probes.py).
Interval: basic (bias-corrected) bootstrap over test rows with the probes fixed,
:math:`[2\hat v - q_{97.5}, 2\hat v - q_{2.5}]`: a norm of noisy AUC differences is biased
upward, and resampling doubles that bias, so percentile intervals sit above the value;
``n_seeds`` further splits give the seed spread.
A concept that is constant in a split makes its AUCs undefined: refused.

Embedding representations ((n, k, m) tensors, concept i = slice ``[:, i, :]``, or a list
of per-concept (n, m_i) arrays) and categorical concepts (``categorical=True``: integer
codes, softmax probe, macro one-vs-one AUC) follow guide §3.3 through fitted probes
(:mod:`._representations`): P_ij is the held-out AUC of the probe from representation i
to concept j and O_ij that of the probe from true concept i (its 0/1 column or one-hot
indicators) to concept j. For m = 1 and binary concepts this equals the scalar path (the
1-D probe's decision function ranks the rows as the closed form does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from dynalens._validation import check_bool, check_float, check_int, check_option
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts._cem_probes import cem_pair_scores, cem_purity
from dynalens.estimators.concepts._checks import as_binary_labels, as_matrix, require_both_classes
from dynalens.estimators.concepts._representations import (
    as_categorical_labels,
    as_representation,
    category_indicators,
    is_structured,
    label_features,
    probe_scores,
    purity_from_scores,
)
from dynalens.estimators.concepts._result import ConceptResult, seed_spread
from dynalens.estimators.concepts._scores import average_ranks, bootstrap_interval
from dynalens.estimators.concepts._split import check_class_counts, train_test_split

__all__ = ["OracleImpurity", "oracle_impurity_score"]


def _pairwise_probe_directions(
    features: torch.Tensor, c: torch.Tensor, train: torch.Tensor
) -> torch.Tensor:
    """Sign (k_f, k) of the weight of the converged 1-D L2 logistic probe from feature i
    to concept j on the train rows, in closed form: the profile objective
    f(w) = min_b F(w, b) is convex, and at w = 0 (with b = logit of the positive rate)
    its derivative is -C n cov(x_i, c_j), so the minimiser has the sign of the train
    covariance, for every C > 0 (and is 0 where the covariance is 0)."""
    x, y = features[train], c[train]
    cov = (x - x.mean(0)).T @ (y - y.mean(0))
    return torch.sign(cov)


def _pairwise_auc(features: torch.Tensor, c: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Held-out AUC (k_f, k) of each 1-D probe's probabilities for concept j. A probe on
    one feature is a monotone map of it (increasing if its weight is positive), so its
    AUC is the feature's Mann-Whitney AUC, flipped for a negative weight and 0.5 for a
    zero weight (constant prediction); computed for all pairs at once from the ranks."""
    ranks = average_ranks(features)
    n1 = c.sum(0)
    n0 = c.shape[0] - n1
    auc = (ranks.T @ c - n1 * (n1 + 1) / 2) / (n1 * n0)
    return torch.where(sign > 0, auc, torch.where(sign < 0, 1 - auc, torch.full_like(auc, 0.5)))


def _impurity(
    soft: torch.Tensor,
    c: torch.Tensor,
    p_sign: torch.Tensor,
    o_sign: torch.Tensor,
    diagonal: bool,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    k = c.shape[1]
    purity = _pairwise_auc(soft, c, p_sign)
    oracle = _pairwise_auc(c, c, o_sign)
    oracle.fill_diagonal_(1.0)
    if not diagonal:
        purity.fill_diagonal_(1.0)
    return float(torch.linalg.norm(oracle - purity) / (k / 2)), purity, oracle


class OracleImpurity:
    """Oracle Impurity Score with paired logistic probes.

    Parameters
    ----------
    test_size : float
        Fraction of rows held out for the AUCs (default 0.2).
    seed : int
        Seed of the split; the seed spread uses ``seed, seed + 1, ...``.
    n_seeds : int
        Number of splits for the seed spread (1: none).
    include_diagonal : bool
        Whether P's diagonal (own-concept AUC) counts (default True, as in the paper).
    n_boot : int
        Bootstrap replicates over test rows, probes fixed (0: no interval).
    categorical : bool
        ``c_true`` holds integer category codes (softmax probes, one-vs-one AUC).
    compat : None or "cem"
        ``"cem"``: cem's probe, a 1-32-1 MLP per (column, concept) pair, Adam 1e-3, 25
        epochs, batch min(512, n_train), P and O on two independent splits (seeded here:
        ``seed`` and ``seed + 1_000_000``); binary (n, k) concepts only. It is noisy at
        small n (at n = 500 it does not separate a pure from a leaky representation).

    Example
    -------
    >>> import torch
    >>> from dynalens.concepts import make_tabular_concepts, soft_concepts
    >>> data = make_tabular_concepts(400, seed=0)
    >>> emb = soft_concepts(data.c, seed=0)[:, :, None].repeat(1, 1, 2)
    >>> r = OracleImpurity(n_seeds=1, n_boot=0).estimate(emb, data.c)
    >>> 0.0 <= r.value <= 1.0
    True
    """

    def __init__(
        self,
        *,
        test_size: float = 0.2,
        seed: int = 0,
        n_seeds: int = 5,
        include_diagonal: bool = True,
        n_boot: int = 200,
        categorical: bool = False,
        compat: str | None = None,
    ) -> None:
        self.compat = compat
        self.categorical = categorical
        self.test_size = test_size
        self.seed = seed
        self.n_seeds = n_seeds
        self.include_diagonal = include_diagonal
        self.n_boot = n_boot

    def estimate(
        self, c_soft: Any, c_true: Any, *, names: Sequence[str] | None = None
    ) -> ConceptResult:
        """OIS of a soft representation ``c_soft`` (n, k), one column per concept, against
        true concepts ``c_true`` (n, k)."""
        test_size = check_float("test_size", self.test_size, min=0.0, max=1.0, min_inclusive=False)
        seed = check_int("seed", self.seed)
        n_seeds = check_int("n_seeds", self.n_seeds, min=1)
        diagonal = check_bool("include_diagonal", self.include_diagonal)
        n_boot = check_int("n_boot", self.n_boot, min=0)
        categorical = check_bool("categorical", self.categorical)
        cem = self.compat is not None and check_option("compat", self.compat, ("cem",)) == "cem"
        if cem and (categorical or is_structured(c_soft)):
            raise InvalidParameterError(
                "compat='cem' reproduces cem's probe on one soft column per binary concept; "
                "got an embedding / list representation or categorical=True. Pass an (n, k) "
                "matrix of soft concepts and binary labels, or drop compat=."
            )
        if categorical or is_structured(c_soft):
            settings = (test_size, seed, n_seeds, diagonal, n_boot)
            return _general_impurity(c_soft, c_true, names, categorical, settings)
        c = as_binary_labels("c_true", c_true)
        soft = as_matrix("c_soft", c_soft, n=c.shape[0])
        if soft.shape[1] != c.shape[1]:
            raise InvalidInputError(
                f"OIS compares column i of c_soft with concept i: c_soft has {soft.shape[1]} "
                f"columns but c_true has {c.shape[1]} concepts. Pass one soft column per "
                "concept."
            )
        check_class_counts(c, test_size, metric="the Oracle Impurity Score", what="concept")
        settings = (test_size, seed, n_seeds, diagonal, n_boot)
        return _oracle_impurity(soft, c, names, settings, cem)


def _fit_split(
    soft: torch.Tensor,
    c: torch.Tensor,
    names: Sequence[str] | None,
    test_size: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    train, test = _checked_split(c, names, test_size, seed)
    p_sign = _pairwise_probe_directions(soft, c, train)
    o_sign = _pairwise_probe_directions(c, c, train)
    return p_sign, o_sign, test


def _checked_split(
    c: torch.Tensor, names: Sequence[str] | None, test_size: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    train, test = train_test_split(c.shape[0], test_size, seed)
    for rows, where in ((train, f"train split (seed={seed})"), (test, f"test split (seed={seed})")):
        require_both_classes(c[rows], metric="the Oracle Impurity Score", where=where, names=names)
    return train, test


Impurity = Callable[[torch.Tensor | None], tuple[float, torch.Tensor, torch.Tensor]]


def _split_impurity(
    soft: torch.Tensor,
    c: torch.Tensor,
    names: Sequence[str] | None,
    settings: tuple[float, int, bool],
    cem: bool,
) -> tuple[Impurity, int]:
    """Probes fitted on one split (``cem``: P on the split ``seed`` and O on an independent
    split ``seed + 1_000_000``, probe weights and shuffles seeded alike); returns the OIS of
    the (optionally resampled) test rows, and the number of test rows."""
    test_size, seed, diagonal = settings
    k = c.shape[1]
    if not cem:
        p_sign, o_sign, test = _fit_split(soft, c, names, test_size, seed)
        s_test, c_test = soft[test], c[test]

        def logistic(rows: torch.Tensor | None) -> tuple[float, torch.Tensor, torch.Tensor]:
            r = slice(None) if rows is None else rows
            return _impurity(s_test[r], c_test[r], p_sign, o_sign, diagonal)

        return logistic, len(test)
    scores, tests = [], []
    for x, s in ((soft, seed), (c, seed + 1_000_000)):
        train, test = _checked_split(c, names, test_size, s)
        scores.append(cem_pair_scores(x, c, train, test, s))
        tests.append(c[test])

    def mlp(rows: torch.Tensor | None) -> tuple[float, torch.Tensor, torch.Tensor]:
        purity = cem_purity(scores[0], tests[0], rows)
        oracle = cem_purity(scores[1], tests[1], rows).fill_diagonal_(1.0)
        if not diagonal:
            purity.fill_diagonal_(1.0)
        return float(torch.linalg.norm(oracle - purity) / (k / 2)), purity, oracle

    return mlp, len(tests[0])


def _oracle_impurity(
    soft: torch.Tensor,
    c: torch.Tensor,
    names: Sequence[str] | None,
    settings: tuple[float, int, int, bool, int],
    cem: bool = False,
) -> ConceptResult:
    test_size, seed, n_seeds, diagonal, n_boot = settings
    impurity, n_test = _split_impurity(soft, c, names, (test_size, seed, diagonal), cem)
    value, purity, oracle = impurity(None)
    interval = None
    if n_boot > 0:
        interval = bootstrap_interval(
            lambda rows: impurity(rows)[0],
            n_test,
            strata=None,
            n_boot=n_boot,
            seed=seed,
            kind="basic",
            estimate=value,
        )
    values = [value]
    for s in range(seed + 1, seed + n_seeds):
        split = (test_size, s, diagonal)
        values.append(_split_impurity(soft, c, names, split, cem)[0](None)[0])
    leakage = (purity - oracle).clamp_min(0.0).fill_diagonal_(0.0)
    return ConceptResult(
        value=value,
        metric="ois",
        per_concept=(oracle - purity).pow(2).sum(1).sqrt() / (c.shape[1] / 2),
        interval=interval,
        seed_spread=seed_spread(values) if n_seeds > 1 else {},
        n=n_test,
        params={
            "test_size": test_size,
            "seed": seed,
            "n_seeds": n_seeds,
            "include_diagonal": diagonal,
            "n_boot": n_boot,
            "probe": "cem 1-32-1 MLP, Adam 1e-3, 25 epochs, two splits"
            if cem
            else "logistic (1-D, closed-form direction)",
            "compat": "cem" if cem else None,
        },
        details={"purity": purity, "oracle": oracle, "leakage": leakage},
    )


def _general_split(
    reps: list[torch.Tensor],
    codes: torch.Tensor,
    sizes: list[int],
    categories: tuple[torch.Tensor, list[str]],
    test_size: float,
    seed: int,
) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]], torch.Tensor]:
    train, test = train_test_split(codes.shape[0], test_size, seed)
    indicators, labels = categories
    for rows, where in ((train, f"train split (seed={seed})"), (test, f"test split (seed={seed})")):
        require_both_classes(
            indicators[rows], metric="the Oracle Impurity Score", where=where, names=labels
        )
    p_scores = probe_scores(reps, codes, sizes, train, test)
    o_scores = probe_scores(label_features(codes, sizes), codes, sizes, train, test)
    return p_scores, o_scores, test


def _general_value(
    p_scores: list[list[torch.Tensor]],
    o_scores: list[list[torch.Tensor]],
    codes: torch.Tensor,
    diagonal: bool,
    rows: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    k = codes.shape[1]
    purity = purity_from_scores(p_scores, codes, rows)
    oracle = purity_from_scores(o_scores, codes, rows).fill_diagonal_(1.0)
    if not diagonal:
        purity.fill_diagonal_(1.0)
    return float(torch.linalg.norm(oracle - purity) / (k / 2)), purity, oracle


def _general_impurity(
    c_soft: Any,
    c_true: Any,
    names: Sequence[str] | None,
    categorical: bool,
    settings: tuple[float, int, int, bool, int],
) -> ConceptResult:
    """OIS of embedding / list representations and of categorical concepts (fitted probes)."""
    test_size, seed, n_seeds, diagonal, n_boot = settings
    if categorical:
        codes, sizes, cat_values = as_categorical_labels("c_true", c_true, n=len(c_true))
    else:
        binary = as_binary_labels("c_true", c_true)
        codes, sizes = binary.to(torch.int64), [2] * binary.shape[1]
        cat_values = [[0.0, 1.0]] * binary.shape[1]
    reps = as_representation("c_soft", c_soft, n=codes.shape[0])
    if len(reps) != codes.shape[1]:
        raise InvalidInputError(
            f"OIS compares representation i with concept i: c_soft has {len(reps)} concept "
            f"representations but c_true has {codes.shape[1]} concepts. Pass one slice or "
            "list element per concept."
        )
    indicators, labels = category_indicators(
        codes, sizes, test_size, "the Oracle Impurity Score", names, cat_values
    )
    p_scores, o_scores, test = _general_split(
        reps, codes, sizes, (indicators, labels), test_size, seed
    )
    c_test = codes[test]
    value, purity, oracle = _general_value(p_scores, o_scores, c_test, diagonal)
    interval = None
    if n_boot > 0:
        interval = bootstrap_interval(
            lambda rows: _general_value(p_scores, o_scores, c_test, diagonal, rows)[0],
            len(test),
            strata=None,
            n_boot=n_boot,
            seed=seed,
            kind="basic",
            estimate=value,
        )
    values = [value]
    for s in range(seed + 1, seed + n_seeds):
        ps, os_, t = _general_split(reps, codes, sizes, (indicators, labels), test_size, s)
        values.append(_general_value(ps, os_, codes[t], diagonal)[0])
    k = codes.shape[1]
    return ConceptResult(
        value=value,
        metric="ois",
        per_concept=(oracle - purity).pow(2).sum(1).sqrt() / (k / 2),
        interval=interval,
        seed_spread=seed_spread(values) if n_seeds > 1 else {},
        n=len(test),
        params={
            "test_size": test_size,
            "seed": seed,
            "n_seeds": n_seeds,
            "include_diagonal": diagonal,
            "n_boot": n_boot,
            "categorical": categorical,
            "probe": "logistic (binary) / multinomial (categorical), C = 1",
            "representation_dims": [int(r.shape[1]) for r in reps],
        },
        details={
            "purity": purity,
            "oracle": oracle,
            "leakage": (purity - oracle).clamp_min(0.0).fill_diagonal_(0.0),
            "cardinalities": sizes,
        },
    )


def oracle_impurity_score(c_soft: Any, c_true: Any, **kwargs: Any) -> ConceptResult:
    """The Oracle Impurity Score; see :class:`OracleImpurity` for the parameters.
    ``details`` holds the purity matrix P, the oracle matrix O and the leakage
    max(P - O, 0) off the diagonal; ``per_concept`` each row's share of the norm."""
    names = kwargs.pop("names", None)
    return OracleImpurity(**kwargs).estimate(c_soft, c_true, names=names)
