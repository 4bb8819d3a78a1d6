"""`report.html`: one self-contained page (inline CSS and SVG, no scripts, nothing fetched) with the
headline figures on top, the plots, every table with units and column notes, and the notes."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from harness.report import wire, workload_figures
from harness.report.aggregate import OVERALL
from harness.report.builder import ReportContext
from harness.report.plots import figures
from harness.report.svg import LegendEntry
from harness.report.tables import Table, format_value, header_row
from harness.report.writers.common import highlights, notes, scope

__all__ = ["render", "write"]

NAME = "report.html"

CSS = """
:root { --fg: #1f2933; --muted: #52606d; --line: #e4e7eb; --accent: #0072B2; --bg-alt: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 64px; }
h1 { font-size: 28px; margin: 0 0 8px; letter-spacing: -0.01em; }
h2 { font-size: 20px; margin: 40px 0 6px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
p.doc, figcaption, .muted { color: var(--muted); font-size: 14px; }
dl.scope { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0 20px; font-size: 14px; }
dl.scope dt { color: var(--muted); }
dl.scope dd { margin: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; margin: 16px 0 8px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: var(--bg-alt); }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: 0.04em; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .unit { color: var(--muted); font-size: 13px; margin-left: 4px; }
.scroll { overflow-x: auto; margin: 8px 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { text-align: left; background: var(--bg-alt); font-weight: 600; position: sticky; top: 0; }
th.num, td.num { text-align: right; }
tr.overall td { font-weight: 600; border-top: 2px solid var(--fg); }
tbody tr:nth-child(even) { background: #fafbfc; }
details { margin: 4px 0 0; font-size: 13px; color: var(--muted); }
details dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; }
details dt { font-weight: 600; color: var(--fg); }
details dd { margin: 0; }
figure { margin: 18px 0 28px; }
svg.chart { max-width: 100%; height: auto; font-family: inherit; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .axis { stroke: var(--muted); stroke-width: 1; }
svg .tick { fill: var(--muted); font-size: 11px; }
svg .label { fill: var(--fg); font-size: 12px; }
svg .chart-title { fill: var(--fg); font-size: 14px; font-weight: 600; }
svg .series { fill: none; stroke-width: 2; stroke-linejoin: round; }
ul.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 4px 0 6px 64px; padding: 0;
  font-size: 12.5px; }
ul.legend .swatch { display: inline-block; width: 18px; margin-right: 6px; vertical-align: middle;
  border-top: 3px solid; }
ul.legend .swatch.dashed { border-top-style: dashed; }
svg .point-label { fill: var(--muted); font-size: 10px; }
ul.notes li { margin: 4px 0; }
code { background: var(--bg-alt); padding: 0 4px; border-radius: 3px; }
"""


def write(ctx: ReportContext, out_dir: Path) -> list[Path]:
    path = out_dir / NAME
    path.write_text(render(ctx), encoding="utf-8")
    return [path]


def render(ctx: ReportContext) -> str:
    s = ctx.summary
    runs = ", ".join(r["run_id"] for r in s["runs"])
    models, *rest = ctx.tables
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Load test report: {escape(runs)}</title><style>{CSS}</style></head><body><main>",
        "<header><h1>Load test report</h1>",
        '<dl class="scope">'
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in scope(s))
        + "</dl></header>",
        '<section class="cards">'
        + "".join(
            f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}'
            f'<span class="unit">{escape(unit)}</span></div></div>'
            for label, value, unit in highlights(s)
        )
        + "</section>",
        f"<section><h2>Summary</h2><p class='doc'>{escape(models.doc)}</p>{_table(models, all_keys=True)}</section>",
        "<section><h2>Figures</h2>",
    ]
    parts += [
        f'<figure id="{f.id}">{f.svg}{_legend(f.legend)}<figcaption>{escape(f.caption)}</figcaption></figure>'
        for f in figures(ctx) + workload_figures.figures(s)
    ]
    parts.append("</section>")
    for table in rest:
        parts.append(
            f'<section id="{table.name}"><h2>{escape(table.title)}</h2><p class="doc">{escape(table.doc)}</p>'
        )
        parts.append(_table(table))
        parts.append(
            "<details><summary>Columns</summary><dl>"
            + "".join(f"<dt>{escape(c.title)}</dt><dd>{_code(c.doc)}</dd>" for c in table.columns)
            + "</dl></details></section>"
        )
    header, rows = wire.table_rows(s)
    parts.append(
        f'<section id="diagnostics"><h2>Stream diagnostics</h2><p class="doc">{escape(wire.DOC)}</p><table><thead><tr>'
        + "".join(f"<th>{escape(h)}</th>" for h in header)
        + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</tbody></table>"
        + "".join(
            f"<p class='doc'>Client health, run {escape(h['run_id'])} stage {escape(h['stage'])}: "
            f"{h['workers']} worker(s), CPU max {h['cpu_percent_max']:.0f} %, loop lag p99 {h['loop_lag_ms_p99']:.2f} ms: "
            f"<strong>{escape(h['verdict'])}</strong></p>"
            for h in s.get("client_health", [])
        )
        + "</section>"
    )
    parts.append(
        '<section><h2>Notes</h2><ul class="notes">'
        + "".join(f"<li>{_code(n)}</li>" for n in notes(s))
        + "</ul></section>"
    )
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _code(text: str) -> str:
    """Escaped text with its `backquoted` names set as code, as Markdown would show them."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _legend(entries: list[LegendEntry]) -> str:
    items = "".join(
        f'<li><span class="swatch{" dashed" if e.dashed else ""}" style="border-color: {e.color}"></span>{escape(e.label)}</li>'
        for e in entries
    )
    return f'<ul class="legend">{items}</ul>' if entries else ""


def _table(table: Table, *, all_keys: bool = False) -> str:
    keys = list(range(len(table.keys))) if all_keys else table.shown_keys()
    header = header_row(table, keys)
    n_keys = len(keys)
    head = "".join(
        f'<th class="{"num" if i >= n_keys else ""}">{escape(h)}</th>' for i, h in enumerate(header)
    )
    body = []
    for row in table.rows:
        values = table.key_values(row, short=True)
        cells = [f"<td>{escape(values[i])}</td>" for i in keys]
        cells += [f'<td class="num">{escape(format_value(c.value(row), c.kind))}</td>' for c in table.columns]
        cls = ' class="overall"' if row["key"] == OVERALL else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
