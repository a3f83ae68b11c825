"""Concept bottleneck models: Koh et al.'s CBM, hybrid, sparse and energy-based CBMs.

Each model has ``concepts(x)`` (the bottleneck) and ``concept_task(x)`` (the concept ->
task callable of :func:`~dynalens.estimators.concepts.intervention_curve`), so one
intervention engine serves them all.
"""

from __future__ import annotations

from dynalens.concepts.models.cbm import ConceptBottleneckModel, FitHistory, fit_cbm
from dynalens.concepts.models.energy import EnergyCBM, fit_energy_cbm
from dynalens.concepts.models.energy_gibbs import gibbs_concept_given_class, gibbs_posterior
from dynalens.concepts.models.energy_importance import (
    energy_concept_importance,
    importance_from_predictions,
)
from dynalens.concepts.models.hybrid import HybridCBM, fit_hybrid
from dynalens.concepts.models.posthoc import (
    ConceptBank,
    PosthocCBM,
    fit_posthoc_cbm,
    learn_concept_bank,
)
from dynalens.concepts.models.posthoc_edit import finetune_head, prune_concepts
from dynalens.concepts.models.sparse import (
    SparseCBM,
    contrastive_loss,
    fit_sparse_cbm,
    gumbel_loss,
    gumbel_topk_mask,
    l1_loss,
)

__all__ = [
    "ConceptBank",
    "ConceptBottleneckModel",
    "EnergyCBM",
    "FitHistory",
    "HybridCBM",
    "PosthocCBM",
    "SparseCBM",
    "contrastive_loss",
    "energy_concept_importance",
    "finetune_head",
    "fit_cbm",
    "fit_energy_cbm",
    "fit_hybrid",
    "fit_posthoc_cbm",
    "fit_sparse_cbm",
    "gibbs_concept_given_class",
    "gibbs_posterior",
    "gumbel_loss",
    "gumbel_topk_mask",
    "importance_from_predictions",
    "l1_loss",
    "learn_concept_bank",
    "prune_concepts",
]
