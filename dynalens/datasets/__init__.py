"""Small built-in tasks for demos, tests and paper reproductions (no downloads)."""

from dynalens.datasets.mi_tasks import binned_layer_task
from dynalens.datasets.twelve_bit import load_var_u, twelve_bit_task

__all__ = ["binned_layer_task", "load_var_u", "twelve_bit_task"]
