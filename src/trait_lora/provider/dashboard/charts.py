"""Loss curves as SVG, drawn by hand: the api-server should not import matplotlib for a page view, and
an SVG in a ``data:`` URI needs no second (authenticated) request from inside the UI's iframe."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from html import escape

# Distinct, colour-blind-friendly (Okabe-Ito), cycled when there are more traits than colours.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")

Curve = Sequence[Sequence[float]]


def _ticks(low: float, high: float) -> list[float]:
    if high <= low:
        return [low]
    return [low + (high - low) * i / 4 for i in range(5)]


def _step_ticks(low: float, high: float) -> list[int]:
    """Whole steps only, each labelled once (1, 2, 2, 3 is what rounding five even ticks gives)."""
    first, last = math.ceil(low), math.floor(high)
    stride = max(1, math.ceil((last - first) / 5))
    return list(range(first, last + 1, stride))


def loss_svg(curves: Mapping[str, Curve], *, width: int = 760, height: int = 300, legend: bool = True) -> str:
    """Every curve on shared axes: step on x, training loss on y. Names are escaped (they are untrusted)."""
    curves = {name: pts for name, pts in curves.items() if pts}
    compact = height < 100  # a sparkline in a table row: the line alone, no axes to read
    left, right, top, bottom = (2, 2, 2, 2) if compact else (56, 12, 12, 34)
    # the legend gets its own column right of the plot: it never covers a curve
    key_w = 160 if legend and not compact and curves else 0
    shown = max(1, (height - top - 8) // 14)  # legend rows that fit; the rest summarised
    right += key_w
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [p[0] for pts in curves.values() for p in pts] or [0.0, 1.0]
    ys = [p[1] for pts in curves.values() for p in pts] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#999"/>',
    ]
    for y in [] if compact else _ticks(y0, y1):
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>'
            f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>'
        )
    for x in [] if compact else _step_ticks(x0, x1):
        parts.append(f'<text x="{sx(x):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{x}</text>')
    if not compact:
        parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">step</text>')
        parts.append(
            f'<text x="12" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 12 {top + plot_h / 2:.0f})">loss</text>'
        )
    for i, (name, pts) in enumerate(sorted(curves.items())):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{sx(p[0]):.1f},{sy(p[1]):.1f}" for p in pts)
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}">'
            f"<title>{escape(name)}</title></polyline>"
        )
        if len(pts) == 1:  # a one-step run is a point, not an invisible line
            parts.append(f'<circle cx="{sx(pts[0][0]):.1f}" cy="{sy(pts[0][1]):.1f}" r="3" fill="{colour}"/>')
        if key_w and i < shown:
            ly = top + 10 + 14 * i
            kx = left + plot_w + 10
            label = escape(name[:22]) if i < shown - 1 or len(curves) <= shown else f"+{len(curves) - i} more"
            parts.append(
                f'<line x1="{kx}" x2="{kx + 18}" y1="{ly - 4}" y2="{ly - 4}" '
                f'stroke="{colour}" stroke-width="2"/><text x="{kx + 22}" y="{ly}">{label}</text>'
            )
    if not curves and not compact:
        parts.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
            'fill="#777">no loss recorded</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")
