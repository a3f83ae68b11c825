"""Figures shared by every analysis: curves of the store's scalar table, and saving.

``plot_scalars(store, ["loss", "gns.b_simple"])`` draws any scalars a run logged (loss,
learning rate, the noise scale, the instruments of :mod:`dynalens.dynamics`) against the
step; ``plot_scalar_panels(store, {"loss": ["loss"], "accuracy": [...]})`` stacks panels
that share the x axis, each with its own labelled y axis (quantities of different units
never share an axis). ``save_figure`` writes self-contained HTML and a PNG copy.

PNG copies are rendered by kaleido 0.2.1 (pinned by ``make install`` and the ``plot``
extra), which carries its own headless Chromium, so they need no browser on the machine.
kaleido 1.x instead drives an installed Chrome, which a fresh machine does not have; where
rendering fails, the HTML is still written, a :class:`MissingPNGWarning` says why once, and
:func:`png_problem` returns the reason so that reports can say it too.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from dynalens._optional import require
from dynalens.errors import InvalidParameterError, close_matches

__all__ = ["MissingPNGWarning", "plot_scalar_panels", "plot_scalars", "png_problem", "save_figure"]


class MissingPNGWarning(UserWarning):
    """A figure's PNG copy could not be rendered (its HTML was written); the message says
    why and how to fix it."""


#: why PNG rendering failed in this process (None: it has not failed); set once, so that
#: later figures skip a renderer known not to work
_PNG_STATE: dict[str, str | None] = {"problem": None}


def png_problem() -> str | None:
    """Why this process writes no PNG copies of figures, or ``None`` when it does (or has
    not tried yet)."""
    return _PNG_STATE["problem"]


def _scalar_table(source: Any, columns: list[str], x: str) -> Any:
    df = source.scalars() if hasattr(source, "scalars") else source
    missing = [c for c in [*columns, x] if c not in df.columns]
    if missing:
        have = [c for c in df.columns if c != x]
        raise InvalidParameterError(
            f"no scalar {missing[0]!r} in the table{close_matches(missing[0], have)} "
            f"Scalars: {', '.join(have) or 'none'}."
        )
    return df


def plot_scalars(
    source: Any,
    columns: list[str],
    *,
    title: str = "training",
    x: str = "step",
    log_x: bool = True,
    log_y: bool = False,
    y_title: str | None = None,
) -> Any:
    """Line plots of scalar-table columns against ``x`` on one y axis.

    Args:
        source: a :class:`~dynalens.probe.store.Store` (its ``scalars()`` are read) or a
            DataFrame with the columns.
        columns: the scalars to draw; names the table lacks are an error listing those
            it has. Columns of different units belong in :func:`plot_scalar_panels`.
        y_title: the y-axis label (default: the column names).
    """
    go = require("plotly.graph_objects", "plot_scalars")
    df = _scalar_table(source, columns, x)
    fig = go.Figure()
    for col in columns:
        part = df[[x, col]].dropna()
        fig.add_trace(go.Scatter(x=part[x], y=part[col], mode="lines", name=col))
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y_title or ", ".join(columns),
                      template="plotly_white", width=760, height=360)  # fmt: skip
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def plot_scalar_panels(
    source: Any,
    panels: dict[str, list[str]],
    *,
    title: str = "training",
    x: str = "step",
    x_title: str | None = None,
    log_x: bool = True,
    names: dict[str, str] | None = None,
    y_ranges: dict[str, tuple[float, float]] | None = None,
) -> Any:
    """Stacked panels sharing the x axis: one per ``{y-axis label: [columns]}`` entry.

    Args:
        source: a Store or a DataFrame, as in :func:`plot_scalars`.
        panels: y-axis label -> the columns drawn in that panel, top panel first.
        x_title: the x-axis label (default ``x``).
        names: legend names of columns (default the column names).
        y_ranges: y-axis label -> fixed (low, high) range, e.g. ``(0, 1)`` for accuracy.
    """
    go = require("plotly.graph_objects", "plot_scalar_panels")
    subplots = require("plotly.subplots", "plot_scalar_panels")
    if not panels:
        raise InvalidParameterError("panels is empty; pass {'y-axis label': ['column', ...]}.")
    df = _scalar_table(source, [c for cols in panels.values() for c in cols], x)
    names = names or {}
    fig = subplots.make_subplots(rows=len(panels), cols=1, shared_xaxes=True,
                                 vertical_spacing=0.1)  # fmt: skip
    for row, (label, cols) in enumerate(panels.items(), start=1):
        for col in cols:
            part = df[[x, col]].dropna()
            fig.add_trace(
                go.Scatter(x=part[x], y=part[col], mode="lines" if len(part) > 30 else
                           "lines+markers", name=names.get(col, col)),
                row=row, col=1,
            )  # fmt: skip
        fig.update_yaxes(title_text=label, row=row, col=1)
        if y_ranges and label in y_ranges:
            fig.update_yaxes(range=list(y_ranges[label]), row=row, col=1)
        if log_x:
            fig.update_xaxes(type="log", row=row, col=1)
    fig.update_xaxes(title_text=x_title or x, row=len(panels), col=1)
    fig.update_layout(
        title=title,
        template="plotly_white",
        width=760,
        height=220 + 220 * len(panels),
        legend={"orientation": "h", "yanchor": "top", "y": -0.12, "x": 0},
    )
    return fig


def _explain_png_failure(exc: BaseException) -> str:
    try:
        import kaleido
    except ImportError:
        return (
            "kaleido, the PNG renderer, is not installed; `make install` (or "
            "pip install 'dynalens[plot]') installs kaleido 0.2.1, which carries its own "
            "headless Chromium."
        )
    version = str(getattr(kaleido, "__version__", "unknown"))
    if version.split(".")[0].isdigit() and int(version.split(".")[0]) >= 1:
        return (
            f"kaleido {version} renders through an installed Chrome or Chromium and could "
            f"not use one ({type(exc).__name__}: {str(exc).strip()[:200]}). dynalens pins "
            "kaleido 0.2.1, which carries its own headless Chromium: "
            "pip install 'kaleido==0.2.1' 'plotly<7' (or `make install`)."
        )
    return f"kaleido {version} failed to render ({type(exc).__name__}: {str(exc).strip()[:200]})."


def _write_png(fig: Any, path: Path, scale: float) -> None:
    with warnings.catch_warnings():
        # plotly 6 announces the end of kaleido 0.x support on every image: not about
        # the figure, and the pin (plotly < 7) keeps it working
        warnings.simplefilter("ignore", DeprecationWarning)
        fig.write_image(path, scale=scale)


def save_figure(
    fig: Any, path: str | os.PathLike[str], *, png: bool = True, scale: float = 2.0
) -> list[Path]:
    """Write ``fig`` as self-contained HTML (plotly.js inlined: works offline) and, with
    ``png=True``, as a PNG next to it (``scale`` times the figure's pixel size).

    Returns the files written. Where the PNG cannot be rendered the HTML is still
    written, a :class:`MissingPNGWarning` says why (once per process) and
    :func:`png_problem` returns the reason; later figures do not retry.
    """
    html = Path(path).with_suffix(".html")
    html.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(html, include_plotlyjs=True)
    written = [html]
    if png and _PNG_STATE["problem"] is None:
        out = html.with_suffix(".png")
        try:
            _write_png(fig, out, scale)
        except Exception as exc:  # the renderer, not the figure: HTML is written
            problem = _explain_png_failure(exc)
            _PNG_STATE["problem"] = problem
            warnings.warn(
                f"no PNG copies of figures in this process (the HTML files are written): {problem}",
                MissingPNGWarning,
                stacklevel=2,
            )
        else:
            written.append(out)
    return written
