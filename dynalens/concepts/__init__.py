"""Concept bottlenecks: synthetic concept data and concept bottleneck models.

Metrics live in :mod:`dynalens.estimators.concepts`; this package holds what they are
tested on and, in later releases, the models they measure.
"""

from __future__ import annotations

from dynalens.concepts.data import (
    CONCEPT_NAMES,
    GROUPS,
    ConceptData,
    DigitConcepts,
    Rule,
    load_digit_concepts,
    make_multi_shapes,
    make_shapes,
    make_tabular_concepts,
    soft_concepts,
)
from dynalens.concepts.models import ConceptBottleneckModel, FitHistory, fit_cbm

__all__ = [
    "CONCEPT_NAMES",
    "GROUPS",
    "ConceptBottleneckModel",
    "ConceptData",
    "DigitConcepts",
    "FitHistory",
    "Rule",
    "fit_cbm",
    "load_digit_concepts",
    "make_multi_shapes",
    "make_shapes",
    "make_tabular_concepts",
    "soft_concepts",
]
