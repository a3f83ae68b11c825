"""circuits: activation, path and attribution patching and faithfulness on any model.

Builds on the intervention primitive of :mod:`dynalens.probe.interventions`. Importing
this package imports neither transformer-lens, transformers, pandas nor plotly.
"""

from dynalens.circuits.attribution import attribution_patching
from dynalens.circuits.edge_faithfulness import (
    edge_faithfulness,
    edge_faithfulness_curve,
    edges_among,
)
from dynalens.circuits.edges import EdgeGraph, EdgeScores, edge_attribution_patching, edge_graph
from dynalens.circuits.faithfulness import (
    Faithfulness,
    circuit_nodes,
    faithfulness,
    faithfulness_curve,
)
from dynalens.circuits.metrics import kl_to_clean, logit_diff, named_metric, probability
from dynalens.circuits.over_training import over_training
from dynalens.circuits.patching import activation_patching, make_cells, run_cells
from dynalens.circuits.path_patching import path_patching
from dynalens.circuits.reference import ReferenceConfig, ReferenceTransformer
from dynalens.circuits.results import Cell, PatchingResult

__all__ = [
    "Cell",
    "EdgeGraph",
    "EdgeScores",
    "Faithfulness",
    "PatchingResult",
    "ReferenceConfig",
    "ReferenceTransformer",
    "activation_patching",
    "attribution_patching",
    "circuit_nodes",
    "edge_attribution_patching",
    "edge_faithfulness",
    "edge_faithfulness_curve",
    "edge_graph",
    "edges_among",
    "faithfulness",
    "faithfulness_curve",
    "kl_to_clean",
    "logit_diff",
    "make_cells",
    "named_metric",
    "over_training",
    "path_patching",
    "probability",
    "run_cells",
]
