r"""Completeness of a set of concepts (Yeh et al. 2020, "On Completeness-aware
Concept-Based Explanations in Deep Neural Networks", NeurIPS).

.. math:: \eta = \frac{\sup_g \mathrm{score}(y, g(v_c(x))) - a_r}
                      {\mathrm{score}(y, f(x)) - a_r},

v_c the concept scores, g a decoder from concepts to the task, f the black-box model and
:math:`a_r` the score of an uninformed prediction: the majority-class rate for accuracy,
0.5 for the (macro one-vs-rest) AUC. Here the supremum over g is approximated by an L2
multinomial logistic decoder (C = 1, trained to convergence on a seeded train split;
Yeh et al. map concepts back through the network's upper layers), or by the predictions of
any decoder of yours (``y_whitebox``). η is 1 when the concepts explain the black box's
performance fully and about 0 when they carry nothing about y. The black box is scored on
the same test rows. η is never clipped; where f is no better than :math:`a_r` it is
undefined (NaN, with a warning). ``details["ratio"]`` is the uncorrected
score(g) / (score(f) + 1e-10), PyC's number.

``compat="pyc"`` reproduces PyC's ``completeness_score(y, y_blackbox, y_whitebox,
scorer=roc_auc_score, average="macro")``: score(white) / (score(black) + 1e-10) with the
AUC and no chance correction. Interval: paired percentile bootstrap over test rows,
stratified by y, decoder fixed.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from dynalens._validation import check_bool, check_float, check_int, check_option
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import as_class_labels, as_matrix
from dynalens.estimators.concepts._probe import fit_multinomial_probe, predict_multinomial
from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts._scores import (
    macro_ovr_auc,
    weighted_bootstrap_interval,
    weighted_macro_ovr_auc,
)
from dynalens.estimators.concepts._split import train_test_split
from dynalens.estimators.concepts.task_accuracy import class_probabilities

__all__ = ["Completeness", "completeness_score"]


def _score(y: torch.Tensor, proba: torch.Tensor, score: str) -> float:
    if score == "accuracy":
        return float((proba.argmax(1) == y).to(torch.float64).mean())
    return macro_ovr_auc(y, proba)


def _weighted_score(y: torch.Tensor, proba: torch.Tensor, score: str, w: torch.Tensor) -> Any:
    if score == "accuracy":
        return (w @ (proba.argmax(1) == y).to(torch.float64)) / w.sum(1)
    return weighted_macro_ovr_auc(y, proba, w)


def _eta(white: Any, black: Any, chance: float, pyc: bool) -> Any:
    if pyc:
        return white / (black + 1e-10)
    return (white - chance) / (black - chance)


class Completeness:
    """Completeness η of concept scores for a black-box model.

    Parameters
    ----------
    score : {"accuracy", "auc"}
        Task score (default accuracy; ``compat="pyc"`` uses the AUC).
    logits : bool
        Whether ``y_blackbox`` / ``y_whitebox`` are logits (default) or probabilities.
    test_size, seed : float, int
        The decoder's seeded split (only when it is fitted here).
    C : float
        Inverse L2 strength of the logistic decoder.
    n_boot : int
        Paired bootstrap replicates over test rows (0: no interval).
    compat : None or "pyc"

    Examples
    --------
    >>> Completeness().estimate(y, blackbox_logits, concepts=c_pred).value  # doctest: +SKIP
    """

    def __init__(
        self,
        score: str = "accuracy",
        *,
        logits: bool = True,
        test_size: float = 0.2,
        seed: int = 0,
        C: float = 1.0,
        n_boot: int = 200,
        compat: str | None = None,
    ) -> None:
        self.score = score
        self.logits = logits
        self.test_size = test_size
        self.seed = seed
        self.C = C
        self.n_boot = n_boot
        self.compat = compat

    def estimate(
        self, y: Any, y_blackbox: Any, *, concepts: Any = None, y_whitebox: Any = None
    ) -> ConceptResult:
        """η for labels ``y`` (n,) and black-box outputs (n, T) or (n,), from concept
        scores ``concepts`` (n, k) (a logistic decoder is fitted on a seeded split and
        both models are scored on its test rows) or from a decoder's outputs
        ``y_whitebox`` (scored on all rows)."""
        pyc = self.compat is not None and check_option("compat", self.compat, ("pyc",)) == "pyc"
        score = "auc" if pyc else check_option("score", self.score, ("accuracy", "auc"))
        logits = check_bool("logits", self.logits)
        test_size = check_float("test_size", self.test_size, min=0.0, max=1.0, min_inclusive=False)
        seed = check_int("seed", self.seed)
        C = check_float("C", self.C, min=0.0, min_inclusive=False)
        n_boot = check_int("n_boot", self.n_boot, min=0)
        labels = as_class_labels("y", y)
        n = labels.shape[0]
        black = class_probabilities(y_blackbox, logits=logits, n=n)
        if (concepts is None) == (y_whitebox is None):
            raise InvalidInputError(
                "pass exactly one of concepts= (concept scores; a logistic decoder is "
                "fitted here) or y_whitebox= (your decoder's outputs)."
            )
        if int(labels.max()) >= black.shape[1]:
            raise InvalidInputError(
                f"y holds class {int(labels.max())} but y_blackbox has {black.shape[1]} "
                "columns; pass one column per class."
            )
        if y_whitebox is not None:
            rows = torch.arange(n)
            white = class_probabilities(y_whitebox, logits=logits, n=n)
            decoder = "given"
        else:
            v = as_matrix("concepts", concepts, n=n)
            train, rows = train_test_split(n, test_size, seed)
            if len(labels[train].unique()) < 2:
                raise InvalidInputError(
                    "the decoder's train split holds a single class of y; pass more rows "
                    "or another seed."
                )
            theta = fit_multinomial_probe(v[train], labels[train], black.shape[1], C=C)
            white = predict_multinomial(theta, v)
            decoder = "logistic"
        if white.shape != black.shape:
            raise InvalidInputError(
                f"y_whitebox has shape {tuple(white.shape)} but y_blackbox "
                f"{tuple(black.shape)}; both models must score the same classes."
            )
        y_t, w_t, b_t = labels[rows], white[rows], black[rows]
        chance = float(torch.bincount(y_t).max()) / len(y_t) if score == "accuracy" else 0.5
        s_white, s_black = _score(y_t, w_t, score), _score(y_t, b_t, score)
        undefined = not pyc and s_black <= chance
        value = float("nan") if undefined else float(_eta(s_white, s_black, chance, pyc))
        if undefined:
            warnings.warn(
                f"completeness is undefined: the black box scores {s_black:.4f}, no better "
                f"than chance ({chance:.4f}) on these rows; returning NaN.",
                UserWarning,
                stacklevel=2,
            )
        interval = None
        if n_boot > 0 and not undefined:
            interval = weighted_bootstrap_interval(
                lambda w: _eta(
                    _weighted_score(y_t, w_t, score, w),
                    _weighted_score(y_t, b_t, score, w),
                    chance,
                    pyc,
                ),
                len(y_t),
                strata=y_t,
                n_boot=n_boot,
                seed=seed,
            )
        return ConceptResult(
            value=value,
            metric="completeness",
            interval=interval,
            n=len(y_t),
            params={
                "score": score,
                "logits": logits,
                "test_size": test_size,
                "seed": seed,
                "C": C,
                "n_boot": n_boot,
                "compat": self.compat,
                "decoder": decoder,
            },
            details={
                "score_whitebox": s_white,
                "score_blackbox": s_black,
                "chance": chance,
                "ratio": s_white / (s_black + 1e-10),
            },
        )


def completeness_score(y: Any, y_blackbox: Any, **kwargs: Any) -> ConceptResult:
    """Completeness η; see :class:`Completeness` (``concepts=`` or ``y_whitebox=``)."""
    inputs = {k: kwargs.pop(k) for k in ("concepts", "y_whitebox") if k in kwargs}
    return Completeness(**kwargs).estimate(y, y_blackbox, **inputs)
