"""Storage dtypes. zarr-python 3.1 has no bfloat16, so bf16 is stored as a ``uint16``
view with its logical dtype in the array's attributes and read back as bfloat16
(``ml_dtypes.bfloat16`` in numpy, ``torch.bfloat16`` in torch)."""

from __future__ import annotations

import numpy as np
import torch

from dynalens._validation import check_option

STORAGE_DTYPES = ("float32", "float16", "bfloat16", "float64")
_TORCH = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a storage-dtype name stands for (validated)."""
    return _TORCH[check_option("dtype", name, STORAGE_DTYPES)]


def physical_dtype(logical: str) -> np.dtype:
    """The numpy dtype written to disk for a logical dtype name."""
    return np.dtype(np.uint16) if logical == "bfloat16" else np.dtype(logical)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as the array written to disk (bf16 as its uint16 bit pattern)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def from_disk(arr: np.ndarray, logical: str, *, as_torch: bool) -> np.ndarray | torch.Tensor:
    """Turn stored data back into its logical dtype, as numpy or torch."""
    if logical == "bfloat16":
        if as_torch:
            return torch.from_numpy(np.ascontiguousarray(arr).view(np.int16)).view(torch.bfloat16)
        import ml_dtypes

        return arr.view(ml_dtypes.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(arr)) if as_torch else arr
