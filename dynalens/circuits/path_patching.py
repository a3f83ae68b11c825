"""Path patching (Wang et al. 2022): the effect of sender heads through chosen receivers.

With base input ``x_b`` (the run that is patched) and source ``x_s`` (denoising: base
corrupt, source clean; noising: the reverse), for senders ``S`` (attention heads, all
positions) and receivers ``R`` (a head's query, key or value, an MLP, or the logits):

1. cache the base and source runs;
2. run ``x_b`` with the senders' outputs ``z_S`` taken from ``x_s`` and every other head
   (and, with ``freeze_mlps``, every MLP but the receivers) frozen to its ``x_b`` value;
   record the receivers' values;
3. run ``x_b`` with only the receivers set to the recorded values, and read the metric.

For ``R = "logits"`` step 2's logits are the answer. A head's query is a function of its
input alone, so setting ``q_h`` to its step-2 value is setting that head's query input
(transformer-lens's ``hook_q_input``): no split-qkv hooks are needed, and path patching
runs on every backend that exposes ``q``/``k``/``v`` and ``head_out`` (``z``), including
transformer-lens ``boot_native`` bridges (where transformer-lens's own direct-path helper
raises ``NotImplementedError``) and Hugging Face models. With ``freeze_mlps=True`` the
receivers see exactly ``resid(x_b) + Σ_{h∈S}(z_h(x_s) - z_h(x_b)) W_O^h``: the direct path
of transformer-lens's ``get_act_patch_direct_path``; with ``False`` paths through MLPs
count too (the ``freeze_mlps`` flag of Merullo et al.'s code). Senders are batched on the
batch axis like the cells of activation patching. The normalised effect of the result is
dynalens's recovery ``(m - m(x′)) / (m(x) - m(x′))``; Merullo et al.'s noising score
``(m - m(x)) / (m(x′) - m(x))`` is one minus it.

Not implemented: Goldowsky-Dill et al. 2023's generalisation (the graph treeified so that
every path from input to output has its own copy of shared nodes; paths in a hypothesis
see the reference input, all others the counterfactual one, scored by the average
unexplained effect). Its dissimilarity measure and the exact form of that score could not
be checked against the paper here, so it is left out rather than guessed; for edge sets,
:func:`~dynalens.circuits.edge_faithfulness.edge_faithfulness` evaluates Hanna et al.'s
(untreeified) form.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dynalens.circuits._inputs import check_pair, check_pair_mode, check_positive
from dynalens.circuits.metrics import Metric, check_per_example
from dynalens.circuits.results import Cell, PatchingResult
from dynalens.errors import CapabilityError, InvalidInputError, InvalidParameterError
from dynalens.probe.interventions import (
    Intervention,
    intervene,
    logits_of,
    record_activations,
)
from dynalens.probe.interventions_sites import Backend, detect_backend

Receiver = tuple[str, int, int | None]
_RECEIVER_COMPONENTS = ("q", "k", "v", "mlp_out")


def _check_receivers(
    backend: Backend, receivers: Sequence[Receiver] | str
) -> list[tuple[str, int, int | None, str]]:
    if receivers == "logits":
        return []
    if isinstance(receivers, str) or not receivers:
        raise InvalidParameterError(
            "receivers must be 'logits' or a non-empty list of (component, layer, head) with "
            f"component in {_RECEIVER_COMPONENTS} (head None for 'mlp_out'); got {receivers!r}."
        )
    out = []
    for item in receivers:
        if not (isinstance(item, tuple) and len(item) == 3 and item[0] in _RECEIVER_COMPONENTS):
            raise InvalidParameterError(
                f"a receiver is (component, layer, head) with component in "
                f"{_RECEIVER_COMPONENTS}; got {item!r}."
            )
        component, layer, head = item
        site = backend.component_site(component, layer)
        if component == "mlp_out" and head is not None:
            raise InvalidParameterError(f"an MLP receiver has no head; got {item!r}.")
        if component != "mlp_out":
            n = backend.heads_of(component)
            if head is None or not 0 <= head < n:
                raise InvalidInputError(
                    f"receiver {item!r}: head must be in 0..{n - 1} ({component!r} has {n} heads)."
                )
        out.append((component, layer, head, site))
    return out


def path_patching(
    model: nn.Module,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    metric: Metric,
    *,
    receivers: Sequence[Receiver] | str = "logits",
    senders: Sequence[tuple[int, int]] | None = None,
    mode: str = "denoising",
    freeze_mlps: bool = True,
    max_rows: int = 2048,
) -> PatchingResult:
    """Patch each sender head's path into ``receivers``; one cell per sender.

    Parameters
    ----------
    receivers : ``"logits"`` or a list of ``(component, layer, head)``
        ``component`` in ``q``, ``k``, ``v`` (head index; key/value heads under GQA) or
        ``mlp_out`` (head ``None``); all receivers are set together.
    senders : list of ``(layer, head)``, default every head before the first receiver layer
        (every head for ``"logits"``).
    mode : ``"denoising"`` (base corrupt, senders clean) or ``"noising"``.
    freeze_mlps : freeze MLPs that are not receivers in step 2 (direct paths only).
    """
    check_pair_mode(mode)
    check_positive("max_rows", max_rows)
    check_pair(model, clean, corrupt)
    backend = detect_backend(model)
    recv = _check_receivers(backend, receivers)
    n_layers = int(backend.n_layers or 0)
    first = min((layer for _, layer, _, _ in recv), default=n_layers)
    if senders is None:
        senders = [(lay, h) for lay in range(first) for h in range(backend.heads_of("head_out"))]
    bad = [
        s for s in senders if not (0 <= s[0] < first and 0 <= s[1] < backend.heads_of("head_out"))
    ]
    if bad or not senders:
        raise InvalidInputError(
            f"senders {bad or senders} are not heads (layer, head) before the first receiver "
            f"layer {first}; a path runs from an earlier layer to a later one."
        )
    z_sites = [backend.component_site("head_out", lay) for lay in range(n_layers)]
    mlp_sites = []
    if freeze_mlps:
        receiver_sites = {site for _, _, _, site in recv}
        for lay in range(n_layers):
            try:
                site = backend.component_site("mlp_out", lay)
            except CapabilityError:  # attention-only: no MLP to freeze
                continue
            if site not in receiver_sites:
                mlp_sites.append(site)
    base, source = (corrupt, clean) if mode == "denoising" else (clean, corrupt)
    with torch.no_grad():
        base_acts = record_activations(model, base, [*z_sites, *mlp_sites], backend=backend)
        source_z = record_activations(model, source, z_sites, backend=backend)
        b = clean.shape[0]
        base_m = check_per_example(metric(logits_of(model(base))), b)
        source_m = check_per_example(metric(logits_of(model(source))), b)
    cells = [Cell("path", lay, z_sites[lay], None, h) for lay, h in senders]
    values = torch.empty(len(cells), b, dtype=torch.float64)
    per_chunk = max(1, max_rows // b)
    for start in range(0, len(cells), per_chunk):
        chunk = cells[start : start + per_chunk]
        values[start : start + len(chunk)] = _run_chunk(
            model, backend, chunk, base, base_acts, source_z, z_sites, mlp_sites, recv, metric
        )
    clean_m, corrupt_m = (source_m, base_m) if mode == "denoising" else (base_m, source_m)
    target = "logits" if not recv else ", ".join(f"{c}{lay}.{h}" for c, lay, h, _ in recv)
    return PatchingResult(
        cells=cells,
        values=values,
        base=base_m,
        clean=clean_m,
        corrupt=corrupt_m,
        mode=f"{mode} path -> {target}",
    )


@torch.no_grad()
def _run_chunk(
    model: nn.Module,
    backend: Backend,
    chunk: list[Cell],
    base: torch.Tensor,
    base_acts: dict[str, torch.Tensor],
    source_z: dict[str, torch.Tensor],
    z_sites: list[str],
    mlp_sites: list[str],
    recv: list[tuple[str, int, int | None, str]],
    metric: Metric,
) -> torch.Tensor:
    """Steps 2 and 3 for a chunk of senders stacked on the batch axis: ``[chunk, batch]``."""
    n, b = len(chunk), base.shape[0]
    stacked = base.repeat(n, *([1] * (base.ndim - 1)))
    frozen = []
    for lay, site in enumerate(z_sites):
        z = base_acts[site].repeat(n, *([1] * (base_acts[site].ndim - 1)))
        for i, cell in enumerate(chunk):
            if cell.layer == lay:
                z[i * b : (i + 1) * b, :, cell.head] = source_z[site][:, :, cell.head]
        frozen.append(Intervention(site, z))
    for site in mlp_sites:
        act = base_acts[site]
        frozen.append(Intervention(site, act.repeat(n, *([1] * (act.ndim - 1)))))
    recorded: dict[str, torch.Tensor] = {}
    with intervene(model, frozen, backend=backend) as hooks:
        for _, _, _, site in recv:

            def keep(act: torch.Tensor, site: str = site) -> torch.Tensor:
                recorded[site] = act.clone()
                return act

            backend.access(site).attach(hooks, keep)
        logits = logits_of(model(stacked))
    if recv:
        patch = [Intervention(site, recorded[site], heads=head) for _, _, head, site in recv]
        with intervene(model, patch, backend=backend):
            logits = logits_of(model(stacked))
    out = torch.empty(n, b, dtype=torch.float64)
    for i in range(n):
        out[i] = check_per_example(metric(logits[i * b : (i + 1) * b]), b)
    return out
