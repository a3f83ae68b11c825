"""Reuse of what a patched run shares with the base run: the blocks before a cell's
layer, and (on causal models that continue from cached keys and values) the positions
before a cell's position.

**Prefix of blocks** (what ``start_at_layer`` does in transformer-lens). If every site of
a chunk of cells lies inside block ``l`` or later, blocks ``0..l-1`` compute for every
row what they computed in the unpatched base run (rows of a model in eval mode do not
interact). The engine records those blocks' outputs in the base forward and, while the
chunk runs, replaces their ``forward`` with a replay of the recorded outputs (the rows
the chunk stacks); only blocks ``l..`` compute. Where a site lies is checked by module
identity (its module must be a submodule of block ``l`` or later), so module-path sites
benefit too; sites outside every block, and backends that do not name their blocks
(:meth:`~dynalens.probe.interventions_sites.Backend.blocks`), run the full forward.

**Prefix of positions.** Under causal attention a write at position ``p`` changes nothing
at positions ``< p``. Where the backend can continue a run from cached keys and values
(Hugging Face GPT-2 / Llama: a ``DynamicCache``, positions from the cache length, as in
generation), a cell at ``p`` feeds positions ``p..`` only, with the base run's keys and
values of the earlier positions; replayed block outputs are cut at ``p`` alike, and the
logits of positions ``< p`` are the base run's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dynalens.probe.interventions_sites import Backend, ResidMidAccess, SiteAccess


def _modules_of(access: SiteAccess) -> list[nn.Module] | None:
    """The modules an access hooks (``None``: unknown, so no prefix reuse)."""
    if isinstance(access, ResidMidAccess):
        parts = [_modules_of(access.resid_pre), _modules_of(access.attn_out)]
        return None if any(p is None for p in parts) else [m for p in parts for m in p or []]
    module = getattr(access, "module", None)
    return [module] if isinstance(module, nn.Module) else None


def first_block(backend: Backend, sites: Sequence[str]) -> dict[str, int]:
    """For each site, the index of the earliest block it lies in (0 when it lies in none,
    or the backend does not name its blocks): the blocks before it can be replayed."""
    blocks = backend.blocks()
    if not blocks:
        return dict.fromkeys(sites, 0)
    where: dict[int, int] = {}
    for i in reversed(range(len(blocks))):  # a module shared by blocks: the earliest
        for m in blocks[i].modules():
            where[id(m)] = i
    found = {}
    for site in sites:
        modules = _modules_of(backend.access(site))
        found[site] = min((where.get(id(m), 0) for m in modules), default=0) if modules else 0
    return found


def take_rows(value: Any, b: int, rows: torch.Tensor, offset: int = 0) -> Any:
    """Every tensor in ``value`` with ``b`` rows, indexed by ``rows`` on the batch axis
    (and from position ``offset`` on along axis 1, the positions of a block's output)."""
    if isinstance(value, torch.Tensor):
        if not value.ndim or value.shape[0] != b:
            return value
        return value[rows, offset:] if offset and value.ndim > 1 else value[rows]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(take_rows(v, b, rows, offset) for v in value)
    if isinstance(value, list):
        return [take_rows(v, b, rows, offset) for v in value]
    return value


@contextmanager
def replaying(
    blocks: Sequence[nn.Module],
    outputs: Sequence[Any],
    b: int,
    rows: torch.Tensor,
    offset: int = 0,
) -> Iterator[None]:
    """Blocks ``0..len(outputs)-1`` return their recorded outputs (rows ``rows`` of the
    base run, positions from ``offset``) instead of computing; their own ``forward`` is
    restored on exit."""
    saved = []
    try:
        for block, out in zip(blocks, outputs):
            taken = take_rows(out, b, rows, offset)
            saved.append((block, block.__dict__.get("forward")))

            def replay(*args: Any, _out: Any = taken, **kwargs: Any) -> Any:
                return _out

            # the instance dict, past any __setattr__ a wrapper (transformer-lens) defines
            block.__dict__["forward"] = replay
        yield
    finally:
        for block, old in saved:
            if old is None:
                block.__dict__.pop("forward", None)
            else:
                block.__dict__["forward"] = old
