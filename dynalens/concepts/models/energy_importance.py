r"""Concept importance of energy-based CBMs (Xu et al. 2024, §3.4 "probabilistic
interpretations"): how strongly a class implies each concept, p(c_k = 1 | y), and each
joint configuration, p(c | y).

Default: the model's own conditionals, :math:`p(c \mid y) \propto \exp(-E(c, y))` and
:math:`p(c_k \mid y) = \sum_{c_{-k}} p(c \mid y)`, exact by enumeration
(:meth:`EnergyCBM.concept_given_class`, k ≤ 16) or by Gibbs sampling with Monte Carlo
standard errors beyond (:func:`~dynalens.concepts.models.energy_gibbs.gibbs_concept_given_class`).

``compat="ecbm"`` reproduces the released ``CalcImportanceScore.py``: on a data set,
predicted classes :math:`\hat y` and predicted hard concepts :math:`\hat c` (here the
model's posterior marginals p(c_k = 1 | x) ≥ 0.5 and argmax p(y | x)) are counted, and
per predicted class m

.. math::

    \mathrm{marginal}_{m,k} =
    \frac{\#\{i : \hat y_i = m, \hat c_{ik} = 1\}}{\#\{i : \hat y_i = m\}},
    \qquad
    \mathrm{joint}_{m,C} = \frac{\#\{i : \hat y_i = m, \hat c_i = C\}}{\#\{i : \hat y_i = m\}},

over the distinct predicted configurations C (in lexicographic order, as ``np.unique``),
with :math:`p(C) = \#\{i : \hat c_i = C\} / \#\{\text{distinct } C\}` -- the reference's
normalisation, which does not sum to 1; :func:`importance_from_predictions` without
compat divides by n. These are frequencies of the model's predictions, not its
conditionals: the two agree only when predictions are hard and calibrated.

Example
-------
>>> import torch
>>> r = importance_from_predictions(torch.tensor([[1, 0], [1, 0], [0, 1], [1, 1]]),
...                                 torch.tensor([0, 0, 1, 1]))
>>> r["marginal"].tolist()
[[1.0, 0.0], [0.5, 1.0]]
"""

from __future__ import annotations

from typing import Any

import torch

from dynalens._validation import check_option
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import as_binary_labels, as_class_labels

__all__ = ["energy_concept_importance", "importance_from_predictions"]


def importance_from_predictions(
    c_pred: Any, y_pred: Any, *, compat: str | None = None
) -> dict[str, torch.Tensor]:
    """Frequency importance of hard concept predictions ``c_pred`` (n, k) in {0, 1} per
    predicted class ``y_pred`` (n,) (module docstring).

    Returns ``classes`` (M,) the predicted classes present, ``p_y`` (M,) their
    frequencies, ``configs`` (U, k) the distinct predicted configurations, ``p_config``
    (U,) (divided by n, or by U with ``compat="ecbm"``), ``joint`` (M, U) = p(C | y) and
    ``marginal`` (M, k) = p(c_k = 1 | y)."""
    if compat is not None:
        check_option("compat", compat, ("ecbm",))
    c = as_binary_labels("c_pred", c_pred)
    y = as_class_labels("y_pred", y_pred, n=c.shape[0])
    classes, y_idx = torch.unique(y, return_inverse=True)
    configs, c_idx = torch.unique(c, dim=0, return_inverse=True)
    m, u, n = len(classes), len(configs), c.shape[0]
    counts = torch.zeros(m, u, dtype=torch.float64).index_put_(
        (y_idx, c_idx), torch.ones(n, dtype=torch.float64), accumulate=True
    )
    per_class = counts.sum(1, keepdim=True)
    per_config = counts.sum(0)
    return {
        "classes": classes,
        "p_y": per_class[:, 0] / n,
        "configs": configs,
        "p_config": per_config / (u if compat == "ecbm" else n),
        "joint": counts / per_class,
        "marginal": (counts @ configs) / per_class,
    }


def energy_concept_importance(
    model: Any,
    x: torch.Tensor | None = None,
    *,
    compat: str | None = None,
    prior: Any = None,
    **gibbs: Any,
) -> dict[str, torch.Tensor]:
    """Concept importance of an :class:`~dynalens.concepts.models.EnergyCBM`.

    Default: the model's conditionals (``marginal`` (T, k) = p(c_k = 1 | y), ``joint``
    (T, 2^k) = p(c | y), ``configs``); exact for k ≤ 16, Gibbs beyond (``gibbs`` keyword
    arguments are passed on; the result then carries ``marginal_se``). ``compat="ecbm"``:
    frequencies of the hard predictions on ``x`` (:func:`importance_from_predictions`
    with the reference's normalisation)."""
    if compat is not None:
        check_option("compat", compat, ("ecbm",))
        if x is None:
            raise InvalidInputError(
                "compat='ecbm' counts the model's predictions on a data set: pass x."
            )
        log_y, p_c = model.posterior(x)
        return importance_from_predictions(
            (p_c >= 0.5).to(torch.float64), log_y.argmax(1), compat="ecbm"
        )
    if model.k > model.max_exact:
        from dynalens.concepts.models.energy_gibbs import gibbs_concept_given_class

        out = gibbs_concept_given_class(model, prior=prior, **gibbs)
        return {"marginal": out["marginal"], "marginal_se": out["marginal_se"]}
    exact = model.concept_given_class(prior)
    return {
        "marginal": exact["marginal"],
        "joint": exact["p_c_given_y"],
        "configs": model.configs.double(),
    }
