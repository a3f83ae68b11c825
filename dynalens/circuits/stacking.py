"""The batched patching engine: cells stacked on the batch axis, one masked write per
site, and reuse of the unchanged prefix.

**Stacking.** A chunk of ``C`` cells runs the base input repeated ``C`` times: row
``c·B + i`` is example ``i`` under cell ``c``. At every site the chunk touches, the
activation ``a`` (``[C·B, ...]``) is viewed as ``[C, B, ...]`` and written once,

    a ← where(M, s, a),    M[c, ·, p, h] = 1  iff cell c patches position p and head h,

with ``s`` the source ``[B or 1, ...]`` (a cached run, a mean, or zeros) broadcast over
cells: exactly what each cell's ``Intervention(site, s, positions=p, heads=h)`` does to
its own rows (:mod:`dynalens.probe.interventions`), with one tensor op instead of one
Python index per cell. Rows of a model in eval mode do not interact, so each cell's
logits are those of its own patched run.

**Prefix reuse** (what ``start_at_layer`` does in transformer-lens). If every site of a
chunk lies inside block ``l`` or later, blocks ``0..l-1`` compute for every row what they
computed in the unpatched base run. The engine records those blocks' outputs once, in
one base forward, and while the chunk runs replaces their ``forward`` with a replay of
the recorded outputs (repeated over cells); only blocks ``l..`` compute on the stacked
rows. Where a site lies is checked by module identity (the site's module must be a
submodule of block ``l`` or later), so explicit module-path sites benefit too; sites
outside every block, and backends that do not name their blocks, run the full forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dynalens.circuits.results import Cell
from dynalens.errors import InvalidInputError
from dynalens.probe.interventions_sites import (
    Backend,
    EditingHooks,
    ResidMidAccess,
    SiteAccess,
)

Source = torch.Tensor | str


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


def _repeat_rows(value: Any, b: int, times: int) -> Any:
    """Every tensor in ``value`` with ``b`` rows, repeated ``times`` times on the batch axis."""
    if isinstance(value, torch.Tensor):
        if value.ndim and value.shape[0] == b:
            return value.repeat(times, *([1] * (value.ndim - 1)))
        return value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_repeat_rows(v, b, times) for v in value)
    if isinstance(value, list):
        return [_repeat_rows(v, b, times) for v in value]
    return value


def record_prefix(
    model: nn.Module, base: torch.Tensor, backend: Backend, upto: int
) -> tuple[Any, list[Any]]:
    """One forward of ``base``: its output and the outputs of blocks ``0..upto-1``."""
    blocks = backend.blocks() or []
    outputs: list[Any] = [None] * upto
    hooks = EditingHooks()
    with hooks:
        for i in range(min(upto, len(blocks))):

            def keep(mod: nn.Module, args: tuple[Any, ...], out: Any, i: int = i) -> None:
                outputs[i] = out

            hooks.on_forward(blocks[i], keep)
        result = model(base, **backend.forward_kwargs())
    return result, outputs


@contextmanager
def replaying(
    blocks: Sequence[nn.Module], outputs: Sequence[Any], b: int, times: int
) -> Iterator[None]:
    """Blocks ``0..len(outputs)-1`` return their recorded outputs, rows repeated
    ``times`` times, instead of computing; their own ``forward`` is restored on exit."""
    saved = []
    try:
        for block, out in zip(blocks, outputs):
            stacked = _repeat_rows(out, b, times)
            saved.append((block, block.__dict__.get("forward")))

            def replay(*args: Any, _out: Any = stacked, **kwargs: Any) -> Any:
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


def _index_list(values: Sequence[int | None]) -> torch.Tensor:
    return torch.tensor([-1 if v is None else v for v in values])


def _axis_mask(chosen: torch.Tensor, size: int, what: str, site: str) -> torch.Tensor:
    """``[C, size]``: cell ``c`` selects entry ``j`` (``-1``: all entries)."""
    bad = chosen[(chosen >= size) | (chosen < -1)]
    if bad.numel():
        raise InvalidInputError(
            f"{what} {sorted(set(bad.tolist()))} out of range at site {site!r}, which has "
            f"{size} {what} (0..{size - 1})."
        )
    return (chosen[:, None] == torch.arange(size)) | (chosen[:, None] == -1)


def stacked_edit(
    site: str,
    access: SiteAccess,
    source: Source,
    cells: Sequence[tuple[int, int | None, int | None]],
    n_cells: int,
) -> Any:
    """The edit of one site for a chunk of ``n_cells`` stacked cells; ``cells`` lists
    ``(index in chunk, position, head)`` of the chunk's cells at this site."""
    which = torch.tensor([c for c, _, _ in cells])
    positions = _index_list([p for _, p, _ in cells])
    heads = _index_list([h for _, _, h in cells])

    def edit(act: torch.Tensor) -> torch.Tensor:
        axes = access.axes(act.ndim)
        mask = torch.ones(len(cells), *([1] * act.ndim), dtype=torch.bool)
        for what, names, chosen in (
            ("positions", ("pos", "query_pos"), positions),
            ("heads", ("head",), heads),
        ):
            dims = [i for i, a in enumerate(axes) if a in names]
            if not dims:
                if bool((chosen >= 0).any()):
                    raise InvalidInputError(
                        f"{what} were given, but site {site!r} has axes {axes} and no "
                        f"{names[0]!r} axis; drop {what}= or choose a site with {names[0]}s."
                    )
                continue
            d = dims[0]
            view = [len(cells)] + [1] * act.ndim
            view[d + 1] = act.shape[d]
            mask = mask & _axis_mask(chosen, act.shape[d], what, site).view(view)
        full = torch.zeros(n_cells, *mask.shape[1:], dtype=torch.bool)
        full[which] = mask
        b = act.shape[0] // n_cells
        rows = act.view(n_cells, b, *act.shape[1:])
        if isinstance(source, str):
            src = torch.zeros((), dtype=act.dtype, device=act.device)
        else:
            src = source.to(device=act.device, dtype=act.dtype)
            if src.ndim != act.ndim or not _broadcasts(src.shape, (b, *act.shape[1:])):
                raise InvalidInputError(
                    f"source for site {site!r} has shape {tuple(src.shape)}, which does not "
                    f"fit the activation {(b, *act.shape[1:])} (batch equal or 1, other axes "
                    "equal or 1). Clean and corrupt inputs must have the same shape."
                )
        return torch.where(full.to(act.device), src, rows).view(act.shape)

    return edit


def _broadcasts(src: torch.Size, target: tuple[int, ...]) -> bool:
    return all(s in (1, t) for s, t in zip(src, target))


def attach_cells(
    hooks: EditingHooks,
    backend: Backend,
    chunk: Sequence[Cell],
    sources: dict[str, Source],
) -> None:
    """Attach one stacked edit per site of ``chunk`` to ``hooks``."""
    by_site: dict[str, list[tuple[int, int | None, int | None]]] = {}
    for i, cell in enumerate(chunk):
        by_site.setdefault(cell.site, []).append((i, cell.position, cell.head))
    for site, cells in by_site.items():
        access = backend.access(site)
        access.attach(hooks, stacked_edit(site, access, sources[site], cells, len(chunk)))
