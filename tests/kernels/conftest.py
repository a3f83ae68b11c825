"""Kernel tests run the Triton kernels in Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be in the environment before triton is first imported, because
``@triton.jit`` decides between interpreted and compiled functions when it decorates (also
triton's own ``tl.sum`` & co.). This file sets it as early as pytest lets a directory speak
(tests/conftest.py sets it too), and the kernel modules import triton lazily, so it works
whichever test directory runs first. If something imported triton in compiled mode before
(e.g. a module importing ``torch._dynamo`` at import time, collected before this directory)
on a machine without CUDA, the Triton cases fail with a message saying so: re-importing
triton in-process aborts the interpreter, so the fix is exporting ``TRITON_INTERPRET=1``
before pytest starts. On a GPU, export ``DYNALENS_COMPILED_TRITON=1`` (and
``TRITON_INTERPRET=0``) to test the compiled kernels instead.
"""

from __future__ import annotations

import os

if os.environ.get("DYNALENS_COMPILED_TRITON") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_USABLE = HAS_TRITON and (
    os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
)

#: The backends every comparison test runs: the fallback and, where possible, the kernel.
BACKENDS = [
    "torch",
    pytest.param(
        "triton",
        marks=pytest.mark.skipif(
            not TRITON_USABLE, reason="triton missing, or no CUDA and no TRITON_INTERPRET=1"
        ),
    ),
]


@pytest.fixture(autouse=True)
def _triton_mode_is_right(request: pytest.FixtureRequest) -> None:
    """Fail the Triton cases loudly when triton was imported before the interpreter flag."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("backend") != "triton":
        return
    from dynalens.kernels._dispatch import interpreter_active

    if not torch.cuda.is_available() and not interpreter_active():
        pytest.fail(
            "triton was imported in compiled mode before TRITON_INTERPRET=1 was set, so its "
            "kernels cannot run on CPU tensors in this process; export TRITON_INTERPRET=1 "
            "before starting pytest (or find the test module that imports triton or "
            "torch._dynamo at import time)."
        )


def assert_close_to_reference(
    out: torch.Tensor,
    ref64: torch.Tensor,
    ref32: torch.Tensor,
    *,
    factor: float = 8.0,
    extra: float = 0.0,
) -> None:
    """``|out − ref64| <= factor · |ref32 − ref64| + extra`` (max over elements).

    ``ref32`` is the reference formula evaluated in float32: its distance to the float64
    reference is the error that float32 arithmetic alone causes on these inputs, so the
    tolerance scales with the conditioning of the case. ``extra`` covers a documented
    formula difference (e.g. the expanded squared distance).
    """
    assert out.shape == ref64.shape, (out.shape, ref64.shape)
    err = (out.double() - ref64).abs().max().item()
    base = (ref32.double() - ref64).abs().max().item()
    tol = factor * base + extra + 1e-300
    assert err <= tol, f"max abs error {err:.3e} > tolerance {tol:.3e} (fp32 reference {base:.3e})"
