"""The batched patching engine: cells stacked on the batch axis, one masked write per
site, and only the rows a cell changes.

**Stacking.** A chunk of cells runs one forward of ``R`` rows; row ``r`` is example
``e_r`` of the base input under cell ``c_r``. At every site the chunk touches, the
activation ``a`` (``[R, ...]``) is written once,

    a ← where(M[c_r], s[e_r], a),    M[c, p, h] = 1  iff cell c patches position p, head h,

with ``s`` the source ``[B or 1, ...]`` (a cached run, a mean, or zeros): exactly what each
cell's ``Intervention(site, s, positions=p, heads=h)`` does to its own rows
(:mod:`dynalens.probe.interventions`), with one tensor op instead of one Python index per
cell. Rows of a model in eval mode do not interact, so each row's logits are those of its
own patched run (models that normalise with batch statistics in eval mode are refused).

**Changed rows only.** Where ``s`` equals the base run's activation at every entry a cell
writes (e.g. positions before the corruption, under causal attention), the patched run
of that example *is* the base run: the example is not stacked and its value is the base
run's. Only (cell, example) pairs whose write changes something are run.

**Prefix reuse** (:mod:`dynalens.circuits.prefix`): blocks before a cell's layer replay
the base run, and on causal models that continue from cached keys and values, a cell at
position ``p`` runs positions ``p..`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dynalens.circuits.metrics import Metric, check_per_example
from dynalens.circuits.prefix import first_block, replaying, take_rows
from dynalens.circuits.results import Cell
from dynalens.errors import InvalidInputError
from dynalens.probe.interventions import logits_of
from dynalens.probe.interventions_sites import Backend, EditingHooks, SiteAccess

Source = torch.Tensor | str


def check_rows_independent(model: nn.Module) -> None:
    """Refuse a model whose eval-mode forward mixes the rows of a batch (batch norm
    without running statistics normalises with the batch's own): stacked cells and
    replayed rows would then change each other's results."""
    coupled = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None
    ]
    if coupled:
        raise InvalidInputError(
            f"modules {coupled} normalise with batch statistics even in eval mode "
            "(track_running_stats=False), so the rows of a batch are not independent and "
            "batched patching would be wrong; use running statistics or patch one "
            "example per forward with dynalens.probe.interventions.intervene."
        )


@dataclass
class BaseRun:
    """One unpatched forward: its logits, the outputs of the first blocks (to replay)
    and the activations at the swept sites (to find the cells that change nothing)."""

    logits: torch.Tensor
    blocks: list[Any]
    acts: dict[str, torch.Tensor]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def split_run(run: BaseRun, b: int) -> tuple[BaseRun, BaseRun]:
    """A run of two inputs stacked on the batch axis (``b`` rows each) as two runs."""
    first, second = torch.arange(b), torch.arange(b, 2 * b)
    return tuple(  # type: ignore[return-value]
        BaseRun(
            run.logits[rows],
            [take_rows(out, 2 * b, rows) for out in run.blocks],
            {k: v[rows] for k, v in run.acts.items()},
            None if run.kv is None else [(k[rows], v[rows]) for k, v in run.kv],
        )
        for rows in (first, second)
    )


@torch.no_grad()
def record_run(
    model: nn.Module, inputs: torch.Tensor, backend: Backend, sites: Sequence[str], upto: int
) -> BaseRun:
    """One forward of ``inputs`` keeping its logits, the outputs of blocks ``0..upto-1``
    and the activations at ``sites`` (in their declared axes)."""
    blocks = backend.blocks() or []
    outputs: list[Any] = [None] * min(upto, len(blocks))
    acts: dict[str, torch.Tensor] = {}
    hooks = EditingHooks()
    with hooks:
        for i in range(len(outputs)):

            def keep_block(mod: nn.Module, args: tuple[Any, ...], out: Any, i: int = i) -> None:
                outputs[i] = out

            hooks.on_forward(blocks[i], keep_block)
        for site in dict.fromkeys(sites):

            def keep(act: torch.Tensor, site: str = site) -> torch.Tensor:
                acts[site] = act.detach().clone()
                return act

            backend.access(site).attach(hooks, keep)
        kwargs = backend.cache_forward_kwargs()
        output = model(inputs, **(backend.forward_kwargs() if kwargs is None else kwargs))
        logits = logits_of(output)
    missing = [s for s in sites if s not in acts]
    if missing:
        raise InvalidInputError(
            f"sites {missing} did not run in the forward pass of {type(model).__name__}."
        )
    return BaseRun(logits, outputs, acts, backend.keys_values(output))


class SiteCells:
    """The cells at one site: ``[cells, size]`` selections of positions and heads, as
    masks broadcastable against the site's activation (batch axis first)."""

    def __init__(self, site: str, access: SiteAccess, cells: Sequence[Cell]) -> None:
        self.site, self.access = site, access
        self.positions = torch.tensor([-1 if c.position is None else c.position for c in cells])
        self.heads = torch.tensor([-1 if c.head is None else c.head for c in cells])

    def pos_dim(self, ndim: int) -> int | None:
        axes = self.access.axes(ndim)
        return next((i for i, a in enumerate(axes) if a in ("pos", "query_pos")), None)

    def masks(self, shape: torch.Size, offset: int = 0) -> torch.Tensor:
        """``[cells, 1, ...]`` bool: the entries each cell patches in one example whose
        positions start at ``offset``."""
        axes = self.access.axes(len(shape))
        mask = torch.ones(len(self.positions), *([1] * len(shape)), dtype=torch.bool)
        local = torch.where(self.positions >= 0, self.positions - offset, self.positions)
        local[(self.positions >= 0) & (local < 0)] = -2  # before the offset: nothing
        for what, names, chosen in (
            ("positions", ("pos", "query_pos"), local),
            ("heads", ("head",), self.heads),
        ):
            dims = [i for i, a in enumerate(axes) if a in names]
            if not dims:
                if bool((chosen >= 0).any()):
                    raise InvalidInputError(
                        f"{what} were given, but site {self.site!r} has axes {axes} and no "
                        f"{names[0]!r} axis; drop {what}= or choose a site with {names[0]}s."
                    )
                continue
            size = shape[dims[0]]
            bad = chosen[chosen >= size]
            if bad.numel():
                raise InvalidInputError(
                    f"{what} {sorted(set(bad.tolist()))} out of range at site {self.site!r}, "
                    f"which has {size} {what} (0..{size - 1})."
                )
            view = [len(chosen)] + [1] * len(shape)
            view[dims[0] + 1] = size
            selected = (chosen[:, None] == torch.arange(size)) | (chosen[:, None] == -1)
            mask = mask & selected.view(view)
        return mask


def source_tensor(source: Source, site: str, like: torch.Tensor, batch: int) -> torch.Tensor:
    """The source of a site as a tensor broadcastable to ``like`` with ``batch`` rows."""
    if isinstance(source, str):
        return torch.zeros([1] * like.ndim, dtype=like.dtype, device=like.device)
    src = source.to(device=like.device, dtype=like.dtype)
    target = (batch, *like.shape[1:])
    if src.ndim != like.ndim or not all(s in (1, t) for s, t in zip(src.shape, target)):
        raise InvalidInputError(
            f"source for site {site!r} has shape {tuple(src.shape)}, which does not fit the "
            f"activation {target} (batch equal or 1, other axes equal or 1). "
            "Clean and corrupt inputs must have the same shape."
        )
    return src


def changed_rows(group: SiteCells, source: Source, base_act: torch.Tensor) -> torch.Tensor:
    """``[cells, batch]`` bool: whether the cell writes a value different from the base
    run's into that example. Where it does not, the patched run *is* the base run."""
    src = source_tensor(source, group.site, base_act, base_act.shape[0])
    differs = (src != base_act) & ~(src.isnan() & base_act.isnan())
    mask = group.masks(base_act.shape)  # [cells, 1, ...]
    for d in range(1, differs.ndim):  # axes no cell selects on: any entry counts
        if mask.shape[d + 1] == 1:
            differs = differs.any(d, keepdim=True)
    return (differs.unsqueeze(0) & mask).flatten(2).any(-1)


def stacked_edit(
    group: SiteCells,
    source: Source,
    cell_of_row: torch.Tensor,
    example_of_row: torch.Tensor,
    batch: int,
    offset: int = 0,
) -> Any:
    """The edit of one site for stacked rows: row ``r`` is example ``example_of_row[r]``
    under the site's cell ``cell_of_row[r]`` (``-1``: a cell at another site)."""

    def edit(act: torch.Tensor) -> torch.Tensor:
        raw = source
        d = group.pos_dim(act.ndim)
        if offset and isinstance(raw, torch.Tensor) and d is not None and raw.shape[d] > 1:
            raw = raw.narrow(d, offset, raw.shape[d] - offset)
        src = source_tensor(raw, group.site, act, batch)
        if src.ndim and src.shape[0] != 1:
            src = src[example_of_row]
        masks = group.masks(act.shape, offset)[:, 0]  # [cells, ...]
        keep = torch.cat([torch.zeros_like(masks[:1]), masks])[cell_of_row + 1]
        return torch.where(keep.to(act.device), src, act)

    return edit


def run_stacked(
    model: nn.Module,
    cells: Sequence[Cell],
    base: torch.Tensor,
    sources: dict[str, Source],
    metric: Metric,
    *,
    backend: Backend,
    max_rows: int,
    reuse_prefix: bool = True,
    base_run: BaseRun | None = None,
) -> torch.Tensor:
    """Per-example metric values ``[cells, batch]``; see the module docstring."""
    check_rows_independent(model)
    b = base.shape[0]
    sites = list(dict.fromkeys(c.site for c in cells))
    starts = first_block(backend, sites) if reuse_prefix else dict.fromkeys(sites, 0)
    deepest = max(starts.values(), default=0)
    if base_run is None or len(base_run.blocks) < deepest or set(sites) - set(base_run.acts):
        base_run = record_run(model, base, backend, sites, deepest)
    plan = _Plan(model, list(cells), base, sources, metric, backend, base_run)
    suffix = reuse_prefix and base_run.kv is not None
    for site in sites:
        index = [i for i, c in enumerate(cells) if c.site == site]
        plan.groups[site] = SiteCells(site, backend.access(site), [cells[i] for i in index])
        plan.slot[index] = torch.arange(len(index))
        plan.changed[index] = changed_rows(plan.groups[site], sources[site], base_run.acts[site])
    base_values = check_per_example(metric(base_run.logits), b).to(torch.float64)
    plan.out = base_values.expand(len(cells), b).clone()
    by_start: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(cells):
        if bool(plan.changed[i].any()):
            offset = c.position if suffix and c.position else 0
            by_start.setdefault((starts[c.site], offset), []).append(i)
    blocks = backend.blocks() or []
    for (start_block, offset), members in sorted(by_start.items()):
        chunk: list[int] = []
        rows = 0
        for n, i in enumerate(members):
            chunk.append(i)
            rows += int(plan.changed[i].sum())
            nxt = int(plan.changed[members[n + 1]].sum()) if n + 1 < len(members) else 0
            if n + 1 == len(members) or rows + nxt > max_rows:
                plan.run_chunk(chunk, blocks[:start_block], offset)
                chunk, rows = [], 0
    return plan.out


@dataclass
class _Plan:
    """The state of one stacked sweep: which examples each cell changes, the cells of
    each site, and the metric values written so far."""

    model: nn.Module
    cells: list[Cell]
    base: torch.Tensor
    sources: dict[str, Source]
    metric: Metric
    backend: Backend
    base_run: BaseRun
    groups: dict[str, SiteCells] = field(default_factory=dict)
    changed: torch.Tensor = field(init=False)  # [cells, batch] bool
    slot: torch.Tensor = field(init=False)  # index of a cell among its site's cells
    out: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        n, b = len(self.cells), self.base.shape[0]
        self.changed = torch.zeros(n, b, dtype=torch.bool)
        self.slot = torch.empty(n, dtype=torch.long)

    def run_chunk(self, chunk: list[int], replayed: Sequence[nn.Module], offset: int) -> None:
        """One forward of the changed examples of ``chunk``'s cells, blocks ``replayed``
        replaying the base run and, with ``offset``, positions before it continued from
        the base run's keys and values; writes the cells' metric values."""
        b, run, cells = self.base.shape[0], self.base_run, self.cells
        examples = [self.changed[i].nonzero()[:, 0] for i in chunk]
        example_of_row = torch.cat(examples)
        owner = torch.cat([torch.full((len(e),), k) for k, e in enumerate(examples)])
        inputs = self.base[example_of_row]
        kwargs = self.backend.forward_kwargs()
        if offset:
            assert run.kv is not None
            inputs = inputs[:, offset:]
            kwargs = self.backend.continue_kwargs(run.kv, example_of_row, offset)
        hooks = EditingHooks()
        with hooks, replaying(replayed, run.blocks, b, example_of_row, offset):
            for site, group in self.groups.items():
                in_site = torch.tensor([int(self.slot[i]) if cells[i].site == site else -1
                                        for i in chunk])  # fmt: skip
                if bool((in_site >= 0).any()):
                    edit = stacked_edit(
                        group, self.sources[site], in_site[owner], example_of_row, b, offset
                    )
                    group.access.attach(hooks, edit)
            logits = logits_of(self.model(inputs, **kwargs))
        start = 0
        for k, i in enumerate(chunk):
            n = len(examples[k])
            if n == b and not offset:  # every example changed: the rows are in order
                full = logits[start : start + n]
            else:  # the other examples and earlier positions are the base run's
                full = run.logits.clone()
                full[examples[k], offset:] = logits[start : start + n]
            start += n
            self.out[i] = check_per_example(self.metric(full), b)
