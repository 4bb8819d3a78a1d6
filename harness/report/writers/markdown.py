"""`report.md`: the workshop's table done right first, then every table with its columns explained,
then the notes on what was excluded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.report import wire
from harness.report.builder import ReportContext
from harness.report.tables import Table, format_value, header_row
from harness.report.writers.common import highlights, notes, scope

__all__ = ["render", "write"]

NAME = "report.md"


def write(ctx: ReportContext, out_dir: Path) -> list[Path]:
    path = out_dir / NAME
    path.write_text(render(ctx), encoding="utf-8")
    return [path]


def render(ctx: ReportContext) -> str:
    s = ctx.summary
    out = ["# Load test report", ""]
    out += [f"- **{label}:** {text}" for label, text in scope(s)]
    models, *rest = ctx.tables
    out += ["", "## Summary", "", models.doc, "", *_table(models, with_keys_shown=True), ""]
    out += [
        "**Overall:** "
        + " · ".join(f"{label} {value} {unit}".rstrip() for label, value, unit in highlights(s)),
        "",
    ]
    out += _thresholds(s.get("thresholds") or [])
    for table in rest:
        out += [f"## {table.title}", "", table.doc, "", *_table(table), ""]
        out += ["Columns: " + "; ".join(f"**{c.title}**: {c.doc}" for c in table.columns) + ".", ""]
    out += wire.markdown_lines(s)
    out += ["## Notes", "", *(f"- {n}" for n in notes(s)), ""]
    return "\n".join(out)


def _thresholds(results: list[dict[str, Any]]) -> list[str]:
    """The threshold checks (`harness.thresholds`), one row per check and group."""
    if not results:
        return []
    failed = sum(not r["passed"] for r in results)
    out = ["## Thresholds", "", f"{len(results) - failed} of {len(results)} checks held.", ""]
    out += [
        _line(["group", "metric", "value", "op", "limit", "result"]),
        _line(["---", "---", "--:", "---", "--:", "---"]),
    ]
    for r in results:
        group = ", ".join(f"{k} {v}" for k, v in r["group"].items() if v is not None and k != "run")
        value = f"{r['value']:.6g}" if r["value"] is not None else f"no value ({r['reason']})"
        verdict = "pass" if r["passed"] else "**FAIL**"
        out.append(
            _line(
                [
                    c.replace("|", "\\|")
                    for c in [group or "all", r["metric"], value, r["op"], f"{r['limit']:g}", verdict]
                ]
            )
        )
    return [*out, ""]


def _table(table: Table, *, with_keys_shown: bool = False) -> list[str]:
    keys = list(range(len(table.keys))) if with_keys_shown else table.shown_keys()
    header = header_row(table, keys)
    align = ["---"] * len(keys) + ["--:"] * len(table.columns)
    lines = [_line(header), _line(align)]
    for row in table.rows:
        values = table.key_values(row, short=True)
        cells = [values[i] for i in keys] + [format_value(c.value(row), c.kind) for c in table.columns]
        lines.append(_line([c.replace("|", "\\|") for c in cells]))
    return lines


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
