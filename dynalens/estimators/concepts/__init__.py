"""Concept-bottleneck metrics: accuracy / AUC / F1, intervention curves, impurity, leakage.

Every metric returns a :class:`ConceptResult` (value, per-concept values, interval, seed
spread, settings). Class API (``__init__`` stores parameters, ``estimate`` computes) and a
functional shortcut share one private implementation::

    from dynalens.estimators.concepts import concept_auc, ConceptScores
    concept_auc(c_true, c_prob).value
    ConceptScores("auc", n_boot=200, seed=0).estimate(c_true, c_prob)
"""

from __future__ import annotations

from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts.causal_effect import (
    CausalConceptEffect,
    causal_concept_effect,
    residual_effect,
)
from dynalens.estimators.concepts.completeness import Completeness, completeness_score
from dynalens.estimators.concepts.concept_accuracy import (
    ConceptScores,
    UndefinedConceptWarning,
    concept_accuracy,
    concept_auc,
    concept_f1,
)
from dynalens.estimators.concepts.interventions import (
    InterventionCurve,
    intervention_curve,
    percentile_writes,
)
from dynalens.estimators.concepts.leakage import (
    ConceptTaskLeakage,
    concept_task_leakage,
    inter_concept_leakage,
)
from dynalens.estimators.concepts.niche_impurity import NicheImpurity, niche_impurity_score
from dynalens.estimators.concepts.oracle_impurity import OracleImpurity, oracle_impurity_score
from dynalens.estimators.concepts.sparsity import (
    ConceptSparsity,
    activation_sparsity,
    number_of_contributing_concepts,
    number_of_effective_concepts,
)
from dynalens.estimators.concepts.task_accuracy import (
    TaskScores,
    task_accuracy,
    task_auc,
    task_f1,
)

__all__ = [
    "CausalConceptEffect",
    "Completeness",
    "ConceptResult",
    "ConceptScores",
    "ConceptSparsity",
    "ConceptTaskLeakage",
    "InterventionCurve",
    "NicheImpurity",
    "OracleImpurity",
    "TaskScores",
    "UndefinedConceptWarning",
    "activation_sparsity",
    "causal_concept_effect",
    "completeness_score",
    "concept_accuracy",
    "concept_auc",
    "concept_f1",
    "concept_task_leakage",
    "inter_concept_leakage",
    "intervention_curve",
    "niche_impurity_score",
    "number_of_contributing_concepts",
    "number_of_effective_concepts",
    "oracle_impurity_score",
    "percentile_writes",
    "residual_effect",
    "task_accuracy",
    "task_auc",
    "task_f1",
]
