"""Figures of the circuits package: heatmaps of activation-patching results (read a
:class:`PatchingResult` only) and curves over training (read the tables of
:func:`~dynalens.circuits.over_training.over_training`)."""

from __future__ import annotations

from typing import Any

from dynalens._optional import require
from dynalens.circuits.results import HEAD_COMPONENTS, PatchingResult
from dynalens.errors import InvalidParameterError


def patching_heatmap(
    result: PatchingResult,
    component: str,
    *,
    quantity: str = "normalised",
    tokens: list[str] | None = None,
) -> Any:
    """A plotly heatmap of one component: layers (or layer/head pairs) down, positions
    (or heads) across, coloured by ``quantity`` (value, effect or normalised) on a
    diverging scale centred at 0.

    ``tokens`` labels the positions (e.g. ``model.to_str_tokens(prompt)``).
    """
    go = require("plotly.graph_objects", "patching_heatmap")
    grid = result.grid(component, quantity)
    cells = [c for c in result.cells if c.component == component]
    layers = sorted({c.layer for c in cells})
    positions = sorted({c.position for c in cells if c.position is not None})
    heads = sorted({c.head for c in cells if c.head is not None})
    pos_labels = [
        f"{p}: {tokens[p]}" if tokens is not None and p < len(tokens) else str(p) for p in positions
    ]
    if tokens is not None and positions and len(tokens) <= max(positions):
        raise InvalidParameterError(
            f"{len(tokens)} token labels for positions up to {max(positions)}; "
            "pass one label per position."
        )
    by_head = component in HEAD_COMPONENTS and heads
    if by_head and positions:  # [layer, pos, head] -> rows layer/head, columns positions
        if component == "pattern":
            grid = grid.transpose(1, 2)
        z = grid.permute(0, 2, 1).reshape(len(layers) * len(heads), len(positions))
        y = [f"L{layer}H{h}" for layer in layers for h in heads]
        x, x_title, y_title = pos_labels, "position", "layer / head"
    elif by_head:
        z, y, x = grid, [str(v) for v in layers], [str(h) for h in heads]
        x_title, y_title = "head", "layer"
    else:
        z = grid.reshape(len(layers), -1)
        y, x = [str(v) for v in layers], pos_labels or ["all"]
        x_title, y_title = "position", "layer"
    limit = float(z.abs().nan_to_num(0.0).max()) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z.numpy(),
            x=x,
            y=y,
            colorscale="RdBu",
            zmid=0.0,
            zmin=-limit,
            zmax=limit,
            colorbar={"title": quantity},
        )
    )
    fig.update_layout(
        title=f"{result.mode} patching: {component} ({quantity})",
        xaxis_title=x_title,
        yaxis_title=y_title,
        template="plotly_white",
        width=760,
        height=max(300, 40 * len(y) + 160),
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    return fig


def plot_induction_heads(tables: dict[str, Any], *, phase_change_step: int | None = None) -> Any:
    """Loss, per-head attention scores and per-head patching effects against the step.

    ``tables``: ``performance`` (step, loss, accuracy), ``induction`` and
    ``previous_token`` (step, layer, head, score) and ``patching`` (step, layer, head,
    effect), as :func:`~dynalens.circuits.induction_heads.induction_tables` returns
    them. A dashed line marks ``phase_change_step`` when given.
    """
    go = require("plotly.graph_objects", "plot_induction_heads")
    subplots = require("plotly.subplots", "plot_induction_heads")
    fig = subplots.make_subplots(
        rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
        subplot_titles=(
            "held-out loss inside the second copy",
            "layer-1 induction score (solid) and layer-0 previous-token score (dotted) per head",
            "patching effect of each head (output resampled from the corrupted copy)",
        ),
    )  # fmt: skip
    perf = tables["performance"]
    fig.add_trace(go.Scatter(x=perf["step"], y=perf["loss"], name="loss", mode="lines+markers",
                             line={"color": "black"}), row=1, col=1)  # fmt: skip
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for name, layer, dash in (("induction", 1, "solid"), ("previous_token", 0, "dot")):
        t = tables[name]
        for h, rows in t[t["layer"] == layer].groupby("head"):
            fig.add_trace(go.Scatter(
                x=rows["step"], y=rows["score"], name=f"L{layer}H{h} {name.replace('_', '-')}",
                mode="lines", line={"dash": dash, "color": palette[int(h) % len(palette)]},
            ), row=2, col=1)  # fmt: skip
    patch = tables["patching"]
    for (layer, h), rows in patch.groupby(["layer", "head"]):
        fig.add_trace(go.Scatter(
            x=rows["step"], y=rows["effect"], name=f"L{layer}H{h} patched", mode="lines",
            line={"dash": "dot" if layer == 0 else "solid",
                  "color": palette[int(h) % len(palette)]},
        ), row=3, col=1)  # fmt: skip
    if phase_change_step is not None:
        fig.add_vline(x=phase_change_step, line_dash="dash", line_color="gray")
    fig.update_yaxes(title_text="loss (nats)", row=1, col=1)
    fig.update_yaxes(title_text="attention weight", range=[0, 1], row=2, col=1)
    fig.update_yaxes(title_text="Δ log-prob (nats)", row=3, col=1)
    fig.update_xaxes(title_text="training step", row=3, col=1)
    fig.update_layout(
        title="Induction heads form in a phase change (2-layer attention-only transformer)",
        template="plotly_white", width=900, height=900, legend={"font": {"size": 10}},
    )  # fmt: skip
    return fig
