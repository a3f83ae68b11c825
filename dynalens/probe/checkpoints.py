"""Model checkpoints as records: the ``state_dict()`` at scheduled steps, stored like
every record (one checksummed chunk per tensor per step, committed with the step's
record), so a crash keeps every committed checkpoint and loses none half-written.

Layout: ``rank0/checkpoints/<state_dict key>``, one record per checkpointed step, each
tensor in its own dtype (bfloat16 as its uint16 bits; 0-d buffers such as BatchNorm's
``num_batches_tracked`` stored with shape (1,) and their shape in the attributes).
The checkpoint of step ``s`` holds the parameters the training batch of ``s`` saw
(before update ``s``), the same parameters as the probe activations of ``s``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens.probe.dtypes import to_numpy

CHECKPOINTS = "checkpoints"


def checkpoint_path(key: str) -> str:
    """The array path of state_dict entry ``key`` inside a rank group."""
    return f"{CHECKPOINTS}/{key}"


def checkpoint_arrays(model: nn.Module) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """The model's ``state_dict()`` as detached CPU copies, ready for the writer."""
    out = {}
    for key, t in model.state_dict().items():
        copy = t.detach().to("cpu", copy=True)
        logical = "bfloat16" if copy.dtype == torch.bfloat16 else str(to_numpy(copy).dtype)
        attrs = {"shape": list(copy.shape), "logical_dtype": logical, "key": key}
        out[checkpoint_path(key)] = (to_numpy(copy.reshape(-1) if copy.ndim == 0 else copy), attrs)
    return out
