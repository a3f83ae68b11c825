"""Circuit faithfulness at node level, over batches of prompt pairs.

Nodes are the token embedding, every attention head (its output ``z``, all positions) and
every MLP. A circuit ``C`` keeps its nodes; every other node ``n`` outputs a replacement
``ã_n`` whatever its input: its value on the corrupt prompt ``x′`` (resample ablation) or
its per-position mean over a reference batch (mean ablation; Wang et al. 2022). With the
metric averaged over pairs before the ratio (as Hanna et al.'s code does),

    F(C) = (m(C) - m(x′)) / (m(M) - m(x′)),   m(M) = m(x) the full model,

so under resample ablation ``F(all nodes) = 1`` and ``F(∅) = 0`` exactly (every node then
outputs its corrupt value, which is the corrupt run). Circuits are stacked on the batch
axis, so a faithfulness curve over circuit sizes costs a few forwards, and each of the
many prompt pairs is evaluated in the same forward (transformer-lens's ``faithfulness``
takes one pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens.circuits._inputs import check_pair, check_positive
from dynalens.circuits.attribution import embedding_site
from dynalens.circuits.metrics import Metric, check_per_example
from dynalens.circuits.results import (
    Cell,
    PatchingResult,
    cells_from_arrays,
    cells_to_arrays,
    check_kind,
)
from dynalens.errors import CapabilityError, InvalidInputError, InvalidParameterError
from dynalens.probe.interventions import (
    Intervention,
    intervene,
    logits_of,
    mean_activation,
    record_activations,
)
from dynalens.probe.interventions_sites import Backend, detect_backend


def circuit_nodes(model: nn.Module, *, backend: Backend | None = None) -> list[Cell]:
    """Every node: ``Cell("embed", -1, ...)``, then per layer its heads and its MLP."""
    backend = backend or detect_backend(model)
    nodes = [Cell("embed", -1, embedding_site(backend))]
    for layer in range(int(backend.n_layers or 0)):
        z = backend.component_site("head_out", layer)
        nodes += [Cell("head_out", layer, z, None, h) for h in range(backend.heads_of("head_out"))]
        try:
            nodes.append(Cell("mlp_out", layer, backend.component_site("mlp_out", layer)))
        except CapabilityError:  # attention-only
            pass
    return nodes


@dataclass
class Faithfulness:
    """Faithfulness of several circuits over the same prompt pairs.

    Attributes
    ----------
    circuits : list of list of Cell (nodes) or of ``(sender, receiver)`` edges
    values : Tensor ``[circuits, pairs]``, the metric with each circuit kept.
    clean, corrupt : Tensor ``[pairs]``, ``m(x)`` and ``m(x′)``.
    ablation : ``"resample"`` or ``"mean"``.
    """

    circuits: list[list[Cell]] | list[list[tuple[str, str]]]
    values: torch.Tensor
    clean: torch.Tensor
    corrupt: torch.Tensor
    ablation: str

    def faithfulness(self) -> torch.Tensor:
        """``F(C) = (m(C) - m(x′)) / (m(x) - m(x′))`` per circuit, means over pairs first."""
        gap = self.clean.mean() - self.corrupt.mean()
        if abs(float(gap)) <= 1e-9 * max(1.0, float(self.clean.abs().mean())):
            raise InvalidParameterError(
                "clean and corrupt give the same mean metric, so faithfulness is undefined; "
                "choose a corruption that changes the metric."
            )
        return (self.values.mean(1) - self.corrupt.mean()) / gap

    def sizes(self) -> list[int]:
        return [len(c) for c in self.circuits]

    # -- serialisation (Store.put_result / get_result) --
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, attrs)``: every circuit's nodes as cell columns (or its edges as
        ``sender`` / ``receiver`` columns) with a ``circuit`` index, float64 ``values``,
        ``clean`` and ``corrupt``."""
        flat: list[Any] = [c for circuit in self.circuits for c in circuit]
        edges = bool(flat) and isinstance(flat[0], tuple)
        if edges:
            arrays = {
                "sender": np.array([str(u) for u, _ in flat], dtype=object),
                "receiver": np.array([str(v) for _, v in flat], dtype=object),
            }
        else:
            arrays = cells_to_arrays([c for c in flat if isinstance(c, Cell)])
        arrays["circuit"] = np.repeat(np.arange(len(self.circuits)), self.sizes())
        arrays["values"] = self.values.double().numpy()
        arrays["clean"], arrays["corrupt"] = (
            self.clean.double().numpy(),
            self.corrupt.double().numpy(),
        )
        attrs = {"kind": "Faithfulness", "ablation": self.ablation, "edges": edges}
        return arrays, attrs

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> Faithfulness:
        """The result saved by :meth:`to_arrays`, bit for bit."""
        check_kind(attrs, "Faithfulness")
        values = torch.from_numpy(np.array(arrays["values"], dtype=np.float64))
        members: list[Any] = (
            [(str(u), str(v)) for u, v in zip(arrays["sender"], arrays["receiver"])]
            if attrs.get("edges")
            else cells_from_arrays(arrays)
        )
        circuits: list[list[Any]] = [[] for _ in range(values.shape[0])]
        for i, member in zip(arrays["circuit"], members):
            circuits[int(i)].append(member)
        clean, corrupt = (
            torch.from_numpy(np.array(arrays[k], dtype=np.float64)) for k in ("clean", "corrupt")
        )
        return cls(circuits, values, clean, corrupt, str(attrs["ablation"]))


def check_ablation(ablation: str) -> None:
    if ablation not in ("resample", "mean"):
        raise InvalidParameterError(f"ablation must be 'resample' or 'mean'; got {ablation!r}.")


def ablation_values(
    model: nn.Module,
    backend: Backend,
    sites: Sequence[str],
    corrupt: torch.Tensor,
    ablation: str,
    reference: torch.Tensor | None,
    clean: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """What ablated nodes output: their values on ``corrupt`` (``"resample"``, ``[B, ...]``)
    or their per-position means over ``reference`` (default ``clean``; ``[1, ...]``)."""
    if ablation == "resample":
        return record_activations(model, corrupt, sites, backend=backend)
    source = reference if reference is not None else clean
    found = record_activations(model, source, sites, backend=backend)
    return {s: mean_activation(v) for s, v in found.items()}


def _key(cell: Cell) -> tuple[str, int, int | None]:
    return (cell.component, cell.layer, cell.head)


@torch.no_grad()
def faithfulness(
    model: nn.Module,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    metric: Metric,
    circuits: Sequence[Sequence[Cell]],
    *,
    ablation: str = "resample",
    reference: torch.Tensor | None = None,
    max_rows: int = 2048,
) -> Faithfulness:
    """The metric with each circuit kept and every other node ablated (see module doc).

    ``circuits`` are lists of nodes from :func:`circuit_nodes` (or cells of a patching
    result with components ``head_out`` at all positions / ``mlp_out`` / ``embed``).
    """
    check_ablation(ablation)
    check_positive("max_rows", max_rows)
    check_pair(model, clean, corrupt)
    backend = detect_backend(model)
    nodes = circuit_nodes(model, backend=backend)
    known = {_key(n) for n in nodes}
    for circuit in circuits:
        unknown = [c for c in circuit if _key(c) not in known or c.position is not None]
        if unknown:
            raise InvalidInputError(
                f"circuit nodes {unknown[:3]} are not nodes of this model; nodes are the "
                "embedding, heads ('head_out' at all positions) and MLPs: see circuit_nodes()."
            )
    sites = list(dict.fromkeys(n.site for n in nodes))
    b = clean.shape[0]
    replacement = ablation_values(model, backend, sites, corrupt, ablation, reference, clean)
    clean_m = check_per_example(metric(logits_of(model(clean))), b)
    corrupt_m = check_per_example(metric(logits_of(model(corrupt))), b)
    values = torch.empty(len(circuits), b, dtype=torch.float64)
    per_chunk = max(1, max_rows // b)
    for start in range(0, len(circuits), per_chunk):
        chunk = circuits[start : start + per_chunk]
        ablations = []
        for i, circuit in enumerate(chunk):
            kept = {_key(c) for c in circuit}
            rows = range(i * b, (i + 1) * b)
            for node in nodes:
                if _key(node) not in kept:
                    src = replacement[node.site]
                    ablations.append(Intervention(node.site, src, heads=node.head, rows=rows))
        stacked = clean.repeat(len(chunk), *([1] * (clean.ndim - 1)))
        with intervene(model, ablations, backend=backend):
            logits = logits_of(model(stacked))
        for i in range(len(chunk)):
            values[start + i] = check_per_example(metric(logits[i * b : (i + 1) * b]), b)
    return Faithfulness([list(c) for c in circuits], values, clean_m, corrupt_m, ablation)


def faithfulness_curve(
    model: nn.Module,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    metric: Metric,
    ranking: PatchingResult,
    *,
    sizes: Sequence[int] | None = None,
    keep_embedding: bool = True,
    ablation: str = "resample",
    reference: torch.Tensor | None = None,
    max_rows: int = 2048,
) -> Faithfulness:
    """Faithfulness of the top-k nodes of ``ranking`` (by ``|effect|``) for each k in
    ``sizes`` (default 0..all); ``ranking`` holds ``head_out`` cells at all positions and/or
    ``mlp_out`` cells, e.g. from :func:`~dynalens.circuits.attribution_patching`."""
    order = torch.argsort(ranking.effect().abs(), descending=True, stable=True).tolist()
    ranked = [ranking.cells[i] for i in order]
    if sizes is None:
        sizes = range(len(ranked) + 1)
    bad = [k for k in sizes if not 0 <= k <= len(ranked)]
    if bad:
        raise InvalidParameterError(f"sizes {bad} out of range 0..{len(ranked)} ranked nodes.")
    base = [c for c in circuit_nodes(model) if c.component == "embed"] if keep_embedding else []
    circuits = [base + ranked[:k] for k in sizes]
    return faithfulness(
        model, clean, corrupt, metric, circuits, ablation=ablation, reference=reference,
        max_rows=max_rows,
    )  # fmt: skip
