r"""Niche Impurity Score (Espinosa Zarlenga et al. 2023, "Towards Robust Metrics for
Concept Representation Evaluation", AAAI).

One probe g: soft concepts -> true concepts is fitted on a seeded train split (here k
independent L2 logistic probes, C = 1, each reading all k soft columns, trained to
convergence; cem uses ``MLPClassifier((20, 20))``). The *niche* of concept i at threshold
β is :math:`N_i(\beta) = \{j : |\rho_{ji}| > \beta\}`, ρ the Pearson correlation of soft
column j with true concept i on the train split (a constant column has no correlation and
stays outside). The impurity at β is how well the columns *outside* the niche still
predict concept i:

.. math:: \mathrm{imp}(\beta) = \frac1k \sum_i \mathrm{AUC}\big(c_i,\;
          g_i(\hat c \text{ with the columns of } N_i(\beta) \text{ set to } 0)\big),

on the test split, and :math:`\mathrm{NIS} = \int_0^1 \mathrm{imp}(\beta)\,d\beta`
(trapezoid over ``betas``, divided by their range). ``compat="cem"`` reproduces the cem
reference's integration (``metrics/niching.py: niche_impurity_score``): β in
0, 0.05, ..., 0.95 and the trapezoid sum *not* divided by the range (so the score is at
most 0.95), with its probe, scikit-learn ``MLPClassifier((20, 20), random_state=1,
max_iter=1000)`` (:mod:`._cem_probes`; the split is still seeded). A pure
representation keeps concept i in its own column only: once that column is in the niche,
the rest predicts i at chance (0.5). Interval: percentile bootstrap over test rows
(probes fixed); ``n_seeds`` splits give the seed spread, which the guide measured at
sd ≈ 0.014 for the cem probe.

Embedding representations ((n, k, m), concept j = slice ``[:, j, :]``, or a list of
per-concept (n, m_j) arrays): the probe reads all features; soft concept j is in the
niche of i when the largest |ρ| over its m_j features exceeds β, and then all its features
are zeroed (guide §3.4: mask repeated over the embedding, max correlation over it). With
m = 1 this is the scalar score exactly. Categorical concepts (``categorical=True``,
integer codes): softmax probes and one-vs-one AUCs (:mod:`._niche_categorical`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dynalens._validation import check_bool, check_float, check_int, check_option
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts._cem_probes import cem_niche_probabilities
from dynalens.estimators.concepts._checks import as_binary_labels, require_both_classes
from dynalens.estimators.concepts._niche_categorical import (
    categorical_bootstrap,
    categorical_niche_curve,
    categorical_niche_outputs,
)
from dynalens.estimators.concepts._probe import fit_binary_probes
from dynalens.estimators.concepts._representations import (
    as_categorical_labels,
    as_representation,
    category_indicators,
)
from dynalens.estimators.concepts._result import ConceptResult, seed_spread
from dynalens.estimators.concepts._scores import (
    auc_columns,
    weighted_auc_columns,
    weighted_bootstrap_interval,
)
from dynalens.estimators.concepts._split import check_class_counts, train_test_split

__all__ = ["NicheImpurity", "niche_impurity_score"]

METRIC = "the Niche Impurity Score"


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation (k_a, k_b) of the columns of a and b; 0 for constant columns."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    norm = a.norm(dim=0)[:, None] * b.norm(dim=0)[None, :]
    return torch.where(norm > 0, (a.T @ b) / norm.clamp_min(1e-300), torch.zeros_like(norm))


def _niche_probabilities(
    soft: torch.Tensor,
    c: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    betas: torch.Tensor,
    C: float,
    groups: torch.Tensor | None = None,
    cem_probe: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test-row probabilities of probe i with i's niche zeroed, for each distinct
    (concept, niche) pair only: a niche changes at a few β, so most of the len(betas) x k
    columns repeat. Returns the distinct columns' probabilities (n_test, U), their concept
    index (U,) and, for each (β, concept), its distinct column (len(betas), k).
    ``groups`` (n_features,) names the soft concept of each feature column (default: one
    column per concept). ``cem_probe``: cem's MLP probe (:mod:`._cem_probes`), not the
    logistic one."""
    k = c.shape[1]
    if groups is None:
        groups = torch.arange(soft.shape[1])
    rho = _correlation(soft[train], c[train]).abs()  # [f, i]: feature f vs concept i
    best = torch.zeros(k, k, dtype=rho.dtype).scatter_reduce_(
        0, groups[:, None].expand_as(rho), rho, "amax"
    )
    outside = (best.T[None] <= betas[:, None, None])[..., groups]  # [β, i, f]
    concept = torch.arange(k).expand(len(betas), k)
    keys = torch.cat([concept[..., None], outside.to(torch.int64)], -1)
    keys = keys.reshape(-1, keys.shape[-1])
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    which, keep = unique[:, 0], unique[:, 1:].to(soft.dtype)
    if cem_probe:
        proba = cem_niche_probabilities(soft[train], c[train], soft[test], which, keep)
        return proba, which, inverse.reshape(len(betas), k)
    theta = fit_binary_probes(soft[train], c[train].T, C=C)  # k probes, shared features
    logits = soft[test] @ (theta[which, :-1] * keep).T + theta[which, -1]
    return torch.sigmoid(logits), which, inverse.reshape(len(betas), k)


def _integrate(curve: torch.Tensor, betas: torch.Tensor, normalise: bool) -> torch.Tensor:
    value = torch.trapezoid(curve, betas, dim=-1)
    return value / (betas[-1] - betas[0]) if normalise else value


Niche = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _nis(
    niche: Niche, c_test: torch.Tensor, betas: torch.Tensor, normalise: bool = True
) -> tuple[float, torch.Tensor]:
    proba, which, inverse = niche
    curve = auc_columns(c_test[:, which], proba)[inverse].nanmean(1)
    return float(_integrate(curve, betas, normalise)), curve


def _nis_replicates(
    niche: Niche, c_test: torch.Tensor, betas: torch.Tensor, normalise: bool, w: torch.Tensor
) -> torch.Tensor:
    """:func:`_nis` of each bootstrap replicate given as multiplicity weights (B, n_test):
    one sort per distinct column for all replicates."""
    proba, which, inverse = niche
    aucs = weighted_auc_columns(c_test[:, which], proba, w)
    return _integrate(aucs[:, inverse].nanmean(2), betas, normalise)


class NicheImpurity:
    """Niche Impurity Score.

    Parameters
    ----------
    betas : sequence of float in [0, 1], increasing (default 0, 0.05, ..., 1).
    test_size, seed, n_seeds, C, n_boot : as :class:`OracleImpurity`.
    compat : None or "cem"
        ``"cem"``: cem's probe (scikit-learn ``MLPClassifier((20, 20), random_state=1,
        max_iter=1000)``, needs scikit-learn; ``C`` unused), β grid 0..0.95 and an
        unnormalised trapezoid, as the cem code. Binary concepts only.
    categorical : bool
        ``c_true`` holds integer category codes (softmax probes, one-vs-one AUC).
    """

    def __init__(
        self,
        *,
        betas: Sequence[float] | None = None,
        test_size: float = 0.2,
        seed: int = 0,
        n_seeds: int = 5,
        C: float = 1.0,
        n_boot: int = 200,
        compat: str | None = None,
        categorical: bool = False,
    ) -> None:
        self.categorical = categorical
        self.compat = compat
        self.betas = betas
        self.test_size = test_size
        self.seed = seed
        self.n_seeds = n_seeds
        self.C = C
        self.n_boot = n_boot

    def estimate(
        self, c_soft: Any, c_true: Any, *, names: Sequence[str] | None = None
    ) -> ConceptResult:
        """NIS of ``c_soft`` against ``c_true`` (n, k): an (n, k) matrix (one column per
        concept), an (n, k, m) embedding tensor or a list of k per-concept arrays."""
        test_size = check_float("test_size", self.test_size, min=0.0, max=1.0, min_inclusive=False)
        seed = check_int("seed", self.seed)
        n_seeds = check_int("n_seeds", self.n_seeds, min=1)
        C = check_float("C", self.C, min=0.0, min_inclusive=False)
        n_boot = check_int("n_boot", self.n_boot, min=0)
        if self.compat is not None:
            check_option("compat", self.compat, ("cem",))
            if self.betas is not None:
                raise InvalidParameterError(
                    "compat='cem' fixes the beta grid (0, 0.05, ..., 0.95); pass betas= or "
                    "compat=, not both."
                )
        cem = self.compat == "cem"
        grid = (
            [i / 20 for i in range(20 if cem else 21)] if self.betas is None else list(self.betas)
        )
        betas = torch.tensor(grid, dtype=torch.float64)
        if len(grid) < 2 or (betas.diff() <= 0).any() or betas[0] < 0 or betas[-1] > 1:
            raise InvalidParameterError(
                f"betas must be at least two increasing values in [0, 1]; got {grid[:6]}."
            )
        if check_bool("categorical", self.categorical):
            if cem:
                raise InvalidParameterError(
                    "compat='cem' reproduces cem's multi-label MLP probe, which reads binary "
                    "concepts only; got categorical=True. Drop compat= for categorical "
                    "concepts, or one-hot encode them and pass binary columns."
                )
            settings = (betas, grid, test_size, seed, n_seeds, C, n_boot, not cem)
            return self._categorical(c_soft, c_true, names, settings)
        c = as_binary_labels("c_true", c_true)
        reps = as_representation("c_soft", c_soft, n=c.shape[0])
        if len(reps) != c.shape[1]:
            raise InvalidInputError(
                f"NIS needs one soft column per concept (or embedding slice, or list element): "
                f"c_soft has {len(reps)}, "
                f"c_true {c.shape[1]} concepts. Pass (n, k), (n, k, m) or a list of k arrays."
            )
        soft = torch.cat(reps, 1)
        groups = torch.cat([torch.full((r.shape[1],), i) for i, r in enumerate(reps)])
        check_class_counts(c, test_size, metric=METRIC, what="concept")
        values, first = [], None
        for s in range(seed, seed + n_seeds):
            train, test = train_test_split(c.shape[0], test_size, s)
            for rows, where in (
                (train, f"train split (seed={s})"),
                (test, f"test split (seed={s})"),
            ):
                require_both_classes(c[rows], metric=METRIC, where=where, names=names)
            niche = _niche_probabilities(soft, c, train, test, betas, C, groups, cem)
            value, curve = _nis(niche, c[test], betas, not cem)
            values.append(value)
            if first is None:
                first = (value, curve, niche, c[test])
        assert first is not None
        value, curve, niche, c_test = first
        interval = None
        if n_boot > 0:
            interval = weighted_bootstrap_interval(
                lambda w: _nis_replicates(niche, c_test, betas, not cem, w),
                len(c_test),
                strata=None,
                n_boot=n_boot,
                seed=seed,
            )
        return ConceptResult(
            value=value,
            metric="nis",
            per_concept=None,
            interval=interval,
            seed_spread=seed_spread(values) if n_seeds > 1 else {},
            n=len(c_test),
            params={
                **self._params(grid, test_size, seed, n_seeds, C, n_boot),
                "probe": "cem MLPClassifier((20, 20), random_state=1)" if cem else "logistic",
            },
            details={"impurity_curve": curve, "betas": betas},
        )

    def _params(
        self, grid: Any, test_size: float, seed: int, n_seeds: int, C: float, n_boot: int
    ) -> dict[str, Any]:
        """The parameters every NIS result records."""
        return {
            "betas": grid,
            "test_size": test_size,
            "seed": seed,
            "n_seeds": n_seeds,
            "C": C,
            "n_boot": n_boot,
            "compat": self.compat,
        }

    def _categorical(
        self, c_soft: Any, c_true: Any, names: Sequence[str] | None, settings: tuple
    ) -> ConceptResult:
        betas, grid, test_size, seed, n_seeds, C, n_boot, normalise = settings
        codes, sizes, cat_values = as_categorical_labels("c_true", c_true, n=len(c_true))
        reps = as_representation("c_soft", c_soft, n=codes.shape[0])
        if len(reps) != codes.shape[1]:
            raise InvalidInputError(
                f"NIS needs one soft column per concept (or embedding slice, or list element): "
                f"c_soft has {len(reps)}, c_true {codes.shape[1]} concepts."
            )
        soft = torch.cat(reps, 1)
        groups = torch.cat([torch.full((r.shape[1],), i) for i, r in enumerate(reps)])
        indicators, labels = category_indicators(codes, sizes, test_size, METRIC, names, cat_values)
        values, first = [], None
        for s in range(seed, seed + n_seeds):
            train, test = train_test_split(codes.shape[0], test_size, s)
            for rows, where in (
                (train, f"train split (seed={s})"),
                (test, f"test split (seed={s})"),
            ):
                require_both_classes(indicators[rows], metric=METRIC, where=where, names=labels)
            outputs = categorical_niche_outputs(soft, groups, codes, sizes, train, test, betas, C)
            curve = categorical_niche_curve(outputs, codes[test])
            values.append(float(_integrate(curve, betas, normalise)))
            if first is None:
                first = (curve, outputs, codes[test])
        assert first is not None
        curve, outputs, c_test = first
        interval = None
        if n_boot > 0:
            interval = categorical_bootstrap(
                outputs, c_test, lambda cv: _integrate(cv, betas, normalise), n_boot, seed
            )
        return ConceptResult(
            value=values[0],
            metric="nis",
            interval=interval,
            seed_spread=seed_spread(values) if n_seeds > 1 else {},
            n=len(c_test),
            params={
                **self._params(grid, test_size, seed, n_seeds, C, n_boot),
                "probe": "logistic / multinomial",
                "categorical": True,
            },
            details={"impurity_curve": curve, "betas": betas, "cardinalities": sizes},
        )


def niche_impurity_score(c_soft: Any, c_true: Any, **kwargs: Any) -> ConceptResult:
    """The Niche Impurity Score; see :class:`NicheImpurity`. ``details["impurity_curve"]``
    holds imp(β) over ``details["betas"]``."""
    names = kwargs.pop("names", None)
    return NicheImpurity(**kwargs).estimate(c_soft, c_true, names=names)
