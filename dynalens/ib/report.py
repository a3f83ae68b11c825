"""A self-contained HTML report: sections of text, a summary table, notes and plotly
figures (plotly.js inlined once, so the file opens offline)."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1600px;margin:2em auto;padding:0 1em;"
    "color:#222}.row{display:flex;flex-wrap:wrap;gap:1em}p{max-width:60em}"
    "p.note{color:#555;border-left:3px solid #ccc;padding-left:.7em}"
    "table.summary{border-collapse:collapse;margin:1em 0}"
    "table.summary th,table.summary td{border:1px solid #ccc;padding:.25em .6em}"
    "table.summary td.num{text-align:right;font-variant-numeric:tabular-nums}"
)


@dataclass
class Section:
    """One part of a report.

    Attributes:
        heading: the section's title.
        text: its leading paragraph (plain text, escaped).
        table_html: a table built by dynalens (e.g.
            :func:`~dynalens.ib.summary.summary_table_html`), inserted as is.
        notes: paragraphs that say what a caveat means (plain text, escaped).
        figures: plotly figures, each with its own title.
    """

    heading: str
    text: str = ""
    table_html: str = ""
    notes: list[str] = field(default_factory=list)
    figures: list[Any] = field(default_factory=list)


def write_report(
    path: str | os.PathLike[str],
    title: str,
    sections: list[Section],
    *,
    intro: str = "",
    notes: list[str] | None = None,
) -> Path:
    """Write ``sections`` to one HTML file under ``title``; ``intro`` is a paragraph
    before the sections and ``notes`` paragraphs after them (plain text)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")
    first = True
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.heading)}</h2>")
        if sec.text:
            parts.append(f"<p>{html.escape(sec.text)}</p>")
        parts.append(sec.table_html)
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in sec.notes]
        parts.append("<div class='row'>")
        for fig in sec.figures:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
            first = False
        parts.append("</div>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes or []]
    parts.append("</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
