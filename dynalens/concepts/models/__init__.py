"""Concept bottleneck models."""

from __future__ import annotations

from dynalens.concepts.models.cbm import ConceptBottleneckModel, FitHistory, fit_cbm
from dynalens.concepts.models.posthoc import (
    ConceptBank,
    PosthocCBM,
    fit_posthoc_cbm,
    learn_concept_bank,
)
from dynalens.concepts.models.posthoc_edit import finetune_head, prune_concepts

__all__ = [
    "ConceptBank",
    "ConceptBottleneckModel",
    "FitHistory",
    "PosthocCBM",
    "finetune_head",
    "fit_cbm",
    "fit_posthoc_cbm",
    "learn_concept_bank",
    "prune_concepts",
]
