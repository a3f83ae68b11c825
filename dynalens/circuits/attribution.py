"""Attribution patching (Nanda 2023) and its integrated-gradients form (EAP-IG, node level).

A first-order estimate of every cell's patching effect from two forwards and one backward
instead of one forward per cell. With base input ``x_b`` (the run that is patched: the
corrupt input under denoising, the clean one under noising), source ``x_s`` and ``a_n``
the activation of node ``n`` (a cell: component, layer, position, head):

- attribution patching: ``Â(n) = Σ_{p,d ∈ n} (a_n(x_s) - a_n(x_b)) · ∂m/∂a_n |_{x_b}``
  ``≈ m(x_b | n <- a_n(x_s)) - m(x_b)`` (per example; exact where ``m`` is linear in
  ``a_n``);
- EAP-IG at node level (Hanna, Pezzelle & Belinkov 2024): the gradient is averaged along
  the straight line between the input embeddings, ``e_k = e_b + (k/m)(e_s - e_b)`` for
  ``k = 0, ..., m-1`` (pinned: ``k = 0`` is the base, so ``ig_steps=1`` is plain
  attribution patching): ``Â(n) = Σ (a_n(x_s) - a_n(x_b)) · (1/m) Σ_k ∂m/∂a_n |_{e_k}``.
  At the embedding itself this is integrated gradients (Sundararajan et al. 2017), whose
  completeness ``Â(embedding) -> m(x_s) - m(x_b)`` holds as ``m`` grows.

Results are :class:`~dynalens.circuits.results.PatchingResult` objects whose values are
the estimated patched metric ``m(x_b) + Â``, so effects, recovery, intervals, tables and
heatmaps read as for exact patching, and the two can be compared cell by cell.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from dynalens.circuits._inputs import check_pair, check_pair_mode, check_positive
from dynalens.circuits.metrics import Metric, check_per_example
from dynalens.circuits.patching import make_cells
from dynalens.circuits.results import Cell, PatchingResult
from dynalens.errors import CapabilityError, InvalidInputError
from dynalens.probe.interventions import logits_of, record_activations
from dynalens.probe.interventions_sites import (
    Backend,
    EditingHooks,
    detect_backend,
)


def embedding_site(backend: Backend) -> str:
    """The site whose output is the token embedding (interpolated by EAP-IG)."""
    candidates = {
        "transformer-lens": "hook_embed",
        "hf-gpt2": "transformer.wte",
        "hf-llama": "model.embed_tokens",
    }
    name = candidates.get(backend.kind)
    if name is None or name not in backend.site_names():
        raise CapabilityError(
            f"cannot find the token embedding of a {backend.kind} model; pass "
            "embed_site='<module path of the embedding>'."
        )
    return name


def _cell_sums(product: torch.Tensor, cell: Cell, axes: tuple[str, ...]) -> torch.Tensor:
    """``Σ`` of ``product`` over the entries of ``cell`` and all non-batch axes: ``[batch]``."""
    index: list[slice | int] = [slice(None)] * product.ndim
    if cell.position is not None:
        index[next(i for i, a in enumerate(axes) if a in ("pos", "query_pos"))] = cell.position
    if cell.head is not None:
        index[axes.index("head")] = cell.head
    picked = product[tuple(index)]
    return picked.reshape(picked.shape[0], -1).sum(1)


def constant_leaf(point: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit that puts ``point`` in as a leaf requiring grad (where IG's path starts)."""
    return lambda act: point.clone().requires_grad_(True)


def keeper(kept: dict[str, torch.Tensor], site: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """An edit that passes on (and keeps in ``kept[site]``) a copy of the activation, so
    gradients with respect to it can be taken after the forward."""

    def keep(act: torch.Tensor) -> torch.Tensor:
        kept[site] = act.clone()
        return kept[site]

    return keep


def _gradients_at(
    model: nn.Module,
    backend: Backend,
    base: torch.Tensor,
    embed: str,
    point: torch.Tensor,
    site_names: list[str],
    metric: Metric,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-example metric and ``∂(Σ_b m_b)/∂a_s`` for every site, with the embedding set
    to ``point``; examples do not interact in eval mode, so row ``b`` of each gradient is
    example ``b``'s own."""
    kept: dict[str, torch.Tensor] = {}
    hooks = EditingHooks()
    with hooks, torch.enable_grad():
        backend.access(embed).attach(hooks, constant_leaf(point))
        for s in site_names:
            backend.access(s).attach(hooks, keeper(kept, s))
        values = metric(logits_of(model(base)))
        per_example = check_per_example(values, base.shape[0])
        missing = [s for s in site_names if s not in kept or not kept[s].requires_grad]
        if missing:
            raise InvalidInputError(
                f"sites {missing} did not run after the embedding {embed!r} in the forward "
                "pass, so they carry no gradient from it; choose sites downstream of it."
            )
        found = torch.autograd.grad(values.sum(), [kept[s] for s in site_names])
    return per_example, [g.detach() for g in found]


def attribution_patching(
    model: nn.Module,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    metric: Metric,
    *,
    components: Sequence[str] = ("head_out",),
    layers: Sequence[int] | None = None,
    positions: str | Sequence[int] = "all",
    heads: Sequence[int] | None = None,
    sites: Sequence[str] | None = None,
    mode: str = "denoising",
    ig_steps: int = 1,
    embed_site: str | None = None,
) -> PatchingResult:
    """Estimate every cell's patching effect by attribution patching (``ig_steps=1``)
    or node-level EAP-IG (``ig_steps=m > 1``); arguments as
    :func:`~dynalens.circuits.patching.activation_patching`.

    Costs ``3 + ig_steps`` forwards and ``ig_steps`` backwards for all cells together.
    The model's parameters need not require grad (the embedding output is made a leaf).
    """
    check_pair_mode(mode)
    check_positive("ig_steps", ig_steps)
    check_pair(model, clean, corrupt)
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
    embed = embed_site or embedding_site(backend)
    base, source = (corrupt, clean) if mode == "denoising" else (clean, corrupt)
    site_names = list(dict.fromkeys(c.site for c in cells))
    with torch.no_grad():
        base_acts = record_activations(model, base, [*site_names, embed], backend=backend)
        source_acts = record_activations(model, source, [embed, *site_names], backend=backend)
    b = clean.shape[0]
    grads = {s: torch.zeros_like(base_acts[s]) for s in site_names}
    axes = {s: backend.access(s).axes(base_acts[s].ndim) for s in site_names}
    e_base, e_source = base_acts[embed], source_acts[embed]
    base_metric: torch.Tensor | None = None
    for k in range(ig_steps):
        point = e_base + (k / ig_steps) * (e_source - e_base)
        per_example, found = _gradients_at(model, backend, base, embed, point, site_names, metric)
        if k == 0:
            base_metric = per_example
        for s, g in zip(site_names, found):
            grads[s] += g / ig_steps
    assert base_metric is not None
    products = {s: (source_acts[s] - base_acts[s]).double() * grads[s].double() for s in site_names}
    estimate = torch.stack([_cell_sums(products[c.site], c, axes[c.site]) for c in cells])
    with torch.no_grad():
        source_metric = check_per_example(metric(logits_of(model(source))), b)
    clean_m, corrupt_m = (
        (source_metric, base_metric) if mode == "denoising" else (base_metric, source_metric)
    )
    label = "attribution" if ig_steps == 1 else f"eap-ig (m={ig_steps})"
    return PatchingResult(
        cells=cells,
        values=base_metric[None] + estimate,
        base=base_metric,
        clean=clean_m,
        corrupt=corrupt_m,
        mode=f"{mode} {label}",
    )
