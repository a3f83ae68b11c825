"""Heatmaps of activation-patching results (reads a :class:`PatchingResult` only)."""

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
