"""Small built-in tasks for demos, tests and paper reproductions (no downloads)."""

from dynalens.datasets.twelve_bit import load_var_u, twelve_bit_task

__all__ = ["load_var_u", "twelve_bit_task"]
