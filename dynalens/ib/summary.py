"""Per-layer summaries of an information-plane table, in bits, for terminals and reports.

``summarize(table)`` gives, per layer, the peak and final I(X;T), the compression
``peak - final`` (how much I(X;T) the layer lost after its peak: the "compression phase"
of Shwartz-Ziv & Tishby 2017) and the final I(T;Y), in nats as the table. The rest turns
summaries into text in bits (the papers' unit, 1 bit = ln 2 nats): a fixed-width table for
the terminal (``dynalens reproduce``), an HTML table for the report, and one sentence per
network that states what the numbers show.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

NATS_PER_BIT = math.log(2.0)

#: a layer "compresses" when its I(X;T) ends at least this many bits below its peak
COMPRESSION_BITS = 0.25

#: (key, column heading) of the per-layer values shown, all in bits
_COLUMNS = (
    ("I_XT_peak", "peak I(X;T)"),
    ("I_XT_final", "final I(X;T)"),
    ("compression", "compression"),
    ("I_TY_final", "final I(T;Y)"),
)


def summarize(table: Any) -> list[dict[str, Any]]:
    """Per layer (input side first): ``layer, site, I_XT_peak, I_XT_final, compression
    = peak - final, I_TY_final`` (nats), and ``saturated``: whether binning put the
    inputs into nearly one pattern each at the final step (then I(X;T) is log n, a
    property of the bins; see :func:`~dynalens.ib.plane.information_plane`)."""
    out = []
    for layer, part in table.sort_values("step").groupby("layer"):
        peak = float(part["I_XT"].max())
        final = float(part["I_XT"].iloc[-1])
        sat = part["binning_saturated"].iloc[-1] if "binning_saturated" in part else False
        out.append({
            "layer": int(layer),
            "site": str(part["site"].iloc[0]),
            "I_XT_peak": peak,
            "I_XT_final": final,
            "compression": peak - final,
            "I_TY_final": float(part["I_TY"].iloc[-1]),
            "saturated": bool(sat) if sat == sat else False,  # NaN (old caches): False
        })  # fmt: skip
    return out


def _bits(value: float) -> str:
    return f"{value / NATS_PER_BIT:.2f}" if math.isfinite(value) else "-"


def format_summary(summary: list[dict[str, Any]], title: str) -> str:
    """A fixed-width table of one summary, in bits, under ``title``."""
    head = ["layer", *(h for _, h in _COLUMNS)]
    rows = [[f"{s['layer']} {s['site']}", *(_bits(s[k]) for k, _ in _COLUMNS)] for s in summary]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"{title} (bits)"]
    for r in [head, *rows]:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines)


def summary_table_html(summaries: Mapping[str, list[dict[str, Any]]]) -> str:
    """One HTML table, a row per layer, a column group per estimator, values in bits;
    binning values that measure the bins (saturated) are marked ``*``."""
    labels = list(summaries)
    layers = {(s["layer"], s["site"]) for summ in summaries.values() for s in summ}
    by = {(lab, s["layer"]): s for lab, summ in summaries.items() for s in summ}
    head1 = "<th rowspan='2'>layer</th>" + "".join(
        f"<th colspan='{len(_COLUMNS)}'>{html.escape(lab)}</th>" for lab in labels
    )
    head2 = "".join(f"<th>{h}</th>" for _ in labels for _, h in _COLUMNS)
    body = []
    for layer, site in sorted(layers):
        cells = [f"<td>{layer}: {html.escape(site)}</td>"]
        for lab in labels:
            s = by.get((lab, layer))
            for key, _ in _COLUMNS:
                if s is None:
                    cells.append("<td>-</td>")
                    continue
                mark = "*" if s["saturated"] and key == "I_XT_final" else ""
                cells.append(f"<td class='num'>{_bits(s[key])}{mark}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<table class='summary'><thead><tr>" + head1 + "</tr><tr>" + head2 + "</tr></thead>"
        "<tbody>" + "".join(body) + "</tbody></table>"
    )


def conclusion(network: str, summaries: Mapping[str, list[dict[str, Any]]]) -> str:
    """One sentence on what the summaries of one network show: the final I(T;Y) of its
    last hidden layer, whether that layer compresses under each estimator (loses at
    least ``COMPRESSION_BITS`` of I(X;T) after its peak), and the largest loss of any
    layer."""
    fit: list[str] = []
    yes: list[tuple[str, str]] = []  # (estimator, "peak -> final bits")
    no: list[tuple[str, str]] = []
    best: tuple[float, int, str] = (-math.inf, 0, "")
    for label, summ in summaries.items():
        last = max(summ, key=lambda s: s["layer"])
        fit.append(f"{_bits(last['I_TY_final'])} bits ({label})")
        path = f"{_bits(last['I_XT_peak'])} -> {_bits(last['I_XT_final'])} bits"
        compresses = last["compression"] / NATS_PER_BIT >= COMPRESSION_BITS
        (yes if compresses else no).append((label, path))
        top = max(summ, key=lambda s: s["compression"])
        best = max(best, (top["compression"], top["layer"], label))

    def paths(items: list[tuple[str, str]]) -> str:
        return " and ".join(f"{path} ({label})" for label, path in items)

    def by(items: list[tuple[str, str]]) -> str:
        return " and ".join(f"{label} ({path})" for label, path in items)

    if yes and no:
        verdict = f"compresses by {by(yes)} but not by {by(no)}"
    elif yes:
        verdict = f"compresses: its I(X;T) falls {paths(yes)}"
    else:
        verdict = f"does not compress (I(X;T) peak -> final: {paths(no)})"
    return (
        f"{network}: the last hidden layer ends with I(T;Y) = {' and '.join(fit)}, and it "
        f"{verdict}; the most any layer loses after its peak is {_bits(best[0])} bits "
        f"(layer {best[1]}, {best[2]})."
    )


def describe_estimator(method: str, noise_var: float | None, params: Mapping[str, Any]) -> str:
    """A figure title's words for an estimator setting, e.g. ``binning, 30 bins on [-1, 1]``
    or ``noisy (known channel), noise variance 0.01``."""
    if method in ("binning", "adaptive_binning"):
        bins = params.get("n_bins", 30)
        rng = params.get("range")
        where = (
            f" on [{rng[0]:g}, {rng[1]:g}]" if isinstance(rng, (tuple, list))
            else " over each layer's range" if rng == "layer" else ""
        )  # fmt: skip
        kind = "adaptive (entropy-based) binning" if method == "adaptive_binning" else "binning"
        return f"{kind}, {bins} bins{where}"
    names = {"noisy": "noisy (known channel)", "kde": "KDE bound"}
    text = names.get(method, method)
    return f"{text}, noise variance {noise_var:g}" if noise_var is not None else text


def saturation_note(table: Any, label: str, n_inputs: int) -> str | None:
    """What saturated binning means for this table, naming the layers, or ``None`` when
    no measurement saturated."""
    sat = table[table["binning_saturated"].astype(bool)]
    if sat.empty:
        return None
    per_layer = sat.groupby(["layer", "site"]).size()
    total = table.groupby("layer").size()
    layers = ", ".join(
        f"layer {layer} ({site}) at {k} of {int(total[layer])} epochs"
        for (layer, site), k in per_layer.items()
    )
    return (
        f"{label}: {layers}: more than half of the {n_inputs} inputs fall in a bin pattern "
        f"of their own there, so I(X;T) is close to log2 {n_inputs} = "
        f"{math.log2(n_inputs):.1f} bits whatever the layer does: it measures the bins, not "
        "the layer (Saxe et al. 2018). Final values of this kind are marked * in the table; "
        "the noisy estimator measures these layers without bins."
    )
