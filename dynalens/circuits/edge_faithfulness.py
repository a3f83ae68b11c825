"""Circuit faithfulness at edge level (Hanna, Pezzelle & Belinkov 2024), batched over pairs.

A circuit ``C`` is a set of edges ``u -> v`` of the residual graph
(:class:`~dynalens.circuits.edges.EdgeGraph`: senders the embedding, heads and MLPs;
receivers each head's query / key / value input, each MLP and the logits). The model runs
on the clean input ``x`` with every edge outside ``C`` ablated, so that each receiver reads

    in_v = Σ_{(u->v) ∈ C} w_u + Σ_{(u->v) ∉ C} w̃_u + (biases, positional embedding)
         = in_v + Σ_{(u->v) ∉ C} (w̃_u - w_u),

where ``w_u`` is sender ``u``'s write in this same run (computed from ``u``'s own, ablated,
inputs; the form Hanna et al.'s ``evaluate_graph`` adds) and ``w̃_u`` its write on the
corrupt input ``x′`` (resample ablation) or its per-position mean over a reference batch
(mean ablation). With the metric averaged over pairs before the ratio,

    F(C) = (m(C) - m(x′)) / (m(x) - m(x′)),

so ``F(all edges) = 1`` and, under resample ablation, ``F(∅) = 0`` exactly; the circuit of
all edges among a node set ``N`` (:func:`edges_among`) equals node faithfulness of ``N``
(:func:`~dynalens.circuits.faithfulness.faithfulness`; without grouped-query attention,
where a key / value input is shared by several heads).

How it runs. The receivers of one layer read different residual streams, which no single
forward holds, so the circuit is evaluated layer by layer, every sender's output set from
known values (so each receiver's input is exactly the sum above; no weights are read, so
it runs wherever :func:`~dynalens.circuits.edges.edge_attribution_patching` does):

1. per layer ``l``, rows stacked per query / key / value receiver, each sender set to the
   receiver's mix of ``w`` and ``w̃``; layer ``l``'s ``q``/``k``/``v`` are recorded and the
   forward stops there;
2. ``q``/``k``/``v`` of layer ``l`` set to their receivers' values; the heads' outputs are
   recorded, and the MLP of layer ``l`` reads its own mix and its output is recorded;
3. the logits read their mix.

That is ``2L + 1`` forwards per chunk of circuits, circuits and pairs stacked on the batch
axis (``max_rows`` bounds the rows of one forward).

Example:
    >>> scores = edge_attribution_patching(model, clean, corrupt, metric, ig_steps=8)
    >>> curve = edge_faithfulness_curve(model, clean, corrupt, metric, scores)
    >>> curve.faithfulness()  # F for each circuit size
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from dynalens.circuits._inputs import check_pair, check_positive
from dynalens.circuits.attribution import embedding_site
from dynalens.circuits.edges import EdgeGraph, EdgeScores, edge_graph
from dynalens.circuits.faithfulness import Faithfulness, ablation_values, check_ablation
from dynalens.circuits.metrics import Metric, check_per_example
from dynalens.circuits.results import Cell
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.probe.interventions import logits_of, record_activations
from dynalens.probe.interventions_sites import Backend, EditingHooks, detect_backend

Edge = tuple[str, str]
Edit = Callable[[torch.Tensor], torch.Tensor]


class _Stop(Exception):
    """Ends a forward once the sites it was run for are recorded (baukit's ``stop``)."""


def edges_among(model: nn.Module, nodes: Iterable[Cell]) -> list[Edge]:
    """Every edge between nodes of ``nodes`` (cells of
    :func:`~dynalens.circuits.faithfulness.circuit_nodes`), plus their edges to the logits:
    the edge circuit that node faithfulness of ``nodes`` evaluates."""
    graph = edge_graph(model)
    names = {_node_name(c) for c in nodes}
    group = graph.n_heads // graph.n_kv_heads

    def owners(receiver: str) -> list[str]:
        if receiver == "logits":
            return ["logits"]
        if receiver.startswith("m"):
            return [receiver]
        head, c = receiver[:-1].split("<")
        if c == "q":
            return [head]
        layer, kv = (int(i) for i in head[1:].split(".h"))
        return [f"a{layer}.h{h}" for h in range(kv * group, (kv + 1) * group)]

    return [
        (u, v)
        for u, v in graph.edges()
        if u in names and any(o == "logits" or o in names for o in owners(v))
    ]


def _node_name(cell: Cell) -> str:
    if cell.component == "embed":
        return "input"
    if cell.component == "head_out" and cell.position is None:
        return f"a{cell.layer}.h{cell.head}"
    if cell.component == "mlp_out" and cell.position is None:
        return f"m{cell.layer}"
    raise InvalidInputError(
        f"{cell} is not a node of the edge graph; nodes are the embedding, heads ('head_out' "
        "at all positions) and MLPs: see circuit_nodes()."
    )


def _check_circuits(graph: EdgeGraph, circuits: Sequence[Iterable[Edge]]) -> list[frozenset[Edge]]:
    known = set(graph.edges())
    out = []
    for circuit in circuits:
        try:
            edges: frozenset[Edge] = frozenset((u, v) for u, v in circuit)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"a circuit is an iterable of (sender, receiver) edges; got {circuit!r}."
            ) from None
        unknown = sorted(e for e in edges if e not in known)
        if unknown:
            raise InvalidInputError(
                f"edges {unknown[:3]} are not edges of this model's graph; edges are "
                f"(sender, receiver) pairs such as {graph.edges()[1]!r}: see "
                "edge_graph(model).edges() or EdgeScores.edges."
            )
        out.append(edges)
    return out


class _Evaluator:
    """Runs chunks of edge circuits on the stacked clean input (the module docstring's
    three steps)."""

    def __init__(self, model: nn.Module, backend: Backend, graph: EdgeGraph, embed: str) -> None:
        self.model, self.backend, self.graph = model, backend, graph
        layers = range(graph.n_layers)
        self.embed = embed
        self.z = [backend.component_site("head_out", lay) for lay in layers]
        self.qkv = {c: [backend.component_site(c, lay) for lay in layers] for c in "qkv"}
        self.mlp = [backend.component_site("mlp_out", lay) for lay in layers if graph.has_mlp]
        self.head_axis = {
            s: backend.access(s).axes(4).index("head")
            for s in [*self.z, *self.qkv["q"], *self.qkv["k"], *self.qkv["v"]]
        }

    def senders_at(self, site: str) -> list[str]:
        """The senders whose outputs ``site`` holds (one per head of a ``z`` site)."""
        if site == self.embed:
            return ["input"]
        if site in self.z:
            lay = self.z.index(site)
            return [f"a{lay}.h{h}" for h in range(self.graph.n_heads)]
        return [f"m{self.mlp.index(site)}"]

    def mix(
        self,
        site: str,
        current: torch.Tensor,
        ablated: torch.Tensor,
        receivers: list[str],
        circuits: list[frozenset[Edge]],
    ) -> torch.Tensor:
        """``site``'s value for rows stacked ``[receiver, circuit, pair]``: each sender's
        ablated value where its edge to the row's receiver is outside the row's circuit,
        else its current value."""
        n, rest = len(circuits), current.shape[1:]
        cur = current.reshape(1, n, -1, *rest)
        abl = ablated.reshape(1, 1, ablated.shape[0], *rest)
        senders = self.senders_at(site)
        cut = torch.tensor(
            [[[(u, v) not in c for u in senders] for c in circuits] for v in receivers]
        )
        shape = [len(receivers), n, *([1] * current.ndim)]
        if site in self.head_axis:
            shape[2 + self.head_axis[site]] = len(senders)
        mixed = torch.where(cut.reshape(shape).to(current.device), abl, cur)
        return mixed.reshape(-1, *rest)

    def run(
        self,
        inputs: torch.Tensor,
        edits: dict[str, Edit],
        stop_at: str | None = None,
    ) -> torch.Tensor | None:
        """One forward with ``edits``; ``stop_at``'s edit ends it (returns None)."""
        hooks = EditingHooks()
        try:
            with hooks:
                for site, edit in edits.items():
                    if site == stop_at:
                        edit = _stopping(edit)
                    self.backend.access(site).attach(hooks, edit)
                return logits_of(self.model(inputs))
        except _Stop:
            return None

    @torch.no_grad()
    def chunk(
        self,
        clean: torch.Tensor,
        embedding: torch.Tensor,
        ablated: dict[str, torch.Tensor],
        circuits: list[frozenset[Edge]],
    ) -> torch.Tensor:
        """Logits ``[circuits * pairs, ...]`` of the clean input with each circuit kept."""
        graph, n = self.graph, len(circuits)
        cur = {self.embed: embedding.repeat(n, *([1] * (embedding.ndim - 1)))}

        def upstream(layer: int, receivers: list[str]) -> dict[str, Edit]:
            """Every sender before ``layer`` set to its mix for ``receivers``."""
            sites = [self.embed, *self.z[:layer], *self.mlp[:layer]]
            return {s: _const(self.mix(s, cur[s], ablated[s], receivers, circuits)) for s in sites}

        def tile(groups: int) -> torch.Tensor:
            return clean.repeat(groups * n, *([1] * (clean.ndim - 1)))

        for lay in range(graph.n_layers):
            groups = [(c, h) for c in "qkv" for h in range(_heads(graph, c))]
            names = [f"a{lay}.h{h}<{c}>" for c, h in groups]
            found: dict[str, torch.Tensor] = {}
            edits = upstream(lay, names)
            for c in "qkv":
                edits[self.qkv[c][lay]] = _keeper(found, c)
            edits[self.z[lay]] = lambda act: act
            self.run(tile(len(groups)), edits, stop_at=self.z[lay])
            qkv = {c: self._assemble(found[c], groups, c) for c in "qkv"}
            edits = upstream(lay, [f"m{lay}"]) if graph.has_mlp else {}
            for c in "qkv":
                edits[self.qkv[c][lay]] = _const(qkv[c])
            z_site = self.z[lay]

            def z_edit(act: torch.Tensor, z_site: str = z_site, lay: int = lay) -> torch.Tensor:
                cur[z_site] = act.clone()
                if not graph.has_mlp:
                    return act
                return self.mix(z_site, act, ablated[z_site], [f"m{lay}"], circuits)

            edits[z_site] = z_edit
            if graph.has_mlp:
                edits[self.mlp[lay]] = _keeper(cur, self.mlp[lay])
            self.run(tile(1), edits, stop_at=self.mlp[lay] if graph.has_mlp else z_site)
        logits = self.run(tile(1), upstream(graph.n_layers, ["logits"]))
        assert logits is not None
        return logits

    def _assemble(
        self, recorded: torch.Tensor, groups: list[tuple[str, int]], c: str
    ) -> torch.Tensor:
        """Each head's ``c`` from the rows of its own receiver: ``[circuits * pairs, ...]``."""
        stacked = recorded.reshape(len(groups), -1, *recorded.shape[1:])
        out = torch.empty_like(stacked[0])
        axis = self.head_axis[self.qkv[c][0]]
        for g, (component, h) in enumerate(groups):
            if component == c:
                out.select(axis, h).copy_(stacked[g].select(axis, h))
        return out


def _heads(graph: EdgeGraph, component: str) -> int:
    return graph.n_heads if component == "q" else graph.n_kv_heads


def _const(value: torch.Tensor) -> Edit:
    return lambda act: value.to(act.dtype)


def _keeper(store: dict[str, torch.Tensor], key: str) -> Edit:
    def keep(act: torch.Tensor) -> torch.Tensor:
        store[key] = act.clone()
        return act

    return keep


def _stopping(edit: Edit) -> Edit:
    def stop(act: torch.Tensor) -> torch.Tensor:
        edit(act)
        raise _Stop

    return stop


def edge_faithfulness(
    model: nn.Module,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    metric: Metric,
    circuits: Sequence[Iterable[Edge]],
    *,
    ablation: str = "resample",
    reference: torch.Tensor | None = None,
    embed_site: str | None = None,
    max_rows: int = 4096,
) -> Faithfulness:
    """The metric on ``clean`` with each circuit's edges kept and every other edge ablated
    (see the module docstring); circuits and pairs are batched.

    Parameters
    ----------
    circuits : sets of ``(sender, receiver)`` edges, named as in
        :class:`~dynalens.circuits.edges.EdgeGraph` (``("a0.h1", "a1.h2<k>")``).
    ablation : ``"resample"`` (the corrupt run's writes) or ``"mean"`` (per-position means
        over ``reference``, default ``clean``).
    max_rows : rows per forward (receivers of a layer x circuits x pairs); at least one
        circuit's worth runs at a time.
    """
    check_ablation(ablation)
    check_positive("max_rows", max_rows)
    check_pair(model, clean, corrupt)
    backend = detect_backend(model)
    graph = edge_graph(model, backend=backend)
    checked = _check_circuits(graph, circuits)
    evaluator = _Evaluator(model, backend, graph, embed_site or embedding_site(backend))
    writes = [evaluator.embed, *evaluator.z, *evaluator.mlp]
    b = clean.shape[0]
    with torch.no_grad():
        ablated = ablation_values(model, backend, writes, corrupt, ablation, reference, clean)
        embedding = record_activations(model, clean, [evaluator.embed], backend=backend)
        clean_m = check_per_example(metric(logits_of(model(clean))), b)
        corrupt_m = check_per_example(metric(logits_of(model(corrupt))), b)
    widest = graph.n_heads + 2 * graph.n_kv_heads
    per_chunk = max(1, max_rows // (widest * b))
    values = torch.empty(len(checked), b, dtype=torch.float64)
    for start in range(0, len(checked), per_chunk):
        chunk = checked[start : start + per_chunk]
        logits = evaluator.chunk(clean, embedding[evaluator.embed], ablated, chunk)
        for i in range(len(chunk)):
            values[start + i] = check_per_example(metric(logits[i * b : (i + 1) * b]), b)
    kept = [sorted(c) for c in checked]
    return Faithfulness(kept, values, clean_m, corrupt_m, ablation)


def edge_faithfulness_curve(
    model: nn.Module,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    metric: Metric,
    ranking: EdgeScores,
    *,
    sizes: Sequence[int] | None = None,
    ablation: str = "resample",
    reference: torch.Tensor | None = None,
    embed_site: str | None = None,
    max_rows: int = 4096,
) -> Faithfulness:
    """Faithfulness of the top-k edges of ``ranking`` (by ``|score|``, e.g. from
    :func:`~dynalens.circuits.edges.edge_attribution_patching`) for each k in ``sizes``
    (default: 0, all edges, and 31 sizes evenly between)."""
    order = torch.argsort(ranking.mean().abs(), descending=True, stable=True).tolist()
    ranked = [ranking.edges[i] for i in order]
    if sizes is None:
        sizes = sorted({round(len(ranked) * i / 32) for i in range(33)})
    bad = [k for k in sizes if not 0 <= k <= len(ranked)]
    if bad:
        raise InvalidParameterError(f"sizes {bad} out of range 0..{len(ranked)} ranked edges.")
    return edge_faithfulness(
        model, clean, corrupt, metric, [ranked[:k] for k in sizes], ablation=ablation,
        reference=reference, embed_site=embed_site, max_rows=max_rows,
    )  # fmt: skip
