"""Checks of one recorded step, kept out of the Recorder's hot path: the sample ids a
user passed, the live-batch records of a ragged (last) batch, gradients that never
arrived, and a model that holds no values."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens.errors import InvalidInputError
from dynalens.probe import layout
from dynalens.probe.capture import StepBuffer, batch_dim

_LIVE = tuple(k + "/" for k in (layout.ACTIVATIONS, layout.GRADIENTS, layout.INPUTS))


def check_not_meta(model: nn.Module) -> None:
    """Refuse a model whose parameters or buffers live on the meta device."""
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise InvalidInputError(
            f"the model has {len(meta)} parameter(s) or buffer(s) on the meta device (e.g. "
            f"{meta[0]!r}): they hold no values, so there is nothing to record. Materialise "
            "the model first (model.to_empty(device='cpu') and load its weights)."
        )


def check_sample_ids(sample_ids: Any, rows: int | None, step: int) -> np.ndarray:
    """``sample_ids`` as int64, one per row of the live batch (``rows``, when known)."""
    if isinstance(sample_ids, torch.Tensor):
        sample_ids = sample_ids.detach().cpu().numpy()
    ids = np.asarray(sample_ids)
    if ids.dtype.kind not in "iu":
        raise InvalidInputError(
            f"sample_ids at step {step} must be integers (the data-set indices of the "
            f"batch's rows); got an array of dtype {ids.dtype}. Pass e.g. the index tensor "
            "your Dataset / sampler yields."
        )
    ids = ids.reshape(-1)
    if rows is not None and len(ids) != rows:
        raise InvalidInputError(
            f"sample_ids at step {step} has {len(ids)} entries but the recorded batch has "
            f"{rows} rows; pass one data-set index per row of the batch."
        )
    return ids.astype(np.int64)


def drop_ragged(
    buf: StepBuffer, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]
) -> dict[str, int]:
    """Remove from ``buf`` the live-batch records of sites whose batch size differs from
    their first record's (other axes equal), and of sites whose batch was smaller than
    ``rows=``. Returns ``{site: rows of its batch}`` for the sites dropped."""
    dropped = dict(buf.ragged)
    for path, (t, attrs) in list(buf.tensors.items()):
        seen = shapes.get(path)
        if seen is None or seen[0] == tuple(t.shape) or len(seen[0]) != t.ndim:
            continue
        dim = batch_dim(tuple(attrs.get("axes", ())), t.ndim)
        if all(seen[0][d] == t.shape[d] for d in range(t.ndim) if d != dim):
            dropped[attrs["site"]] = int(t.shape[dim])
    if dropped:
        buf.tensors = {
            p: item
            for p, item in buf.tensors.items()
            if item[1]["site"] not in dropped or not p.startswith(_LIVE)
        }
    return dropped


def ragged_message(step: int, sites: list[str], rows: int) -> str:
    return (
        f"step {step}: the batch of {rows} rows differs from the batch size of earlier "
        f"records of site(s) {sites} (a ragged last batch?); this step is not recorded for "
        "them, and later such steps are skipped the same way (store.steps(site) lists what "
        "was recorded). Pass rows=N (at most the smallest batch) to record every step, or "
        "use drop_last=True."
    )


def missing_gradient_message(buf: StepBuffer, step: int) -> str | None:
    """The warning for sites whose gradient was expected but never arrived, or None."""
    missing = [
        s for s in buf.grads_pending if layout.array_path(layout.GRADIENTS, s) not in buf.tensors
    ]
    if not missing:
        return None
    views = [s for s in missing if s in buf.views]
    cause = (
        f" The output of {views} is a view of another tensor (e.g. nn.Linear on a 3-d "
        "input); an in-place op after the module (`h += x`, `h.mul_(...)`) replaces the "
        "tensor the gradient hook sits on. Write it out of place (`h = h + x`)."
        if views
        else " Call rec.step() after loss.backward(), and check that the loss depends on them."
    )
    return (
        f"no gradient reached site(s) {missing} at step {step}, so no gradient is recorded "
        f"for them at this step.{cause}"
    )
