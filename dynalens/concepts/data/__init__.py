"""Synthetic concept data with a known task rule: tabular and image variants."""

from __future__ import annotations

from dynalens.concepts.data.digits import DigitConcepts, load_digit_concepts
from dynalens.concepts.data.factors import CONCEPT_NAMES, GROUPS, ConceptData, Rule
from dynalens.concepts.data.multi_shapes import make_multi_shapes
from dynalens.concepts.data.shapes import make_shapes
from dynalens.concepts.data.soft import soft_concepts
from dynalens.concepts.data.tabular import make_tabular_concepts

__all__ = [
    "CONCEPT_NAMES",
    "GROUPS",
    "ConceptData",
    "DigitConcepts",
    "Rule",
    "load_digit_concepts",
    "make_multi_shapes",
    "make_shapes",
    "make_tabular_concepts",
    "soft_concepts",
]
