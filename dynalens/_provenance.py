"""Where a reproduction ran: the machine facts written beside its results."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def machine(threads: int = 1) -> dict[str, Any]:
    """Platform, Python, torch, the torch threads the run used and the CPU count."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads,
        "cpu_count": os.cpu_count(),
    }
