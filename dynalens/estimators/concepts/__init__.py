"""Concept-bottleneck metrics: accuracy / AUC / F1, intervention curves, impurity, leakage,
CAVs and TCAV.

Every metric returns a :class:`ConceptResult` (value, per-concept values, interval, seed
spread, settings). Class API (``__init__`` stores parameters, ``estimate`` computes) and a
functional shortcut share one private implementation::

    from dynalens.estimators.concepts import concept_auc, ConceptScores
    concept_auc(c_true, c_prob).value
    ConceptScores("auc", n_boot=200, seed=0).estimate(c_true, c_prob)
"""

from __future__ import annotations

from dynalens.estimators.concepts._intervention_engine import ConceptTask
from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts.activation_maps import coam, concept_activation_maps
from dynalens.estimators.concepts.bypass_share import (
    BypassShare,
    UndefinedShareWarning,
    bypass_share,
)
from dynalens.estimators.concepts.causal_effect import (
    CausalConceptEffect,
    causal_concept_effect,
    residual_effect,
)
from dynalens.estimators.concepts.cav import CAV, train_cav, train_cavs
from dynalens.estimators.concepts.completeness import Completeness, completeness_score
from dynalens.estimators.concepts.concept_accuracy import (
    ConceptScores,
    UndefinedConceptWarning,
    concept_accuracy,
    concept_auc,
    concept_f1,
)
from dynalens.estimators.concepts.concept_alignment import (
    ConceptAlignment,
    concept_alignment_score,
)
from dynalens.estimators.concepts.concept_existence import ConceptExistence, concept_existence
from dynalens.estimators.concepts.concept_importance import (
    ConceptGlobalImportance,
    concept_global_importance,
)
from dynalens.estimators.concepts.concept_location import ConceptLocation, concept_location
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
from dynalens.estimators.concepts.tcav import (
    TCAV,
    TCAVReport,
    directional_derivatives,
    tcav,
    tcav_scores,
)

__all__ = [
    "CAV",
    "TCAV",
    "BypassShare",
    "CausalConceptEffect",
    "Completeness",
    "ConceptAlignment",
    "ConceptExistence",
    "ConceptGlobalImportance",
    "ConceptLocation",
    "ConceptResult",
    "ConceptScores",
    "ConceptSparsity",
    "ConceptTask",
    "ConceptTaskLeakage",
    "InterventionCurve",
    "NicheImpurity",
    "OracleImpurity",
    "TCAVReport",
    "TaskScores",
    "UndefinedConceptWarning",
    "UndefinedShareWarning",
    "activation_sparsity",
    "bypass_share",
    "causal_concept_effect",
    "coam",
    "completeness_score",
    "concept_accuracy",
    "concept_activation_maps",
    "concept_alignment_score",
    "concept_auc",
    "concept_existence",
    "concept_f1",
    "concept_global_importance",
    "concept_location",
    "concept_task_leakage",
    "directional_derivatives",
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
    "tcav",
    "tcav_scores",
    "train_cav",
    "train_cavs",
]
