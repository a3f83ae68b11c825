"""Plotly figures of a batch-size sweep (read the sweep's tables only; the computing lives
in :mod:`dynalens.dynamics.sweep` and :mod:`dynalens.dynamics.cbs`).

* :func:`plot_pareto_fronts` -- McCandlish et al. (2018) Fig. 1 / 7: examples ``E``
  against steps ``S`` to each target loss, one front per target, measured points and the
  fitted hyperbola ``(S/S_min − 1)(E/E_min − 1) = 1`` with its corner ``(2 S_min, 2 E_min)``
  at ``B = B_crit``.
* :func:`plot_critical_batch_size` -- McCandlish et al. Fig. 4 / 8: ``B_crit`` per target
  (bootstrap interval) against the loss, with ``B_simple`` measured along a training run at
  the same losses, and Zhang et al.'s CBS implied by the fit.
* :func:`plot_mccandlish` -- both side by side (the README figure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dynalens._optional import require

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]  # fmt: skip


def _fits_ok(fits: Any) -> Any:
    return fits[np.isfinite(fits["b_crit"])] if "b_crit" in fits else fits.iloc[:0]


def _pareto_traces(go: Any, table: Any, fits: Any, *, legend: bool = True) -> list[Any]:
    traces = []
    fit_by = {float(r["target"]): r for _, r in _fits_ok(fits).iterrows()}
    for i, (target, part) in enumerate(table.groupby("target", sort=False)):
        color = COLORS[i % len(COLORS)]
        pts = part[np.isfinite(part["steps"])]
        name = f"loss {target:g}"
        traces.append(go.Scatter(
            x=pts["steps"], y=pts["examples"], mode="markers", name=name, legendgroup=name,
            showlegend=legend, marker={"color": color, "size": 7},
            customdata=pts[["batch_size", "lr"]].to_numpy(),
            hovertemplate=(f"{name}<br>B=%{{customdata[0]}}, lr=%{{customdata[1]:.3g}}"
                           "<br>S=%{x:.1f}, E=%{y:.0f}<extra></extra>"),
        ))  # fmt: skip
        f = fit_by.get(float(target))
        if f is not None:
            b = np.geomspace(pts["batch_size"].min() / 4, pts["batch_size"].max() * 4, 200)
            s = f["s_min"] + f["e_min"] / b
            traces.append(go.Scatter(
                x=s, y=s * b, mode="lines", legendgroup=name, showlegend=False,
                line={"color": color, "width": 1.5}, hoverinfo="skip",
            ))  # fmt: skip
            traces.append(go.Scatter(
                x=[2 * f["s_min"]], y=[2 * f["e_min"]], mode="markers", legendgroup=name,
                showlegend=False, marker={"color": color, "symbol": "x", "size": 9},
                hovertemplate=f"{name}: B_crit={f['b_crit']:.0f}<extra></extra>",
            ))  # fmt: skip
    return traces


def _bcrit_traces(go: Any, fits: Any, b_simple_curve: Any, *, legend: bool = True) -> list[Any]:
    ok = _fits_ok(fits)
    traces = []
    if b_simple_curve is not None and len(b_simple_curve):
        c = b_simple_curve[np.isfinite(b_simple_curve["b_simple"])].sort_values("step")
        top = 2.0 * float(ok["target"].max()) if len(ok) else np.inf
        c = c[(c["b_simple"] > 0) & (c["loss"] <= top)]  # the range of the targets
        traces.append(go.Scatter(
            x=c["loss"], y=c["b_simple"], mode="markers", name="B_simple along training",
            showlegend=legend, marker={"color": "rgba(120,120,120,0.35)", "size": 4},
            hovertemplate="step %{customdata}<br>loss %{x:.3g}: B_simple %{y:.0f}<extra></extra>",
            customdata=c["step"],
        ))  # fmt: skip
    if "b_simple" in ok:
        g = ok[np.isfinite(ok["b_simple"])]
        hi = np.where(np.isfinite(g["b_simple_high"]), g["b_simple_high"], g["b_simple"] * 10)
        traces.append(go.Scatter(
            x=g["target"], y=g["b_simple"], mode="markers+lines", name="B_simple at the loss",
            showlegend=legend, marker={"color": "#7f7f7f", "size": 9, "symbol": "square"},
            line={"color": "#7f7f7f", "dash": "dot", "width": 1},
            error_y={"type": "data", "symmetric": False, "array": hi - g["b_simple"],
                     "arrayminus": g["b_simple"] - g["b_simple_low"], "thickness": 1},
        ))  # fmt: skip
    hi = np.where(np.isfinite(ok["b_crit_high"]), ok["b_crit_high"], ok["b_crit"] * 10)
    traces.append(go.Scatter(
        x=ok["target"], y=ok["b_crit"], mode="markers+lines", name="B_crit (McCandlish fit)",
        showlegend=legend, marker={"color": "#d62728", "size": 10},
        line={"color": "#d62728", "width": 1.5},
        error_y={"type": "data", "symmetric": False, "array": hi - ok["b_crit"],
                 "arrayminus": ok["b_crit"] - ok["b_crit_low"], "thickness": 1.2},
    ))  # fmt: skip
    traces.append(go.Scatter(
        x=ok["target"], y=ok["cbs_zhang_model"], mode="markers+lines",
        name="CBS (Zhang et al., 20 % overhead)", showlegend=legend,
        marker={"color": "#1f77b4", "size": 8, "symbol": "diamond"},
        line={"color": "#1f77b4", "width": 1, "dash": "dash"},
    ))  # fmt: skip
    return traces


def plot_pareto_fronts(table: Any, fits: Any, *, title: str | None = None) -> Any:
    """``E`` vs ``S`` to each target (log-log): measured best runs per batch size (markers),
    the fitted front (line) and its ``B_crit`` corner (x).

    Args:
        table: :attr:`SweepResult.table`; fits: :meth:`SweepResult.fit`.
    """
    go = require("plotly.graph_objects", "plot_pareto_fronts")
    fig = go.Figure(_pareto_traces(go, table, fits))
    fig.update_layout(title=title or "Steps vs examples to reach each training loss",
                      xaxis_title="optimizer steps S", yaxis_title="examples E = B·S",
                      template="plotly_white", width=760, height=560)  # fmt: skip
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


def plot_critical_batch_size(
    fits: Any, b_simple_curve: Any = None, *, title: str | None = None
) -> Any:
    """``B_crit`` per target loss against ``B_simple`` measured at the same losses."""
    go = require("plotly.graph_objects", "plot_critical_batch_size")
    fig = go.Figure(_bcrit_traces(go, fits, b_simple_curve))
    fig.update_layout(title=title or "Critical batch size vs noise scale",
                      xaxis_title="training loss", yaxis_title="batch size (examples)",
                      template="plotly_white", width=760, height=560,
                      legend={"x": 0.01, "y": 0.01})  # fmt: skip
    ticks = sorted(float(v) for v in fits["target"])
    fig.update_xaxes(type="log", autorange="reversed", tickvals=ticks,
                     ticktext=[f"{v:g}" for v in ticks])  # fmt: skip
    fig.update_yaxes(type="log")
    return fig


def plot_mccandlish(
    table: Any, fits: Any, b_simple_curve: Any = None, *, title: str | None = None
) -> Any:
    """The two panels side by side (the README figure)."""
    go = require("plotly.graph_objects", "plot_mccandlish")
    subplots = require("plotly.subplots", "plot_mccandlish")
    fig = subplots.make_subplots(
        rows=1, cols=2, horizontal_spacing=0.1,
        subplot_titles=("S–E Pareto fronts per target loss",
                        "B_crit (sweep) vs B_simple (along training)"),
    )  # fmt: skip
    for t in _pareto_traces(go, table, fits):
        fig.add_trace(t, row=1, col=1)
    for t in _bcrit_traces(go, fits, b_simple_curve):
        fig.add_trace(t, row=1, col=2)
    targets = ", ".join(f"{v:g}" for v in sorted(table["target"].unique(), reverse=True))
    fig.update_layout(title=title or f"Critical batch size (targets: {targets})",
                      template="plotly_white", width=1320, height=540,
                      legend={"x": 1.02, "y": 1.0})  # fmt: skip
    fig.update_xaxes(type="log", title_text="optimizer steps S", row=1, col=1)
    fig.update_yaxes(type="log", title_text="examples E = B·S", row=1, col=1)
    ticks = sorted(float(v) for v in table["target"].unique())
    fig.update_xaxes(type="log", autorange="reversed", title_text="training loss", row=1, col=2,
                     tickvals=ticks, ticktext=[f"{v:g}" for v in ticks])  # fmt: skip
    fig.update_yaxes(type="log", title_text="batch size", row=1, col=2)
    return fig
