"""Tiny inline-SVG charts for the HTML report: lines (optionally on a log x axis) and stacked bars,
y axes from zero.

Self-contained on purpose: the report opens without network or plotting libraries. Styling comes
from the page's CSS classes (`.axis`, `.grid`, `.tick`...), colours from `PALETTE`; legends are the
page's (HTML wraps long labels better than SVG), built from `legend()`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

import numpy as np
import numpy.typing as npt

__all__ = [
    "PALETTE",
    "Chart",
    "LegendEntry",
    "Line",
    "Stack",
    "legend",
    "line_chart",
    "nice_ticks",
    "stacked_bars",
]

#: Colour-blind-friendly categorical palette (Okabe-Ito, then Tableau).
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
    "#8c564b",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)

_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 64, 16, 34, 46


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    x_log: bool = False
    x_min: float | None = None
    """Left end of the x axis when the data should not decide it (e.g. 1 for events per read)."""
    width: int = 860
    height: int = 320


@dataclass(frozen=True)
class Line:
    label: str
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    color: int = 0
    dashed: bool = False
    markers: bool = False
    tips: Sequence[str] = field(default_factory=tuple)
    """Per point: a tooltip."""
    tags: Sequence[str] = field(default_factory=tuple)
    """Per point: a short text written beside it."""
    in_legend: bool = True


@dataclass(frozen=True)
class Stack:
    label: str
    heights: npt.NDArray[np.float64]
    color: int = 0


@dataclass(frozen=True)
class LegendEntry:
    label: str
    color: str
    dashed: bool = False


def legend(items: Sequence[Line | Stack]) -> list[LegendEntry]:
    """Legend entries of a chart's lines or stacks, in drawing order."""
    return [
        LegendEntry(i.label, PALETTE[i.color % len(PALETTE)], isinstance(i, Line) and i.dashed)
        for i in items
        if not isinstance(i, Line) or i.in_legend
    ]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (1, 2, 5 times a power of ten apart)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(math.ceil((hi - first) / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0**e
            if lo <= t <= hi:
                ticks.append(t)
    return ticks or [lo, hi]


def _fmt(t: float) -> str:
    if t == 0:
        return "0"
    if abs(t) >= 1e6:
        return f"{t / 1e6:g}M"
    if abs(t) >= 1e4:
        return f"{t / 1e3:g}k"
    return f"{t:,.0f}" if abs(t) >= 10 else f"{t:g}"


class _Axis:
    """Maps data to pixels on one axis."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool, *, to_ticks: bool) -> None:
        """`to_ticks`: widen [lo, hi] to the round ticks around it (y axes), else keep it (x axes)."""
        if log:
            lo, hi = max(lo, 1e-9), max(hi, lo * 10 if hi <= lo else hi)
            self.ticks = _log_ticks(lo, hi)
        else:
            if hi <= lo:
                lo, hi = lo - 1, hi + 1
            self.ticks = nice_ticks(lo, hi)
            if to_ticks:
                lo, hi = min(lo, self.ticks[0]), max(hi, self.ticks[-1])
        self.lo, self.hi, self.a, self.b, self.log = lo, hi, a, b, log

    def __call__(self, v: npt.ArrayLike) -> npt.NDArray[np.float64]:
        x = np.asarray(v, dtype=np.float64)
        if self.log:
            x = np.log10(np.maximum(x, self.lo))
            lo, hi = math.log10(self.lo), math.log10(self.hi)
        else:
            lo, hi = self.lo, self.hi
        return self.a + (x - lo) / (hi - lo) * (self.b - self.a)


def _frame(chart: Chart, xa: _Axis, ya: _Axis) -> list[str]:
    w, h = chart.width, chart.height
    x0, x1 = _MARGIN_LEFT, w - _MARGIN_RIGHT
    y0, y1 = h - _MARGIN_BOTTOM, _MARGIN_TOP
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        f'role="img" aria-label="{escape(chart.title)}">',
        f'<text class="chart-title" x="{x0}" y="20">{escape(chart.title)}</text>',
    ]
    for t in xa.ticks:
        px = float(xa(t))
        if x0 - 0.5 <= px <= x1 + 0.5:
            out.append(f'<line class="grid" x1="{px:.1f}" y1="{y1}" x2="{px:.1f}" y2="{y0}"/>')
            out.append(f'<text class="tick" x="{px:.1f}" y="{y0 + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in ya.ticks:
        py = float(ya(t))
        if y1 - 0.5 <= py <= y0 + 0.5:
            out.append(f'<line class="grid" x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}"/>')
            out.append(f'<text class="tick" x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}"/>')
    out.append(f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}"/>')
    out.append(
        f'<text class="label" x="{(x0 + x1) / 2:.0f}" y="{h - 8}" text-anchor="middle">{escape(chart.x_label)}</text>'
    )
    out.append(
        f'<text class="label" transform="translate(16 {(y0 + y1) / 2:.0f}) rotate(-90)" text-anchor="middle">'
        f"{escape(chart.y_label)}</text>"
    )
    return out


def line_chart(chart: Chart, lines: Sequence[Line]) -> str:
    """Lines (and markers) over shared axes; NaN points are left out."""
    finite = [(ln, np.isfinite(ln.x) & np.isfinite(ln.y)) for ln in lines]
    xs = np.concatenate([ln.x[m] for ln, m in finite] or [np.zeros(0)])
    ys = np.concatenate([ln.y[m] for ln, m in finite] or [np.zeros(0)])
    if chart.x_log:
        xs = xs[xs > 0]
    if xs.size == 0 or ys.size == 0:
        return _empty(chart)
    x_lo = float(xs.min()) if chart.x_min is None else min(chart.x_min, float(xs.min()))
    xa = _Axis(x_lo, float(xs.max()), _MARGIN_LEFT, chart.width - _MARGIN_RIGHT, chart.x_log, to_ticks=False)
    ya = _Axis(0.0, float(ys.max()), chart.height - _MARGIN_BOTTOM, _MARGIN_TOP, False, to_ticks=True)
    out = _frame(chart, xa, ya)
    for ln, m in finite:
        color = PALETTE[ln.color % len(PALETTE)]
        px, py = xa(ln.x[m]), ya(ln.y[m])
        if px.size > 1:
            points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))
            dash = ' stroke-dasharray="6 4"' if ln.dashed else ""
            out.append(f'<polyline class="series" points="{points}" stroke="{color}"{dash}/>')
        if ln.markers or px.size == 1:
            kept = np.flatnonzero(m).tolist()
            for j, (a, b) in zip(kept, zip(px, py, strict=True), strict=True):
                tip = f"<title>{escape(ln.label)}: {escape(ln.tips[j])}</title>" if j < len(ln.tips) else ""
                out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3.5" fill="{color}">{tip}</circle>')
                if j < len(ln.tags):
                    right = a > chart.width - _MARGIN_RIGHT - 60  # near the edge: write it to the left
                    anchor, dx = ("end", -6) if right else ("start", 6)
                    out.append(
                        f'<text class="point-label" x="{a + dx:.1f}" y="{b - 6:.1f}" text-anchor="{anchor}">'
                        f"{escape(ln.tags[j])}</text>"
                    )
    out.append("</svg>")
    return "\n".join(out)


def stacked_bars(chart: Chart, x: npt.NDArray[np.float64], width: float, stacks: Sequence[Stack]) -> str:
    """Bars at x (left edges, each `width` wide), one coloured layer per stack."""
    if not stacks or x.size == 0:
        return _empty(chart)
    total = np.sum([s.heights for s in stacks], axis=0)
    xa = _Axis(
        float(x.min()),
        float(x.max() + width),
        _MARGIN_LEFT,
        chart.width - _MARGIN_RIGHT,
        False,
        to_ticks=False,
    )
    ya = _Axis(
        0.0, float(max(total.max(), 1.0)), chart.height - _MARGIN_BOTTOM, _MARGIN_TOP, False, to_ticks=True
    )
    out = _frame(chart, xa, ya)
    base = np.zeros_like(total, dtype=np.float64)
    bar_w = max(float(xa(width) - xa(0)) - 0.5, 0.8)
    for s in stacks:
        color = PALETTE[s.color % len(PALETTE)]
        for xi, b, hgt in zip(x, base, s.heights, strict=True):
            if hgt > 0:
                top, bottom = float(ya(b + hgt)), float(ya(b))
                out.append(
                    f'<rect x="{float(xa(xi)):.1f}" y="{top:.1f}" width="{bar_w:.1f}" height="{bottom - top:.1f}" '
                    f'fill="{color}"><title>{escape(s.label)}: {hgt:g} at {xi:g}</title></rect>'
                )
        base = base + s.heights
    out.append("</svg>")
    return "\n".join(out)


def _empty(chart: Chart) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {chart.width} 80" width="{chart.width}" '
        f'height="80" role="img" aria-label="{escape(chart.title)}">'
        f'<text class="chart-title" x="{_MARGIN_LEFT}" y="20">{escape(chart.title)}</text>'
        f'<text class="tick" x="{_MARGIN_LEFT}" y="50">nothing to plot</text></svg>'
    )
