"""Small inline SVG charts for the performance page: drawn on the server, no script, no CDN, and only presentation
attributes (the page's Content-Security-Policy allows no inline styles)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

FG, MUTED, GRID, BAR, WARN, BAND = "#e6e8eb", "#8a8f98", "#2a2f36", "#5b8def", "#ff6b6b", "#2f6b3a"


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>' + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", color: str = MUTED, size: int = 10) -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" fill="{color}" font-size="{size}" font-family="sans-serif" '
            f'text-anchor="{anchor}">{escape(text)}</text>')


def bars_per_day(days: Sequence[dict[str, Any]], title: str, width: int = 560, height: int = 90) -> str:
    """A bar per day (``[{"date", "flags"}]``), the busiest day labelled."""
    left, bottom, top = 28, 16, 8
    n = max(1, len(days))
    peak = max([d["flags"] for d in days] + [1])
    step = (width - left - 4) / n
    plot_h = height - bottom - top
    body = [f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" stroke="{GRID}"/>',
            _text(left - 4, top + 8, str(peak), "end"), _text(left - 4, height - bottom, "0", "end")]
    for i, d in enumerate(days):
        h = plot_h * d["flags"] / peak
        x = left + i * step
        if d["flags"]:
            body.append(f'<rect x="{x + 0.5:.1f}" y="{height - bottom - h:.1f}" width="{max(step - 1, 1):.1f}" '
                        f'height="{h:.1f}" fill="{BAR}"><title>{escape(d["date"])}: {d["flags"]}</title></rect>')
    if days:
        body.append(_text(left, height - 3, days[0]["date"]))
        body.append(_text(width - 2, height - 3, days[-1]["date"], "end"))
    return _svg(width, height, body, title)


def interval(value: float | None, low: float | None, high: float | None, title: str, width: int = 220,
             height: int = 22) -> str:
    """A proportion and its 95% interval on a 0-1 axis."""
    left, right = 6, width - 6
    span = right - left
    mid = height / 2
    body = [f'<line x1="{left}" y1="{mid}" x2="{right}" y2="{mid}" stroke="{GRID}"/>']
    for tick in (0.0, 0.5, 1.0):
        x = left + span * tick
        body.append(f'<line x1="{x:.1f}" y1="{mid - 4}" x2="{x:.1f}" y2="{mid + 4}" stroke="{GRID}"/>')
    if value is not None and low is not None and high is not None:
        body.append(f'<line x1="{left + span * low:.1f}" y1="{mid}" x2="{left + span * high:.1f}" y2="{mid}" '
                    f'stroke="{FG}" stroke-width="2"/>')
        body.append(f'<circle cx="{left + span * value:.1f}" cy="{mid}" r="4" fill="{BAR}"/>')
    return _svg(width, height, body, title)


def distribution(values: Sequence[float], expected: Sequence[float] | None, title: str, width: int = 260,
                 height: int = 60, bins: int = 20) -> str:
    """A histogram of numeric values with the card's range shaded; values outside it in red."""
    left, bottom = 4, 14
    lo_v = min(list(values) + (list(expected) if expected else []) or [0.0])
    hi_v = max(list(values) + (list(expected) if expected else []) or [1.0])
    if hi_v - lo_v < 1e-9:
        lo_v, hi_v = lo_v - 0.5, hi_v + 0.5
    pad = (hi_v - lo_v) * 0.05
    lo_v, hi_v = lo_v - pad, hi_v + pad
    span = width - 2 * left

    def x_of(v: float) -> float:
        return left + span * (v - lo_v) / (hi_v - lo_v)

    body: list[str] = []
    if expected:
        band = max(x_of(expected[1]) - x_of(expected[0]), 1)
        body.append(f'<rect x="{x_of(expected[0]):.1f}" y="2" width="{band:.1f}" '
                    f'height="{height - bottom - 2}" fill="{BAND}" fill-opacity="0.45"/>')
    counts = [0] * bins
    outside = [False] * bins
    for v in values:
        b = min(bins - 1, max(0, int((v - lo_v) / (hi_v - lo_v) * bins)))
        counts[b] += 1
        if expected and not (expected[0] <= v <= expected[1]):
            outside[b] = True
    peak = max(counts + [1])
    bw = span / bins
    for b, c in enumerate(counts):
        if c:
            h = (height - bottom - 4) * c / peak
            body.append(f'<rect x="{left + b * bw + 0.5:.1f}" y="{height - bottom - h:.1f}" '
                        f'width="{max(bw - 1, 1):.1f}" height="{h:.1f}" fill="{WARN if outside[b] else BAR}"/>')
    body.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - left}" y2="{height - bottom}" '
                f'stroke="{GRID}"/>')
    body.append(_text(left, height - 2, f"{lo_v + pad:.3g}"))
    body.append(_text(width - left, height - 2, f"{hi_v - pad:.3g}", "end"))
    return _svg(width, height, body, title)


def categories(counts: dict[str, int], outside: Sequence[str], title: str, width: int = 260) -> str:
    """Horizontal bars per value, the ones the card does not list in red."""
    items = list(counts.items())[:8]
    row = 14
    height = max(row, row * len(items)) + 2
    peak = max([c for _, c in items] + [1])
    body: list[str] = []
    for i, (name, c) in enumerate(items):
        y = i * row + 1
        w = (width - 130) * c / peak
        color = WARN if name in outside else BAR
        body.append(_text(0, y + 10, name[:20], "start", FG))
        body.append(f'<rect x="124" y="{y + 2}" width="{max(w, 1):.1f}" height="{row - 4}" fill="{color}"/>')
        body.append(_text(128 + w, y + 10, str(c)))
    return _svg(width, height, body, title)
