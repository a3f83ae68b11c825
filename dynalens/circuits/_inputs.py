"""Checks shared by every circuits analysis, at the API boundary: the model is in eval
mode, clean and corrupt inputs are token-aligned pairs, and the common parameters
(mode, ig_steps, max_rows) are in range."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dynalens._validation import check_int, check_option
from dynalens.errors import InvalidInputError
from dynalens.probe.interventions import check_eval_mode

PAIR_MODES = ("denoising", "noising")


def check_pair(model: nn.Module, clean: torch.Tensor, corrupt: torch.Tensor | None) -> None:
    """``model`` in eval mode and ``corrupt`` (when given) shaped like ``clean``."""
    check_eval_mode(model)
    if corrupt is not None and corrupt.shape != clean.shape:
        raise InvalidInputError(
            f"clean {tuple(clean.shape)} and corrupt {tuple(corrupt.shape)} must have the same "
            "shape (token-aligned pairs); pad or truncate them to one length."
        )


def check_pair_mode(mode: Any) -> str:
    """``"denoising"`` (base corrupt, source clean) or ``"noising"``."""
    return check_option("mode", mode, PAIR_MODES)


def check_positive(name: str, value: Any) -> int:
    """A positive integer parameter (``ig_steps``, ``max_rows``)."""
    return check_int(name, value, min=1)
