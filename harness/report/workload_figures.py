"""The HTML report's workload figures: TTFT against input tokens (prefill cost), E2E and TPOT against
output tokens, and TTFT by conversation turn, drawn from `summary["workload"]`'s rows
(`harness.report.workload`), one line per report group: p50 solid, p95 dashed, a marker per bucket.

None of them is drawn for a report without workload keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.report.aggregate import Row
from harness.report.plots import MAX_LINES, Figure, _labels
from harness.report.svg import Chart, Line, legend, line_chart

__all__ = ["figures"]

#: x spans at least this ratio (largest / smallest): a log x axis.
LOG_RATIO = 20.0


def figures(summary: dict[str, Any]) -> list[Figure]:
    """The workload figures, in reading order (empty without a workload section)."""
    work = summary.get("workload")
    if not work:
        return []
    out = [
        _by_length(
            "ttft-by-input-tokens",
            "TTFT against input tokens (prefill cost)",
            work["by_input_tokens"],
            "input_tokens",
            "ttft_ms",
            "TTFT",
            "input tokens (usage, bucket mean)",
        ),
        _by_length(
            "e2e-by-output-tokens",
            "E2E latency against output tokens",
            work["by_output_tokens"],
            "output_tokens",
            "e2e_ms",
            "E2E",
            "output tokens (bucket mean)",
        ),
        _by_length(
            "tpot-by-output-tokens",
            "TPOT against output tokens",
            work["by_output_tokens"],
            "output_tokens",
            "tpot_ms",
            "TPOT",
            "output tokens (bucket mean)",
        ),
    ]
    if work["by_turn"]:
        out.append(
            _by_length(
                "ttft-by-turn",
                "TTFT by conversation turn",
                work["by_turn"],
                "turn",
                "ttft_ms",
                "TTFT",
                "turn",
            )
        )
    return out


def _series(rows: list[Row], by: list[str]) -> list[tuple[str, list[Row]]]:
    """Rows of each report group (the key without the split column), in the rows' order."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row["key"].get(k) for k in by), []).append(row)
    keys = [dict(zip(by, k, strict=True)) for k in groups]
    labels = _labels(keys) if by else ["all"] * len(keys)
    return list(zip(labels, groups.values(), strict=True))[:MAX_LINES]


def _by_length(
    fig_id: str, title: str, rows: list[Row], split: str, metric: str, name: str, x_label: str
) -> Figure:
    by = [k for k in (rows[0]["key"] if rows else {}) if k != split]
    x_of = "turn" if split == "turn" else f"{split}_mean"
    lines = []
    for i, (label, group) in enumerate(_series(rows, by)):
        x = np.array([np.nan if r[x_of] is None else r[x_of] for r in group], dtype=np.float64)
        for pct, dashed in (("p50", False), ("p95", True)):
            y = np.array([np.nan if r[f"{metric}_{pct}"] is None else r[f"{metric}_{pct}"] for r in group])
            tips = [
                f"{split.replace('_', ' ')} {r['key'][split]}: {pct} {_fmt(yy)} ms over {r[f'{metric}_count']:,} "
                "requests"
                for r, yy in zip(group, y, strict=True)
            ]
            lines.append(
                Line(label, x, y, color=i, dashed=dashed, markers=True, tips=tips, in_legend=not dashed)
            )
    xs = np.concatenate([ln.x[np.isfinite(ln.x) & (ln.x > 0)] for ln in lines] or [np.zeros(0)])
    x_log = bool(xs.size) and float(xs.max()) / float(xs.min()) >= LOG_RATIO
    chart = Chart(title, x_label + (", log scale" if x_log else ""), f"{name} (ms)", x_log=x_log)
    what = "turn" if split == "turn" else "length bucket (plotted at its mean length)"
    caption = (
        f"{name} p50 (solid) and p95 (dashed) of successful measured requests per {what}; "
        "hover a point for its bucket and count. The table of the same name holds the figures."
    )
    return Figure(fig_id, caption, line_chart(chart, lines), legend(lines))


def _fmt(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:,.4g}"
