"""The report of a capacity run folder (`harness capacity`, read from its `capacity.json`):
`capacity.html` (per host and model: each SLO's metric against throughput with its 95% interval,
the SLO line and the knee marked, and goodput per step) and `capacity.md` (the steps as a table).

Self-contained like `report.html`: inline CSS and SVG, no scripts, nothing fetched. Only reads
`capacity.json`; the per-segment run folders stay ordinary run folders `harness report` reads.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.report.svg import PALETTE, nice_ticks
from harness.report.tables import host_label
from harness.rundir import read_json

__all__ = ["CAPACITY_FILE", "answer_line", "answer_lines", "is_capacity_dir", "read_doc", "write"]

CAPACITY_FILE = "capacity.json"
HTML_NAME = "capacity.html"
MD_NAME = "capacity.md"
_W, _H = 760, 300
_L, _R, _T, _B = 64, 20, 34, 46

CSS = """
body { margin: 0; font: 15px/1.5 system-ui, sans-serif; color: #1f2933; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h2 { border-bottom: 2px solid #e4e7eb; margin-top: 36px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e4e7eb; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
svg.chart { max-width: 100%; height: auto; }
svg .axis { stroke: #52606d; } svg .grid { stroke: #e4e7eb; }
svg .tick { fill: #52606d; font-size: 11px; } svg .label { font-size: 12px; fill: #1f2933; }
svg .chart-title { font-size: 14px; font-weight: 600; fill: #1f2933; }
svg .slo-line { stroke: #D55E00; stroke-width: 2; stroke-dasharray: 6 4; }
svg .knee { fill: none; stroke: #009E73; stroke-width: 3; }
p.muted { color: #52606d; font-size: 14px; }
"""


def is_capacity_dir(path: Path) -> bool:
    return (path / CAPACITY_FILE).is_file()


def _who(target: dict[str, Any]) -> str:
    key = target.get("key") or {}
    return f"{key.get('model') or target.get('model') or '?'} @ {host_label(key.get('host') or target.get('host') or '?')}"


def _unit(doc: dict[str, Any]) -> str:
    return "users" if doc.get("mode") == "users" else "req/s"


def _lv(doc: dict[str, Any], level: float | None) -> str:
    if level is None:
        return "-"
    return str(int(level)) if doc.get("mode") == "users" else f"{level:.3g}"


def answer_line(doc: dict[str, Any], t: dict[str, Any]) -> str:
    """One host and model's answer, e.g. `tiny-chat @ 127.0.0.1:5273: 24 users (24–25), 6,900
    output tok/s, ttft_p95_ms 412 at the limit` (rate mode: `R req/s`). The console's and the
    reports' line."""
    who = _who(t)
    if t.get("not_tried"):
        return f"{who}: not tried (time budget ended)"
    a = t.get("answer") or {}
    lo, hi = a.get("highest_passing"), a.get("lowest_failing")
    unit = _unit(doc)
    budget = ", time budget ended" if t.get("budget_ended") else ""
    hi_text = _lv(doc, hi) if hi is not None else "not reached"
    if not lo:
        return f"{who}: no load level met the SLOs (lowest tried failed: {hi_text} {unit}){budget}"
    extra = ""
    knee = _knee(t)
    if knee is not None:
        j = knee["judgement"]
        if j.get("output_tokens_per_s") is not None:
            extra += f", {j['output_tokens_per_s']:,.0f} output tok/s"
        for s in j.get("slos", []):
            if s.get("value") is not None:
                extra += f", {s['metric']} {s['value']:,.4g}"
        extra += " at the limit"
    if hi is None:
        return f"{who}: at least {_lv(doc, lo)} {unit} (no failing level reached){extra}{budget}"
    return f"{who}: {_lv(doc, lo)} {unit} ({_lv(doc, lo)}–{hi_text}){extra}{budget}"


def answer_lines(doc: dict[str, Any]) -> list[str]:
    return [answer_line(doc, t) for t in doc.get("targets", [])]


def _steps(t: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((s for s in t.get("steps", []) if s.get("judgement")), key=lambda s: s["level"])


def _knee(t: dict[str, Any]) -> dict[str, Any] | None:
    lo = (t.get("answer") or {}).get("highest_passing")
    return next((s for s in _steps(t) if s["level"] == lo and s["verdict"] == "pass"), None)


def _scale(lo: float, hi: float, a: float, b: float) -> Any:
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _axes(title: str, xl: str, yl: str, xs: list[float], ys: list[float]) -> tuple[list[str], Any, Any]:
    xt = nice_ticks(0.0, max(xs) if xs else 1.0)
    yt = nice_ticks(0.0, max(ys) if ys else 1.0)
    sx = _scale(xt[0], xt[-1], _L, _W - _R)
    sy = _scale(yt[0], yt[-1], _H - _B, _T)
    parts = [f'<text class="chart-title" x="{_L}" y="20">{escape(title)}</text>']
    for v in yt:
        y = sy(v)
        parts.append(f'<line class="grid" x1="{_L}" x2="{_W - _R}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{_L - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
    for v in xt:
        x = sx(v)
        parts.append(f'<text class="tick" x="{x:.1f}" y="{_H - _B + 16}" text-anchor="middle">{v:g}</text>')
    parts.append(f'<line class="axis" x1="{_L}" x2="{_W - _R}" y1="{_H - _B}" y2="{_H - _B}"/>')
    parts.append(f'<line class="axis" x1="{_L}" x2="{_L}" y1="{_T}" y2="{_H - _B}"/>')
    parts.append(
        f'<text class="label" x="{(_L + _W - _R) / 2}" y="{_H - 8}" text-anchor="middle">{escape(xl)}</text>'
    )
    parts.append(
        f'<text class="label" transform="translate(14 {(_T + _H - _B) / 2}) rotate(-90)" text-anchor="middle">'
        f"{escape(yl)}</text>"
    )
    return parts, sx, sy


def _svg(parts: list[str], label: str) -> str:
    body = "".join(parts)
    return (
        f'<svg class="chart" role="img" aria-label="{escape(label)}" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def knee_chart(doc: dict[str, Any], t: dict[str, Any], slo_index: int) -> str:
    """One SLO's metric against output throughput, one point per step (whiskers: 95% interval),
    the SLO's limit as a dashed line (`.slo-line`) and the knee (highest passing step) ringed (`.knee`)."""
    steps = _steps(t)
    pts = []
    for s in steps:
        j = s["judgement"]
        sj = j["slos"][slo_index]
        x = j.get("output_tokens_per_s")
        if x is None or sj["value"] is None:
            continue
        pts.append((float(x), float(sj["value"]), sj["ci_low"], sj["ci_high"], s))
    first: dict[str, Any] = (
        steps[0]["judgement"]["slos"][slo_index]
        if steps
        else {"metric": "?", "op": "<", "limit": 0.0, "slo": "?"}
    )
    limit = float(first["limit"])
    ys = [p[1] for p in pts] + [p[3] for p in pts if p[3] is not None] + [limit]
    parts, sx, sy = _axes(
        f"{first['metric']} against throughput — SLO {first['slo']}",
        "output tokens/s",
        first["metric"],
        [p[0] for p in pts],
        ys,
    )
    y_lim = sy(limit)
    parts.append(f'<line class="slo-line" x1="{_L}" x2="{_W - _R}" y1="{y_lim:.1f}" y2="{y_lim:.1f}"/>')
    parts.append(
        f'<text class="label" x="{_W - _R - 4}" y="{y_lim - 5:.1f}" text-anchor="end">SLO {first["op"]} {limit:g}</text>'
    )
    if pts:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, *_ in pts)
        parts.append(
            f'<polyline class="series" fill="none" stroke="{PALETTE[0]}" stroke-width="2" points="{path}"/>'
        )
    for x, y, lo, hi, s in pts:
        cx, cy = sx(x), sy(y)
        if lo is not None and hi is not None:
            parts.append(
                f'<line class="ci" stroke="{PALETTE[0]}" x1="{cx:.1f}" x2="{cx:.1f}" y1="{sy(lo):.1f}" y2="{sy(hi):.1f}"/>'
            )
        colour = PALETTE[2] if s.get("verdict") == "pass" else PALETTE[5]
        parts.append(
            f'<circle class="step {s["verdict"]}" cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}">'
            f"<title>{escape(_lv(doc, s['level']))} {_unit(doc)}: {y:.4g} ({s['verdict']})</title></circle>"
        )
        parts.append(
            f'<text class="tick" x="{cx + 6:.1f}" y="{cy - 6:.1f}">{escape(_lv(doc, s["level"]))}</text>'
        )
    knee = _knee(t)
    if knee is not None:
        for x, y, _lo, _hi, s in pts:
            if s is knee:
                parts.append(f'<circle class="knee" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="9"/>')
                parts.append(
                    f'<text class="label" x="{sx(x):.1f}" y="{sy(y) + 24:.1f}" text-anchor="middle">'
                    f"knee: {escape(_lv(doc, knee['level']))} {_unit(doc)}</text>"
                )
    return _svg(parts, f"{first['metric']} against throughput")


def goodput_chart(doc: dict[str, Any], t: dict[str, Any]) -> str:
    """Per step (by level): throughput (requests/s, light) and goodput (requests/s meeting every
    per-request latency limit, dark) as bars."""
    steps = _steps(t)
    vals = [
        (s, s["judgement"].get("requests_per_s") or 0.0, s["judgement"].get("goodput_per_s") or 0.0)
        for s in steps
    ]
    ys = [max(a, b) for _, a, b in vals] or [1.0]
    yt = nice_ticks(0.0, max(ys) or 1.0)
    sy = _scale(yt[0], yt[-1], _H - _B, _T)
    parts = [f'<text class="chart-title" x="{_L}" y="20">goodput per step</text>']
    for v in yt:
        parts.append(f'<line class="grid" x1="{_L}" x2="{_W - _R}" y1="{sy(v):.1f}" y2="{sy(v):.1f}"/>')
        parts.append(f'<text class="tick" x="{_L - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    n = max(1, len(vals))
    slot = (_W - _R - _L) / n
    for i, (s, total, good) in enumerate(vals):
        x = _L + i * slot + slot * 0.15
        w = slot * 0.7
        for cls, v, colour in (("throughput", total, "#cfd8e3"), ("goodput", good, PALETTE[0])):
            parts.append(
                f'<rect class="bar {cls}" x="{x:.1f}" y="{sy(v):.1f}" width="{w:.1f}" '
                f'height="{max(0.0, sy(0) - sy(v)):.1f}" fill="{colour}"><title>{cls} {v:.3g}/s</title></rect>'
            )
        parts.append(
            f'<text class="tick" x="{x + w / 2:.1f}" y="{_H - _B + 16}" text-anchor="middle">'
            f"{escape(_lv(doc, s['level']))}{'' if s.get('verdict') == 'pass' else ' ✗'}</text>"
        )
    parts.append(f'<line class="axis" x1="{_L}" x2="{_W - _R}" y1="{_H - _B}" y2="{_H - _B}"/>')
    parts.append(f'<line class="axis" x1="{_L}" x2="{_L}" y1="{_T}" y2="{_H - _B}"/>')
    parts.append(
        f'<text class="label" x="{(_L + _W - _R) / 2}" y="{_H - 8}" text-anchor="middle">{_unit(doc)} (✗: SLOs not met)</text>'
    )
    parts.append(
        f'<text class="label" transform="translate(14 {(_T + _H - _B) / 2}) rotate(-90)" text-anchor="middle">'
        "requests/s</text>"
    )
    return _svg(parts, "goodput per step")


def _rows(doc: dict[str, Any], t: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [_unit(doc), "verdict", "segments", "requests", "req/s", "out tok/s", "goodput/s"]
    header += [f"{x} (95% CI)" for x in doc.get("slos", [])]
    rows = []
    for s in t.get("steps", []):
        j = s.get("judgement") or {}
        cells = [
            _lv(doc, s["level"]),
            (s.get("verdict") or "not judged")
            + (" (unclear at cap: by value)" if s.get("unclear_at_cap") else ""),
            str(len(s.get("segments", []))),
            str(j.get("requests", "-")),
            *(
                f"{j[k]:.3g}" if j.get(k) is not None else "-"
                for k in ("requests_per_s", "output_tokens_per_s", "goodput_per_s")
            ),
        ]
        for sj in j.get("slos", []):
            ci = f" [{sj['ci_low']:.4g}–{sj['ci_high']:.4g}]" if sj.get("ci_low") is not None else ""
            val = f"{sj['value']:.4g}" if sj.get("value") is not None else "-"
            cells.append(f"{val}{ci} {sj['verdict']}")
        rows.append(cells)
    return header, rows


def render_html(doc: dict[str, Any]) -> str:
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Capacity {escape(doc['run_id'])}</title>"
    ]
    out.append(f"<style>{CSS}</style></head><body><main><h1>Capacity: {escape(doc['run_id'])}</h1>")
    out.append(
        f"<p class='muted'>Mode {escape(doc['mode'])}; SLOs {escape(', '.join(doc['slos']))}; steps of "
        f"{doc['step_duration_s']:g} s trimmed {doc['trim_s']:g} s at each end; search took {doc.get('seconds', 0):.0f} s.</p>"
    )
    out.append("<ul>" + "".join(f"<li>{escape(a)}</li>" for a in answer_lines(doc)) + "</ul>")
    for t in doc.get("targets", []):
        out.append(f"<h2>{escape(_who(t))}</h2>")
        for i in range(len(doc.get("slos", []))):
            out.append(f"<figure>{knee_chart(doc, t, i)}</figure>")
        out.append(f"<figure>{goodput_chart(doc, t)}</figure>")
        header, rows = _rows(doc, t)
        out.append(
            "<table><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead><tbody>"
        )
        out += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        out.append("</tbody></table>")
    out.append(f"<h2>Method</h2><pre>{escape(doc.get('method') or '')}</pre></main></body></html>")
    return "\n".join(out)


def render_md(doc: dict[str, Any]) -> str:
    lines = [f"# Capacity: {doc['run_id']}", "", *(f"- {a}" for a in answer_lines(doc)), ""]
    for t in doc.get("targets", []):
        header, rows = _rows(doc, t)
        lines += [f"## {_who(t)}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "run_id": str,
    "mode": str,
    "slos": list,
    "step_duration_s": (int, float),
    "trim_s": (int, float),
    "targets": list,
}


def read_doc(cap_dir: Path) -> dict[str, Any]:
    """`capacity.json`, its required keys checked (InputError, one line naming the file and key)."""
    path = cap_dir / CAPACITY_FILE
    doc = read_json(path, "a capacity search (harness capacity)")
    for key, kind in _REQUIRED.items():
        if key not in doc:
            raise InputError(f"{path}: no {key!r} (a capacity search written by harness capacity has it)")
        if not isinstance(doc[key], kind) or isinstance(doc[key], bool):
            raise InputError(f"{path}: {key!r} is {type(doc[key]).__name__}, expected {_kind(kind)}")
    for i, t in enumerate(doc["targets"]):
        if not isinstance(t, dict) or not isinstance(t.get("steps", []), list):
            raise InputError(f"{path}: targets[{i}]: expected an object with a list of steps")
        for k, s in enumerate(t.get("steps", [])):
            if not isinstance(s, dict) or not isinstance(s.get("level"), int | float):
                raise InputError(f"{path}: targets[{i}].steps[{k}]: expected an object with a numeric level")
    return doc


def _kind(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))


def write(cap_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write `capacity.html` and `capacity.md` for a capacity run folder; returns the files."""
    doc = read_doc(cap_dir)
    try:
        html_text, md_text = render_html(doc), render_md(doc)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        # A hand-edited step deeper down than read_doc checks: one line, not a traceback.
        raise InputError(
            f"{cap_dir / CAPACITY_FILE}: unexpected content ({type(exc).__name__}: {exc})"
        ) from None
    out_dir = out_dir or cap_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    html, md = out_dir / HTML_NAME, out_dir / MD_NAME
    html.write_text(html_text, encoding="utf-8")
    md.write_text(md_text, encoding="utf-8")
    return [md, html]
