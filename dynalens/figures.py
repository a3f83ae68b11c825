"""Figures shared by every analysis: curves of the store's scalar table, and saving.

``plot_scalars(store, ["loss", "gns.b_simple"])`` draws any scalars a run logged (loss,
learning rate, the noise scale, the instruments of :mod:`dynalens.dynamics`) against the
step; ``save_figure`` writes self-contained HTML and, when kaleido can render, PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dynalens._optional import require
from dynalens.errors import InvalidParameterError, close_matches


def plot_scalars(
    source: Any,
    columns: list[str],
    *,
    title: str = "training",
    x: str = "step",
    log_x: bool = True,
    log_y: bool = False,
) -> Any:
    """Line plots of scalar-table columns against ``x``.

    Args:
        source: a :class:`~dynalens.probe.store.Store` (its ``scalars()`` are read) or a
            DataFrame with the columns.
        columns: the scalars to draw; names the table lacks are an error listing those
            it has.
    """
    go = require("plotly.graph_objects", "plot_scalars")
    df = source.scalars() if hasattr(source, "scalars") else source
    missing = [c for c in columns if c not in df.columns]
    if missing:
        have = [c for c in df.columns if c != x]
        raise InvalidParameterError(
            f"no scalar {missing[0]!r} in the table{close_matches(missing[0], have)} "
            f"Scalars: {', '.join(have) or 'none'}."
        )
    fig = go.Figure()
    for col in columns:
        part = df[[x, col]].dropna()
        fig.add_trace(go.Scatter(x=part[x], y=part[col], mode="lines", name=col))
    fig.update_layout(title=title, xaxis_title=x, template="plotly_white", width=760, height=360)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str], *, png: bool = True) -> list[Path]:
    """Write ``fig`` as self-contained HTML (plotly.js inlined: works offline) and, when
    kaleido can render, as PNG next to it. Returns the files written."""
    html = Path(path).with_suffix(".html")
    html.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(html, include_plotlyjs=True)
    written = [html]
    if png:
        out = html.with_suffix(".png")
        try:
            fig.write_image(out, scale=2)
            written.append(out)
        except Exception:  # kaleido missing, or no browser for it: HTML is enough
            pass
    return written
