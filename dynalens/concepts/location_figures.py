"""The figure of the concept-location reproduction: location scores against the
co-occurrence strength, and one test image with a concept's saliency under each ρ."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from dynalens._optional import require

__all__ = ["plot_concept_location"]

_SERIES = (
    ("pointing", "pointing game, own object", "#1f77b4"),
    ("mass_own", "saliency mass on own object", "#2ca02c"),
    ("mass_partner", "saliency mass on partner object", "#d62728"),
    ("concept_accuracy", "concept accuracy (independent test)", "#7f7f7f"),
)


def plot_concept_location(
    runs: dict[str, Any],
    test: Any,
    maps: dict[str, torch.Tensor],
    kinds: Sequence[str],
    pairs: Sequence[tuple[int, int]],
) -> Any:
    """Top: each score (95 % bootstrap interval) against ρ (instance-level labels: lines;
    other annotations: open diamonds). Bottom: a test image holding
    both members of the first pair and the grad × input map of the first member's logit
    from the models trained at the lowest and the highest ρ (object outlines dotted)."""
    go = require("plotly.graph_objects", "plot_concept_location")
    subplots = require("plotly.subplots", "plot_concept_location")
    instance = [r for r in runs if runs[r]["annotation"] == "instance"] or list(runs)
    keys = sorted(instance, key=lambda r: runs[r]["rho"])
    other = [r for r in runs if r not in keys]
    a, b = pairs[0] if pairs else (0, 0)
    both = (test.c_full[:, a] == 1) & (test.c_full[:, b] == 1)
    i = int(both.nonzero()[0, 0]) if bool(both.any()) else 0
    lo, hi = keys[0], keys[-1]
    titles = (
        "location scores vs co-occurrence",
        f"image: {kinds[a]} + {kinds[b]}",
        f"'{kinds[a]}', rho = {runs[lo]['rho']:g}",
        f"'{kinds[a]}', rho = {runs[hi]['rho']:g}",
    )
    fig = subplots.make_subplots(
        rows=2, cols=3, specs=[[{"colspan": 3}, None, None], [{}, {}, {}]],
        subplot_titles=titles, vertical_spacing=0.14, row_heights=[0.45, 0.55],
    )  # fmt: skip
    rhos = [runs[k]["rho"] for k in keys]
    for name, label, colour in _SERIES:
        vals = [runs[k][name]["value"] for k in keys]
        ivs = [runs[k][name]["interval"] or (v, v) for k, v in zip(keys, vals)]
        fig.add_trace(
            go.Scatter(
                x=rhos, y=vals, mode="lines+markers", name=label, line={"color": colour},
                error_y={"type": "data", "symmetric": False,
                         "array": [h - v for (_, h), v in zip(ivs, vals)],
                         "arrayminus": [v - lo_ for (lo_, _), v in zip(ivs, vals)]},
            ),
            row=1, col=1,
        )  # fmt: skip
        if other:
            diamonds = {"symbol": "diamond-open", "size": 12, "color": colour}
            fig.add_trace(
                go.Scatter(x=[runs[r]["rho"] for r in other],
                           y=[runs[r][name]["value"] for r in other], mode="markers",
                           marker=diamonds, name=label, showlegend=False),
                row=1, col=1,
            )  # fmt: skip
    if other:  # one legend entry for the markers of the other annotation
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="markers", name="open diamonds: class-level labels",
                       marker={"symbol": "diamond-open", "size": 12, "color": "black"}),
            row=1, col=1,
        )  # fmt: skip
    chance = runs[lo]["pointing"].get("chance")
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", line_color="grey", row=1, col=1,
                      annotation_text="chance (mask area)")  # fmt: skip
    img = (test.x[i].clamp(0, 1).permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    fig.add_trace(go.Image(z=img), row=2, col=1)
    scale = max(float(maps[k][i, a].abs().max()) for k in (lo, hi)) or 1.0
    for col, k in ((2, lo), (3, hi)):
        fig.add_trace(
            go.Heatmap(z=maps[k][i, a].numpy(), colorscale="RdBu", zmid=0, zmin=-scale,
                       zmax=scale, showscale=col == 3,
                       colorbar={"title": "grad × input", "len": 0.5, "y": 0.25}),
            row=2, col=col,
        )  # fmt: skip
        for j, dash in ((a, "solid"), (b, "dot")):
            ys, xs = test.masks[i, j].nonzero(as_tuple=True)
            if len(ys):
                fig.add_shape(type="rect", x0=float(xs.min()) - 0.5, x1=float(xs.max()) + 0.5,
                              y0=float(ys.min()) - 0.5, y1=float(ys.max()) + 0.5,
                              line={"color": "black", "dash": dash}, row=2, col=col)  # fmt: skip
    for col in (1, 2, 3):
        fig.update_yaxes(autorange="reversed", title_text="row (px)" if col == 1 else None,
                         row=2, col=col)  # fmt: skip
        fig.update_xaxes(title_text="column (px)", row=2, col=col)
    fig.update_xaxes(title_text="co-occurrence rho of the training pairs", row=1, col=1)
    fig.update_yaxes(title_text="score", range=[0, 1.05], row=1, col=1)
    fig.update_layout(
        title="Concept location under co-occurrence (Furby et al. 2024, synthetic shapes)<br>"
        "<sup>grad × input of the concept logit; solid box = own object, dotted = partner"
        "</sup>",
        template="plotly_white", width=980, height=780, margin={"t": 110},
        legend={"x": 1.02, "y": 1.0, "yanchor": "top"},
    )  # fmt: skip
    return fig
