"""Figures of ``dynalens reproduce posthoc-cbm`` (plotly; they read the results dict)."""

from __future__ import annotations

from typing import Any

__all__ = ["plot_accuracy", "plot_head_weights"]

_BARS = (
    ("backbone probe", None),
    ("PCBM", ""),
    ("pruned", "_pruned"),
    ("pruned + renormalised", "_pruned_renormalized"),
    ("pruned + fine-tuned", "_pruned_finetuned"),
)


def plot_accuracy(studies: dict[str, Any]) -> Any:
    """Test accuracy per backbone and model (error bars: sd over bank seeds), in
    distribution and with flipped backgrounds, and the reference SGD head's spread."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(studies), subplot_titles=list(studies), shared_yaxes=True)
    for col, st in enumerate(studies.values(), start=1):
        for split, colour in (("in_distribution", "#1f77b4"), ("flipped", "#d62728")):
            ys, err = [], []
            for _, suffix in _BARS:
                if suffix is None:
                    ys.append(st["backbone"][split]["accuracy"])
                    err.append(0.0)
                else:
                    ys.append(st["pcbm"][split + suffix]["mean"])
                    err.append(st["pcbm"][split + suffix]["sd"])
            fig.add_bar(
                x=[b for b, _ in _BARS], y=ys, error_y={"type": "data", "array": err},
                name=split.replace("_", " "), marker_color=colour, showlegend=col == 1,
                row=1, col=col,
            )  # fmt: skip
        fig.add_box(
            y=st["sgd_head"]["accuracies"], name="reference SGD head (seeds)",
            marker_color="#7f7f7f", boxpoints="all", showlegend=False, row=1, col=col,
        )  # fmt: skip
    fig.update_layout(
        title="Post-hoc CBMs: accuracy vs the backbone, edits against a spurious background",
        barmode="group",
        height=480,
        width=1100,
    )
    fig.update_xaxes(title_text="model")
    fig.update_yaxes(title_text="test accuracy", range=[0, 1.03], col=1)
    return fig


def plot_head_weights(studies: dict[str, Any]) -> Any:
    """Head weights (classes × concepts) before and after pruning the background."""
    from plotly.subplots import make_subplots

    titles = [f"{name}: {which}" for name in studies for which in ("head", "background pruned")]
    fig = make_subplots(rows=len(studies), cols=2, subplot_titles=titles)
    top = max(abs(v) for st in studies.values() for row in st["weights"]["head"] for v in row)
    for row, st in enumerate(studies.values(), start=1):
        w = st["weights"]
        for col, key in ((1, "head"), (2, "pruned")):
            fig.add_heatmap(
                z=w[key], x=w["concepts"], y=[f"class {k}" for k in range(len(w[key]))],
                colorscale="RdBu", zmin=-top, zmax=top, showscale=row == 1 and col == 2,
                row=row, col=col,
            )  # fmt: skip
    fig.update_layout(
        title="Post-hoc CBM head weights on standardised concept margins", height=700, width=1100
    )
    fig.update_xaxes(title_text="concept")
    fig.update_yaxes(title_text="class")
    return fig
