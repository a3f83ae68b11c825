"""Shared plumbing of the kernel modules: input conversion, backend choice, work models.

Backends (the ``backend=`` argument of every op):

``"auto"``
    Triton when triton imports, every tensor is on CUDA and the environment variable
    ``DYNALENS_DISABLE_TRITON`` is unset (or ``0``/empty); otherwise ``"torch"``.
``"reference"``
    Plain torch in float64, written for clarity; small inputs only (tests).
``"torch"``
    The CPU fallback: chunked torch, or a KD-tree for low-dimensional neighbour queries.
    Runs on any device.
``"triton"``
    The Triton kernel, even when ``DYNALENS_DISABLE_TRITON`` is set (an explicit choice
    wins over the environment, which only steers ``"auto"``). Needs CUDA tensors, or CPU
    tensors with ``TRITON_INTERPRET=1`` exported before triton was first imported (the
    Triton interpreter, used by the test suite).

Nothing here imports triton at module import time; the ``_triton_*`` modules are imported
by :func:`triton_module` on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch

from dynalens._optional import require
from dynalens._validation import check_option
from dynalens.errors import InvalidInputError, InvalidParameterError

Backend = Literal["auto", "reference", "torch", "triton"]
BACKENDS = ("auto", "reference", "torch", "triton")

#: Inputs of these dtypes are computed in float32 (or float64 for float64 inputs).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Work:
    """Work model of one call: minimal bytes moved to/from memory, flops, exponentials.

    ``floor_s`` turns it into a lower bound on the run time given hardware ceilings
    (bytes/s, flop/s, exp/s); the bound is the largest of the three terms (roofline).
    """

    bytes: float
    flops: float
    exps: float = 0.0

    def floor_s(self, bandwidth: float, flop_rate: float, exp_rate: float) -> float:
        """Largest of the memory, arithmetic and special-function terms, in seconds."""
        terms = [self.bytes / bandwidth, self.flops / flop_rate]
        if self.exps:
            terms.append(self.exps / exp_rate)
        return max(terms)


def as_tensor(name: str, x: Any, *, ndim: tuple[int, ...] = (2,)) -> torch.Tensor:
    """A floating torch tensor from a tensor or numpy array, with a checked rank.

    Integer and bool inputs are converted to float32; numpy arrays are wrapped without a
    copy where possible.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise InvalidInputError(
            f"{name} must be a torch.Tensor or numpy array; got {type(x).__name__}. "
            "Wrap it with torch.as_tensor(...) first."
        )
    if x.dtype not in FLOAT_DTYPES:
        if x.is_complex():
            raise InvalidInputError(f"{name} must be real; got dtype {x.dtype}.")
        x = x.to(torch.float32)
    if x.ndim not in ndim:
        want = " or ".join(f"{k}-D" for k in ndim)
        raise InvalidInputError(
            f"{name} must be {want}; got shape {tuple(x.shape)}. "
            "Flatten the feature axes first, e.g. x.reshape(len(x), -1)."
        )
    return x.detach()


def compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, otherwise float32 (bf16/fp16 are upcast)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device; returns it."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        shown = ", ".join(f"{k} on {v}" for k, v in devices.items())
        raise InvalidInputError(f"inputs must be on one device; got {shown}. Move them with .to().")
    return next(iter(devices.values()))


def triton_disabled() -> bool:
    """True when ``DYNALENS_DISABLE_TRITON`` is set to anything but ``""``/``"0"``."""
    return os.environ.get("DYNALENS_DISABLE_TRITON", "") not in ("", "0")


def triton_available() -> bool:
    """True when triton can be imported (does not import it if it is already missing)."""
    if "triton" in sys.modules:
        return True
    return importlib.util.find_spec("triton") is not None


def interpreter_active() -> bool:
    """True when triton runs (or will run) under ``TRITON_INTERPRET=1`` in this process."""
    if os.environ.get("TRITON_INTERPRET", "") != "1":
        return False
    if "triton.language.standard" not in sys.modules:
        return True
    std = sys.modules["triton.language.standard"]
    return type(std.sum).__name__ == "InterpretedFunction"


def choose_backend(backend: str, *tensors: torch.Tensor) -> str:
    """Resolve ``backend`` to ``"reference"``, ``"torch"`` or ``"triton"`` (see module doc)."""
    check_option("backend", backend, BACKENDS)
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        if on_cuda and not triton_disabled() and triton_available():
            return "triton"
        return "torch"
    if backend == "triton":
        require("triton", "backend='triton'")
        if not on_cuda and not interpreter_active():
            raise InvalidParameterError(
                "backend='triton' needs CUDA tensors; got tensors on "
                f"{sorted({str(t.device) for t in tensors})}. Move them with .cuda(), use "
                "backend='torch', or (tests only) export TRITON_INTERPRET=1 before triton is "
                "first imported to run the kernel in Triton's CPU interpreter."
            )
    return backend


def triton_module(name: str) -> ModuleType:
    """Import ``dynalens.kernels._triton_<name>`` (and triton) on first use."""
    require("triton", f"the Triton kernel of {name}")
    return importlib.import_module(f"dynalens.kernels._triton_{name}")


def interpret_prune(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """``early_config_prune`` for ``triton.autotune``: one config under the interpreter.

    The interpreter has no driver to benchmark with, so autotuning over several configs
    fails there ("0 active drivers"); the first config is the one sized for tests.
    """
    return configs[:1] if interpreter_active() else configs


def next_pow2(v: int) -> int:
    """Smallest power of two >= v (Triton block sizes must be powers of two)."""
    return 1 << max(0, int(v) - 1).bit_length()
