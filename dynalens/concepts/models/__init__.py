"""Concept bottleneck models."""

from __future__ import annotations

from dynalens.concepts.models.cbm import ConceptBottleneckModel, FitHistory, fit_cbm

__all__ = ["ConceptBottleneckModel", "FitHistory", "fit_cbm"]
