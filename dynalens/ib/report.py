"""A self-contained HTML report of several plotly figures (plotly.js inlined once, so the
file opens offline)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any


def write_report(
    path: str | os.PathLike[str],
    title: str,
    sections: list[tuple[str, str, list[Any]]],
) -> Path:
    """Write ``sections`` -- ``(heading, text, [figures])`` -- to one HTML file."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1600px;margin:2em auto;"
        "padding:0 1em;color:#222}.row{display:flex;flex-wrap:wrap;gap:1em}"
        "p{max-width:60em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    first = True
    for heading, text, figures in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(text)}</p><div class='row'>")
        for fig in figures:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
            first = False
        parts.append("</div>")
    parts.append("</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
