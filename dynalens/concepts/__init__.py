"""Concept bottlenecks: synthetic concept data (and, later, concept bottleneck models).

Metrics live in :mod:`dynalens.estimators.concepts`; this package holds what they are
tested on and, in later releases, the models they measure.
"""

from __future__ import annotations

from dynalens.concepts.data import (
    CONCEPT_NAMES,
    GROUPS,
    ConceptData,
    Rule,
    make_tabular_concepts,
    soft_concepts,
)

__all__ = [
    "CONCEPT_NAMES",
    "GROUPS",
    "ConceptData",
    "Rule",
    "make_tabular_concepts",
    "soft_concepts",
]
