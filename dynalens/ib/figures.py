"""Plotly figures of the information plane and of the training run behind it (read from
tables only; computing lives in :mod:`dynalens.ib.plane`). Generic scalar curves and
saving: :mod:`dynalens.figures`."""

from __future__ import annotations

import math
from typing import Any

from dynalens._optional import require

NATS_PER_BIT = math.log(2.0)


def plot_information_plane(
    table: Any, *, title: str | None = None, units: str = "bits", show_bounds: bool = True
) -> Any:
    """The information plane as the papers draw it: one line per layer through its
    (I(X;T), I(T;Y)) points, markers coloured by epoch (or step) on a log scale.

    Args:
        table: the DataFrame of :func:`~dynalens.ib.plane.information_plane`.
        units: ``"bits"`` (the papers' axes) or ``"nats"`` (the table's).
        show_bounds: draw the estimator's lower / upper bounds on I(X;T) as error bars.
    """
    go = require("plotly.graph_objects", "plot_information_plane")
    scale = NATS_PER_BIT if units == "bits" else 1.0
    time_col = "epoch" if table["epoch"].notna().all() else "step"
    fig = go.Figure()
    cmin = math.log10(1 + float(table[time_col].min()))
    cmax = math.log10(1 + float(table[time_col].max()))
    for i, (site, part) in enumerate(table.groupby("layer", sort=True)["site"].first().items()):
        rows = table[table["layer"] == site].sort_values("step")
        name = f"layer {site}: {part}"
        err = None
        if show_bounds and rows["I_XT_upper"].notna().any():
            err = {
                "type": "data",
                "symmetric": False,
                "array": (rows["I_XT_upper"] - rows["I_XT"]) / scale,
                "arrayminus": (rows["I_XT"] - rows["I_XT_lower"]) / scale,
                "thickness": 0.7,
                "width": 0,
            }
        fig.add_trace(
            go.Scatter(
                x=rows["I_XT"] / scale,
                y=rows["I_TY"] / scale,
                mode="lines+markers",
                name=name,
                error_x=err,
                line={"width": 1, "color": "rgba(120,120,120,0.5)"},
                marker={
                    "size": 7,
                    "color": [math.log10(1 + float(v)) for v in rows[time_col]],
                    "colorscale": "Viridis",
                    "cmin": cmin,
                    "cmax": cmax,
                    "showscale": i == 0,
                    "colorbar": {"title": f"log10(1+{time_col})"},
                    "symbol": i % 24,
                },
                customdata=rows[["step", time_col]].to_numpy(),
                hovertemplate=(
                    f"{name}<br>I(X;T)=%{{x:.3f}} {units}<br>I(T;Y)=%{{y:.3f}} {units}"
                    f"<br>step %{{customdata[0]}}, {time_col} %{{customdata[1]}}<extra></extra>"
                ),
            )
        )
    est = ", ".join(sorted(set(map(str, table["estimator"]))))
    fig.update_layout(
        title=title or f"Information plane ({est})",
        xaxis_title=f"I(X;T) [{units}]",
        yaxis_title=f"I(T;Y) [{units}]",
        template="plotly_white",
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
        width=760,
        height=580,
    )
    return fig


def plot_training_curves(
    source: Any, *, title: str = "training", steps_per_epoch: int | None = None
) -> Any:
    """Loss and accuracy of an information-plane run against the epoch, on two panels
    with their own labelled y axes: the mean training-batch cross-entropy of each epoch
    (nats), and the accuracy on the training batches (epoch mean) and on the held-out
    inputs (at the recorded epochs).

    Args:
        source: the run's :class:`~dynalens.probe.store.Store` (its scalars and its
            config's ``steps_per_epoch``), or its scalar DataFrame with ``steps_per_epoch``.
        steps_per_epoch: optimizer steps per epoch (read from the store when omitted).
    """
    from dynalens.errors import InvalidParameterError
    from dynalens.figures import plot_scalar_panels

    df = source.scalars() if hasattr(source, "scalars") else source
    if steps_per_epoch is None and hasattr(source, "meta"):
        steps_per_epoch = source.meta.get("config", {}).get("steps_per_epoch")
    if not steps_per_epoch:
        raise InvalidParameterError(
            "plot_training_curves needs steps_per_epoch: pass the run's Store (recorded by "
            "dynalens.ib.training) or steps_per_epoch=."
        )
    per_step = df.dropna(subset=["loss"]).assign(epoch=lambda d: d["step"] // steps_per_epoch + 1)
    curves = per_step.groupby("epoch", as_index=False)[["loss", "train_accuracy"]].mean()
    if "test_accuracy" in df:
        test = df.dropna(subset=["test_accuracy"])[["epoch", "test_accuracy"]]
        test = test.astype({"epoch": "int64"})
        curves = curves.merge(test, on="epoch", how="left")
    acc = [c for c in ("train_accuracy", "test_accuracy") if c in curves]
    return plot_scalar_panels(
        curves,
        {"training loss (nats)": ["loss"], "accuracy": acc},
        title=title,
        x="epoch",
        x_title="epoch (log scale)",
        names={"loss": "loss on the training batches (epoch mean)",
               "train_accuracy": "accuracy on the training batches (epoch mean)",
               "test_accuracy": "accuracy on the held-out inputs"},
        y_ranges={"accuracy": (0.0, 1.02)},
    )  # fmt: skip
