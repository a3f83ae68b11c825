"""Activation patching sweeps over layers x positions x components, batched.

Resample patching (Vig et al. 2020; Meng et al. 2022; Wang et al. 2022): with clean
input ``x`` and token-aligned corrupt ``x′``, *denoising* runs ``x′`` with a cell's
activation ``a_s(x)`` put in (is the cell sufficient?), *noising* runs ``x`` with
``a_s(x′)`` put in (is it necessary?) (Heimersheim & Nanda 2024). Ablations run ``x``
with the cell set to its mean over a reference set (per position) or to zero.

The batched engine stacks cells on the batch axis: a chunk of ``C`` cells runs one
forward on the base input repeated ``C`` times (``C·B`` rows), and the intervention of
cell ``c`` writes only rows ``[c·B, (c+1)·B)``. Rows of a model in eval mode do not
interact, so each cell's logits are those of its own patched run; chunks hold at most
``max_rows`` rows (activation memory grows linearly in rows: that is the memory bound).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dynalens.circuits._inputs import check_pair, check_positive
from dynalens.circuits.metrics import Metric, check_per_example
from dynalens.circuits.prefix import first_block
from dynalens.circuits.results import HEAD_COMPONENTS, Cell, PatchingResult
from dynalens.circuits.stacking import record_run, run_stacked, split_run
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.probe.interventions import (
    check_eval_mode,
    mean_activation,
    record_activations,
)
from dynalens.probe.interventions_sites import Backend, detect_backend

MODES = ("denoising", "noising", "mean", "zero")


def _positions(positions: str | Sequence[int], n_pos: int) -> list[int | None]:
    if positions == "all":
        return [None]
    if positions == "each":
        return list(range(n_pos))
    if isinstance(positions, str):
        raise InvalidParameterError(
            f"positions must be 'each', 'all' or a list of ints; got {positions!r}."
        )
    bad = [p for p in positions if not -n_pos <= p < n_pos]
    if bad:
        raise InvalidInputError(
            f"positions {bad} out of range for inputs of {n_pos} positions (0..{n_pos - 1})."
        )
    return [p % n_pos for p in positions]


def make_cells(
    backend: Backend,
    n_pos: int,
    components: Sequence[str] = ("resid_pre",),
    *,
    layers: Sequence[int] | None = None,
    positions: str | Sequence[int] = "each",
    heads: Sequence[int] | None = None,
    sites: Sequence[str] | None = None,
) -> list[Cell]:
    """The cells of a sweep: components x layers x positions (x heads for per-head
    components), or, with ``sites``, those sites (layer = index in the list)."""
    pos = _positions(positions, n_pos)
    if sites is not None:
        for s in sites:
            backend.access(s)  # SiteNotFoundError with close matches
        return [Cell(s, i, s, p) for i, s in enumerate(sites) for p in pos]
    cells: list[Cell] = []
    # a backend without layers gets layer 0 asked, so component_site says what to do
    all_layers = range(backend.n_layers) if backend.n_layers is not None else range(1)
    for component in components:
        for layer in layers if layers is not None else all_layers:
            site = backend.component_site(component, layer)
            if component not in HEAD_COMPONENTS:
                cells.extend(Cell(component, layer, site, p) for p in pos)
                continue
            n_heads = backend.heads_of(component)
            chosen = list(range(n_heads)) if heads is None else list(heads)
            bad = [h for h in chosen if not 0 <= h < n_heads]
            if bad:
                raise InvalidInputError(
                    f"heads {bad} out of range for {component!r}, which has {n_heads} heads "
                    f"(0..{n_heads - 1})."
                )
            cells.extend(Cell(component, layer, site, p, h) for p in pos for h in chosen)
    if not cells:
        raise InvalidParameterError("the sweep has no cells; pass components or sites.")
    return cells


@torch.no_grad()
def run_cells(
    model: nn.Module,
    cells: Sequence[Cell],
    base: torch.Tensor,
    sources: dict[str, torch.Tensor | str],
    metric: Metric,
    *,
    max_rows: int = 2048,
    backend: Backend | None = None,
    reuse_prefix: bool = True,
) -> torch.Tensor:
    """Per-example metric values ``[cells, batch]`` of every cell patched into ``base``.

    ``sources[site]`` is the tensor (or ``"zero"``) each cell at that site takes its value
    from. Cells are stacked on the batch axis, at most ``max_rows`` rows per forward, and
    only the examples a cell changes are run (:mod:`dynalens.circuits.stacking`). With
    ``reuse_prefix`` the blocks before a cell's layer replay one base run and, on causal
    Hugging Face models, a cell at position ``p`` runs positions ``p..`` only
    (:mod:`dynalens.circuits.prefix`); both exact, ``False`` runs full forwards.

    Example
    -------
    >>> cells = make_cells(detect_backend(model), clean.shape[1], ["resid_pre"])
    >>> sources = record_activations(model, clean, list({c.site for c in cells}))
    >>> values = run_cells(model, cells, corrupt, sources, logit_diff(answer, wrong))
    """
    backend = backend or detect_backend(model)
    check_eval_mode(model)
    check_positive("max_rows", max_rows)
    return run_stacked(
        model,
        cells,
        base,
        sources,
        metric,
        backend=backend,
        max_rows=max_rows,
        reuse_prefix=reuse_prefix,
    )


def activation_patching(
    model: nn.Module,
    clean: torch.Tensor,
    corrupt: torch.Tensor | None,
    metric: Metric,
    *,
    components: Sequence[str] = ("resid_pre",),
    layers: Sequence[int] | None = None,
    positions: str | Sequence[int] = "each",
    heads: Sequence[int] | None = None,
    sites: Sequence[str] | None = None,
    mode: str = "denoising",
    reference: torch.Tensor | None = None,
    max_rows: int = 2048,
) -> PatchingResult:
    """Patch every cell of a sweep and return per-example metric values.

    Parameters
    ----------
    model : nn.Module in eval mode
        Any backend of :func:`~dynalens.probe.interventions_sites.detect_backend`.
    clean, corrupt : Tensor ``[batch, pos]`` (token ids) of the same shape
        ``corrupt`` may be ``None`` for ``mode="mean"`` / ``"zero"``.
    metric : callable ``logits -> [batch]``
        See :mod:`dynalens.circuits.metrics`.
    components : names of :data:`~dynalens.probe.interventions_sites.COMPONENT_SITES`
        ``resid_pre/mid/post``, ``attn_out``, ``mlp_out``, per head ``head_out`` (z),
        ``q``, ``k``, ``v``, ``pattern`` (positions index the query position).
    layers, heads : restrict the sweep (default: all).
    positions : ``"each"`` (one cell per position), ``"all"`` (one cell patching every
        position) or a list of positions.
    sites : explicit site names instead of components (any ``nn.Module`` by path).
    mode : ``"denoising"`` (run corrupt, patch clean), ``"noising"`` (run clean, patch
        corrupt), ``"mean"`` (run clean, patch the per-position mean of ``reference``,
        default the clean batch), ``"zero"`` (run clean, patch zeros).
    max_rows : rows per forward (cells x batch); lower it to bound memory.

    Raises
    ------
    InvalidInputError
        Different shapes of clean and corrupt, positions / heads out of range, a metric
        without per-example values, a model in training mode.
    SiteNotFoundError, CapabilityError
        An unknown site; a component the backend cannot reach (the message says what to
        use instead).
    """
    if mode not in MODES:
        raise InvalidParameterError(f"mode must be one of {MODES}; got {mode!r}.")
    if corrupt is None and mode in ("denoising", "noising"):
        raise InvalidInputError(f"mode={mode!r} needs a corrupt input; pass corrupt=.")
    check_pair(model, clean, corrupt)
    check_positive("max_rows", max_rows)
    if clean.ndim < 2:
        raise InvalidInputError(
            f"inputs must be [batch, pos, ...]; got shape {tuple(clean.shape)}."
        )
    backend = detect_backend(model)
    cells = make_cells(
        backend,
        clean.shape[1],
        components,
        layers=layers,
        positions=positions,
        heads=heads,
        sites=sites,
    )
    b = clean.shape[0]
    site_names = list(dict.fromkeys(c.site for c in cells))
    base = corrupt if mode == "denoising" else clean
    other = clean if mode == "denoising" else corrupt  # the pair's other input, if any
    assert base is not None
    deepest = max(first_block(backend, site_names).values(), default=0)
    # one forward of base and other stacked: metric baselines, sources and the prefix
    pair = mode in ("denoising", "noising")
    if other is None:
        base_run, other_run = record_run(model, base, backend, site_names, deepest), None
    else:
        both = torch.cat([base, other])
        base_run, other_run = split_run(record_run(model, both, backend, site_names, deepest), b)
    base_m = check_per_example(metric(base_run.logits), b)
    other_m = None if other_run is None else check_per_example(metric(other_run.logits), b)
    clean_m, corrupt_m = (other_m, base_m) if mode == "denoising" else (base_m, other_m)
    assert clean_m is not None  # denoising has a clean input, the other modes run it
    sources: dict[str, torch.Tensor | str]
    if mode == "zero":
        sources = dict.fromkeys(site_names, "zero")
    elif pair:
        assert other_run is not None
        sources = dict(other_run.acts)
    else:
        recorded = base_run.acts
        if reference is not None:
            recorded = record_activations(model, reference, site_names, backend=backend)
        sources = {k: mean_activation(v) for k, v in recorded.items()}
    values = run_stacked(
        model, cells, base, sources, metric, backend=backend, max_rows=max_rows, base_run=base_run
    )
    labels = {
        "denoising": "denoising",
        "noising": "noising",
        "mean": "mean-ablation",
        "zero": "zero-ablation",
    }
    return PatchingResult(
        cells=cells,
        values=values,
        base=base_m,
        clean=clean_m,
        corrupt=corrupt_m,
        mode=labels[mode],
    )
