"""The HTML report's figures, computed from the records: latency distributions, latency against
throughput across stages, output tokens and errors over time, and content events per socket read.

Owns what each figure shows and how its data is derived; drawing is `svg`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from harness import metrics
from harness.report.aggregate import Columns, Row
from harness.report.builder import ReportContext
from harness.report.load import Dataset
from harness.report.svg import Chart, LegendEntry, Line, Stack, legend, line_chart, stacked_bars
from harness.report.tables import host_label

__all__ = ["Figure", "figures"]

#: Lines per chart at most (the first groups in table order).
MAX_LINES = 12
CDF_POINTS = 200
#: Throughput over time uses 1 s bins, or wider ones so that the chart has at most this many.
MAX_BINS = 900
#: Errors are rarer: wider bins, at most this many bars.
MAX_ERROR_BINS = 120
#: Stage names are written beside points only when a chart has this few curves.
MAX_LABELLED_CURVES = 3

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Figure:
    id: str
    caption: str
    svg: str
    legend: list[LegendEntry]


def figures(ctx: ReportContext) -> list[Figure]:
    """Every figure of the HTML report, in reading order."""
    cols = ctx.summarizer.cols
    by = ctx.summary["by"]
    groups = ctx.summarizer.partition(by)
    labels = _labels([key for key, _ in groups])
    series = [(label, rows) for label, (_, rows) in zip(labels, groups, strict=True)][:MAX_LINES]
    more = f" (first {MAX_LINES} of {len(groups)} groups)" if len(groups) > MAX_LINES else ""
    return [
        _cdf_figure(
            "ttft-cdf", "TTFT distribution" + more, "TTFT (ms)", cols.values["ttft_ms"], cols, series
        ),
        _cdf_figure(
            "e2e-cdf", "E2E latency distribution" + more, "E2E (ms)", cols.values["e2e_ms"], cols, series
        ),
        _latency_vs_throughput("ttft-vs-throughput", "ttft_ms", "TTFT", ctx.stage_rows),
        _latency_vs_throughput("e2e-vs-throughput", "e2e_ms", "E2E", ctx.stage_rows),
        _tokens_over_time(ctx),
        _errors_over_time(ctx),
        _events_per_read(ctx),
    ]


def _labels(keys: list[dict[str, str | None]]) -> list[str]:
    """Group labels from the key values that differ between groups (all of them when none do)."""
    if not keys:
        return []
    varying = [k for k in keys[0] if len({key[k] for key in keys}) > 1] or list(keys[0])
    return [
        " · ".join(host_label(key[n] or "") if n == "host" else str(key[n]) for n in varying) for key in keys
    ]


def _cdf_figure(
    fig_id: str,
    title: str,
    x_label: str,
    values: FloatArray,
    cols: Columns,
    series: list[tuple[str, IntArray]],
) -> Figure:
    lines = []
    q = np.linspace(0, 1, CDF_POINTS + 1)
    for i, (label, rows) in enumerate(series):
        v = values[rows][cols.ok[rows]]
        v = v[np.isfinite(v)]
        if v.size:
            lines.append(Line(label, np.quantile(v, q), q * 100, color=i))
    x_log = _wide_range(lines)
    chart = Chart(title, x_label + (", log scale" if x_log else ""), "requests at or below (%)", x_log=x_log)
    caption = "Share of successful requests at or below each latency (a CDF): read p50 at 50%, p99 at 99%."
    return Figure(fig_id, caption, line_chart(chart, lines), legend(lines))


def _wide_range(lines: list[Line]) -> bool:
    xs = np.concatenate([ln.x for ln in lines] or [np.zeros(0)])
    xs = xs[xs > 0]
    return bool(xs.size) and float(xs.max()) / float(xs.min()) >= 20


def _latency_vs_throughput(fig_id: str, metric: str, name: str, stage_rows: list[Row]) -> Figure:
    curves: dict[tuple[str | None, ...], list[Row]] = {}
    for row in stage_rows:
        key = row["key"]
        curves.setdefault((key["run"], key["host"], key["model"]), []).append(row)
    several_runs = len({k[0] for k in curves}) > 1
    labelled = len(curves) <= MAX_LABELLED_CURVES
    lines = []
    for i, ((run, host, model), rows) in enumerate(list(curves.items())[:MAX_LINES]):
        rows = sorted(rows, key=lambda r: r["output_tokens_per_s"] or 0.0)
        x = np.array([r["output_tokens_per_s"] or np.nan for r in rows], dtype=np.float64)
        stages = [str(r["key"]["stage"]) for r in rows]
        label = f"{model} @ {host_label(host or '')}" + (f" [{run}]" if several_runs else "")
        for pct, p95 in (("p50", False), ("p95", True)):
            y = np.array([r[f"{metric}_{pct}"] if r[f"{metric}_{pct}"] is not None else np.nan for r in rows])
            tips = [
                f"stage {s} (c={_fmt(r['concurrency'])}): {pct} {_fmt(yy)} ms at {_fmt(xx)} tok/s"
                for s, r, xx, yy in zip(stages, rows, x, y, strict=True)
            ]
            tags = stages if labelled and not p95 else ()
            lines.append(
                Line(label, x, y, color=i, dashed=p95, markers=True, tips=tips, tags=tags, in_legend=not p95)
            )
    chart = Chart(
        f"{name} against output throughput, one point per stage", "output tokens/s", f"{name} (ms)", x_min=0.0
    )
    chart_svg = line_chart(chart, lines)
    caption = (
        f"{name} p50 (solid) and p95 (dashed) against output tokens/s, one point per stage (hover a point for its "
        "stage): where the curve turns upward, more load buys little throughput for much more latency; the "
        "operating point to pick is just before."
    )
    return Figure(fig_id, caption, chart_svg, legend(lines))


def _fmt(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:,.4g}"


def _time_axis(ctx: ReportContext, rows: IntArray, max_bins: int) -> tuple[IntArray, int, int]:
    """(per-row t0: its run's first send, bin width in ns, number of bins)."""
    cols = ctx.summarizer.cols
    n_runs = len(ctx.dataset.runs)
    first = np.full(n_runs, np.iinfo(np.int64).max)
    last = np.full(n_runs, np.iinfo(np.int64).min)
    np.minimum.at(first, cols.run_index[rows], cols.sent[rows])
    np.maximum.at(last, cols.run_index[rows], cols.end[rows])
    span_ns = int(max((last - first)[first <= last].max(initial=0), 1))
    bin_s = max(1, math.ceil(span_ns / 1e9 / max_bins))
    bin_ns = bin_s * 1_000_000_000
    return first[cols.run_index[rows]], bin_ns, span_ns // bin_ns + 1


def _live_rows(ctx: ReportContext) -> IntArray:
    """Records that are not warm-up (trimmed edges included: the time charts show them)."""
    return np.flatnonzero(~ctx.dataset.frame["warmup"].to_numpy())


def _tokens_over_time(ctx: ReportContext) -> Figure:
    cols, ds = ctx.summarizer.cols, ctx.dataset
    live = _live_rows(ctx)
    ok_rows = live[cols.ok[live]]
    title = "Output tokens/s over time"
    if ok_rows.size == 0:
        return Figure(
            "tokens-over-time", "No successful request.", line_chart(Chart(title, "s", "tok/s"), []), []
        )
    t0, bin_ns, n_bins = _time_axis(ctx, live, MAX_BINS)
    t0_by_row = np.zeros(len(cols.ok), np.int64)
    t0_by_row[live] = t0
    groups = ctx.summarizer.partition(("run", "host", "model"), ok_rows)[:MAX_LINES]
    series = np.full(cols.ok.size, -1, np.int64)
    for i, (_, rows) in enumerate(groups):
        series[rows] = i
    counts = _token_bins(ds, cols, series, len(groups), t0_by_row, bin_ns, n_bins)
    x = np.arange(n_bins) * bin_ns / 1e9
    labels = _labels([key for key, _ in groups])
    lines = [Line(label, x, counts[i] / (bin_ns / 1e9), color=i) for i, label in enumerate(labels)]
    chart = Chart(
        f"{title} ({bin_ns // 1_000_000_000} s bins)",
        "seconds since the run's first request",
        "output tokens/s",
    )
    caption = (
        "Output tokens of successful requests placed at the arrival of each content event (each event weighted by "
        "output tokens / content events of its request), per time bin; warm-up excluded, trimmed edges included."
    )
    return Figure("tokens-over-time", caption, line_chart(chart, lines), legend(lines))


def _token_bins(
    ds: Dataset, cols: Columns, series: IntArray, n_series: int, t0: IntArray, bin_ns: int, n_bins: int
) -> FloatArray:
    """Output tokens per (series, time bin) of the records with `series[row] >= 0`, one pass over events.

    Each event lands in cell `series * n_bins + bin`: computed as (base + offset) // bin with a
    per-record base that already holds the series' first cell, so a single repeat per event is needed.
    Events past the last bin are clipped into it; records of no series go to a spare cell at the end.
    """
    bin_us = bin_ns // 1000
    spare = n_series * n_bins
    acc = np.zeros(spare + 1)
    tokens = np.nan_to_num(cols.values["output_tokens"])
    for first, offsets, lengths in ds.blocks():
        block = slice(first, first + lengths.size)
        s = series[block]
        if not (s >= 0).any():
            continue
        since_t0_us = np.clip((cols.sent[block] - t0[block]) // 1000, 0, None)
        base = np.where(s >= 0, s * n_bins * bin_us + since_t0_us, spare * bin_us)
        cell = np.repeat(base, lengths) + offsets
        cell //= bin_us
        # An event past its series' last bin stays in that bin.
        np.minimum(cell, np.repeat(np.where(s >= 0, (s + 1) * n_bins - 1, spare), lengths), out=cell)
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.where(s >= 0, tokens[block] / lengths, 0.0)
        counted = (s >= 0) & (lengths > 0)
        if np.all(weight[counted] == 1.0):
            acc += np.bincount(cell, minlength=acc.size)
        else:
            acc += np.bincount(cell, weights=np.repeat(weight, lengths), minlength=acc.size)
        # Answers without content events (non-streaming) count at their end.
        none = (s >= 0) & (lengths == 0)
        ends = np.clip((cols.end[block][none] - t0[block][none]) // bin_ns, 0, n_bins - 1)
        acc += np.bincount(s[none] * n_bins + ends, weights=tokens[block][none], minlength=acc.size)
    return acc[:spare].reshape(n_series, n_bins)


def _errors_over_time(ctx: ReportContext) -> Figure:
    cols = ctx.summarizer.cols
    live = _live_rows(ctx)
    title = "Errors over time"
    t0, bin_ns, n_bins = (
        _time_axis(ctx, live, MAX_ERROR_BINS) if live.size else (np.zeros(0, np.int64), 1_000_000_000, 1)
    )
    failed = ~cols.ok[live]
    bins = np.clip((cols.end[live][failed] - t0[failed]) // bin_ns, 0, n_bins - 1)
    codes = cols.error_codes[live][failed]
    names = ["unknown", *cols.error_names]
    stacks = [
        Stack(name, np.bincount(bins[codes + 1 == i], minlength=n_bins).astype(np.float64), color=i)
        for i, name in enumerate(names)
        if np.any(codes + 1 == i)
    ]
    x = np.arange(n_bins) * bin_ns / 1e9
    chart = Chart(
        f"{title} ({bin_ns // 1_000_000_000} s bins)",
        "seconds since the run's first request",
        "failed requests",
    )
    caption = (
        "Failed requests by error category, at the time each ended; warm-up excluded, trimmed edges included."
    )
    if not stacks:
        caption = "No request failed. " + caption
    return Figure("errors-over-time", caption, stacked_bars(chart, x, bin_ns / 1e9, stacks), legend(stacks))


def _events_per_read(ctx: ReportContext) -> Figure:
    cols = ctx.summarizer.cols
    groups = ctx.summarizer.partition(("host", "model"))
    labels = _labels([key for key, _ in groups])
    q = np.linspace(0, 1, CDF_POINTS + 1)
    lines = []
    for i, (label, (_, rows)) in enumerate(list(zip(labels, groups, strict=True))[:MAX_LINES]):
        per_read = metrics.events_per_read(cols.content_events[rows], cols.values["content_reads"][rows])
        per_read = per_read[np.isfinite(per_read)]
        if per_read.size:
            lines.append(Line(label, np.quantile(per_read, q), q * 100, color=i))
    x_log = _wide_range(lines)
    x_label = "events per read (per request)" + (", log scale" if x_log else "")
    chart = Chart(
        "Content events per socket read", x_label, "requests at or below (%)", x_log=x_log, x_min=1.0
    )
    caption = (
        "Per request, content events (≈ tokens) / socket reads that carried content, as a CDF. Near 1: each token "
        "arrived on its own. Well above 1: tokens arrived in bursts (proxy or server buffering, Nagle, or a saturated "
        "client), so per-token timings are smeared."
    )
    return Figure("events-per-read", caption, line_chart(chart, lines), legend(lines))
