"""The report's tables, as data: which summary keys each table shows, with headers, units and a
one-line explanation per column. Every writer (Markdown, CSV, HTML, console) renders these, so a
column is defined once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.records import ERROR_CATEGORIES
from harness.report.aggregate import OVERALL

__all__ = ["Column", "Table", "build_tables", "fixed_width", "format_value", "host_label"]

Row = dict[str, Any]


@dataclass(frozen=True)
class Column:
    """One column: `key` in a summary row (`errors.timeout` reaches into the `errors` dict)."""

    key: str
    header: str
    unit: str
    doc: str
    kind: str = "float"
    """How to show it: `int`, `float` or `pct` (a share shown as a percentage)."""

    @property
    def title(self) -> str:
        return f"{self.header} ({self.unit})" if self.unit else self.header

    def value(self, row: Row) -> Any:
        if "." in self.key:
            outer, inner = self.key.split(".", 1)
            return (row.get(outer) or {}).get(inner, 0)
        return row.get(self.key)


@dataclass(frozen=True)
class Table:
    """Rows of summary dicts (`key` holds the group's key values) shown through `columns`."""

    name: str
    """File stem of its CSV, e.g. `ttft` -> `ttft.csv`."""
    title: str
    doc: str
    keys: tuple[str, ...]
    columns: tuple[Column, ...]
    rows: list[Row]

    def key_values(self, row: Row, *, short: bool = False) -> list[str]:
        """The row's key values; `short`: hosts without scheme and `/v1` (for people)."""
        key = row["key"]
        if key == OVERALL:
            return [OVERALL] * len(self.keys)
        values = [key.get(k) if key.get(k) is not None else "-" for k in self.keys]
        return [host_label(v) if short and k == "host" else v for k, v in zip(self.keys, values, strict=True)]

    def shown_keys(self) -> list[int]:
        """Indexes of the key columns worth a column: those that vary between groups (else all)."""
        groups = [r for r in self.rows if r["key"] != OVERALL]
        varying = [i for i, k in enumerate(self.keys) if len({g["key"].get(k) for g in groups}) > 1]
        return varying or list(range(len(self.keys)))


def key_header(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _dist_columns(name: str, label: str, unit: str) -> tuple[Column, ...]:
    stats = (
        ("count", "Count", "", "successful requests (or samples) measured", "int"),
        ("p50", "p50", unit, f"median {label}", "float"),
        ("p90", "p90", unit, f"90th percentile of {label}", "float"),
        ("p95", "p95", unit, f"95th percentile of {label}", "float"),
        ("p99", "p99", unit, f"99th percentile of {label}", "float"),
        ("max", "Max", unit, f"largest {label}", "float"),
        ("mean", "Mean", unit, f"mean {label}", "float"),
    )
    return tuple(Column(f"{name}_{s}", h, u, d, k) for s, h, u, d, k in stats)


#: (table name, title, what it measures) of the latency distributions.
LATENCIES = (
    (
        "ttft",
        "TTFT: time to first token",
        "send to the first non-empty content (or reasoning, or tool call) event",
    ),
    (
        "ttfb",
        "TTFB: time to first byte",
        "send to the first byte of the response (an empty role chunk counts)",
    ),
    (
        "tpot",
        "TPOT: time per output token",
        "(last token − first token) / (output tokens − 1); needs ≥ 2 tokens",
    ),
    ("itl", "ITL: inter-token latency", "gaps between consecutive content events, pooled over requests"),
    ("e2e", "E2E: end-to-end latency", "send to the end of the response"),
)


def build_tables(summary: dict[str, Any]) -> list[Table]:
    """All tables of a report, in reading order, from a `summary.json` dict."""
    by = tuple(summary["by"])
    rows: list[Row] = [*summary["groups"], summary["overall"]]
    seen_errors = {k for r in rows for k in (r.get("errors") or {})}
    error_columns = tuple(
        Column(f"errors.{cat}", cat, "", f"failed requests of category `{cat}`", "int")
        for cat in [*ERROR_CATEGORIES, *sorted(seen_errors - set(ERROR_CATEGORIES))]
        if cat in seen_errors
    )
    tables = [models_table(summary)]
    tables.append(
        Table(
            "requests",
            "Requests and errors",
            "Measured requests (warm-up and trimmed edges excluded) and why the failed ones failed.",
            by,
            (
                Column("requests", "Requests", "", "measured requests sent", "int"),
                Column("ok", "OK", "", "requests that completed with a finish reason", "int"),
                Column("failed", "Failed", "", "requests that did not", "int"),
                Column("error_rate", "Error rate", "%", "failed / requests", "pct"),
                *error_columns,
            ),
            rows,
        )
    )
    for name, title, what in LATENCIES:
        tables.append(
            Table(
                name,
                title,
                f"Successful requests; {what}.",
                by,
                _dist_columns(f"{name}_ms", name.upper(), "ms"),
                rows,
            )
        )
    tables.append(
        Table(
            "throughput",
            "Throughput",
            "Counts of successful requests over the measured window (first send to last end of each stage).",
            by,
            (
                Column(
                    "concurrency",
                    "Concurrency",
                    "users",
                    "users active (Σ over workers of their median)",
                    "float",
                ),
                Column("window_s", "Window", "s", "union of each stage's first send to last end", "float"),
                Column(
                    "output_tokens", "Output tokens", "", "completion tokens of successful requests", "int"
                ),
                Column(
                    "output_tokens_per_s",
                    "Output tokens/s",
                    "tok/s",
                    "output tokens / window (never prompt tokens)",
                ),
                Column(
                    "stream_tokens_per_s_p50",
                    "Per-stream p50",
                    "tok/s",
                    "median of 1 / TPOT: speed one user sees",
                ),
                Column("requests_per_s", "Requests/s", "req/s", "successful requests / window"),
                Column("goodput_per_s", "Goodput", "req/s", "successful requests meeting every SLO / window"),
                Column("slo_met", "SLO met", "", "successful requests meeting every SLO", "int"),
            ),
            rows,
        )
    )
    tables.append(
        Table(
            "scheduling",
            "Scheduling and queueing",
            "How far the client fell behind its schedule, latency a user on that schedule saw, and host queueing.",
            by,
            (
                Column(
                    "dispatch_delay_ms_p50", "Dispatch delay p50", "ms", "median of send − scheduled time"
                ),
                Column(
                    "dispatch_delay_ms_p99",
                    "Dispatch delay p99",
                    "ms",
                    "99th percentile of send − scheduled time",
                ),
                Column("dispatch_delay_ms_max", "Dispatch delay max", "ms", "largest send − scheduled time"),
                Column("sched_ttft_ms_p99", "TTFT from schedule p99", "ms", "p99 of dispatch delay + TTFT"),
                Column("sched_e2e_ms_p99", "E2E from schedule p99", "ms", "p99 of dispatch delay + E2E"),
                Column(
                    "queue_time_ms_p50",
                    "Queue time p50",
                    "ms",
                    "TTFT p50 − TTFT p50 at concurrency 1 (same run, host, model)",
                ),
            ),
            rows,
        )
    )
    tables.append(
        Table(
            "streams",
            "Tokens, reads and host",
            "Token counts, how many content events each socket read carried, and host memory.",
            by,
            (
                Column(
                    "input_tokens_mean",
                    "Input tokens",
                    "mean",
                    "prompt tokens per successful request (usage)",
                ),
                Column(
                    "output_tokens_mean", "Output tokens", "mean", "completion tokens per successful request"
                ),
                Column(
                    "token_mismatch",
                    "Token mismatch",
                    "",
                    "requests whose usage count ≠ content events",
                    "int",
                ),
                Column(
                    "events_per_read_p50",
                    "Events/read p50",
                    "",
                    "median content events per content-bearing read",
                ),
                Column("events_per_read_p99", "Events/read p99", "", "p99 of the same: > 1 means buffering"),
                Column("events_per_read_max", "Events/read max", "", "largest of the same"),
                Column(
                    "host_peak_rss_mb",
                    "Host peak RSS",
                    "MB",
                    "highest host memory sampled while requests ran",
                ),
            ),
            rows,
        )
    )
    return tables


def host_label(url: str) -> str:
    """A host URL without scheme and `/v1`: short enough for a table."""
    label = url.split("://", 1)[-1]
    return label.removesuffix("/").removesuffix("/v1")


def models_table(summary: dict[str, Any]) -> Table:
    """The workshop's table done right: per model, mean and p95 E2E latency, and output tokens/s."""
    rows = summary["by_host_model"]
    several_hosts = len({r["key"]["host"] for r in rows}) > 1
    labelled = [
        r
        | {
            "key": {
                "Model": r["key"]["model"] + (f" @ {host_label(r['key']['host'])}" if several_hosts else "")
            }
        }
        for r in rows
    ]
    return Table(
        "models",
        "Models",
        "Per model: latency is E2E of successful requests (send to end of response); TPS is output "
        "(completion) tokens per second of all successful requests together over the measured window, "
        "never prompt + completion tokens.",
        ("Model",),
        (
            Column("e2e_ms_mean", "Avg latency", "ms", "mean E2E latency of successful requests"),
            Column("e2e_ms_p95", "p95", "ms", "95th percentile of the same"),
            Column("output_tokens_per_s", "TPS", "", "output tokens per second, all streams together"),
        ),
        labelled,
    )


def format_value(value: Any, kind: str = "float") -> str:
    """A cell for people: `-` for none, thousands separators, about 3-4 significant digits."""
    if value is None:
        return "-"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "pct":
        return f"{100 * value:.2f}"
    x = float(value)
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fixed_width(header: list[str], rows: list[list[str]], *, left: int) -> str:
    """A terminal table: the first `left` columns aligned left, the others right, a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def header_row(table: Table, keys: Sequence[int]) -> list[str]:
    return [key_header(table.keys[i]) for i in keys] + [c.title for c in table.columns]
