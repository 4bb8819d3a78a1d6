"""The HTML report's figures, computed from the records: latency distributions, latency against
throughput across stages, output tokens and errors over time, and content events per socket read.

Owns what each figure shows and how its data is derived (each series a query: quantiles for the
CDFs, time bins counted by the engine for the time series); drawing is `svg`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from harness.report.aggregate import Grouping, Row, Summarizer
from harness.report.builder import ReportContext
from harness.report.engine import Engine
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

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Figure:
    id: str
    caption: str
    svg: str
    legend: list[LegendEntry]


def figures(ctx: ReportContext) -> list[Figure]:
    """Every figure of the HTML report, in reading order."""
    grouping = ctx.summarizer.grouping(ctx.summary["by"])
    labels = _labels(grouping.keys)
    series = list(enumerate(labels))[:MAX_LINES]
    n = len(grouping.keys)
    more = f" (first {MAX_LINES} of {n} groups)" if n > MAX_LINES else ""
    return [
        _cdf_figure(
            ctx, "ttft-cdf", "TTFT distribution" + more, "TTFT (ms)", "ttft_ms", "ok", grouping, series
        ),
        _cdf_figure(
            ctx, "e2e-cdf", "E2E latency distribution" + more, "E2E (ms)", "e2e_ms", "ok", grouping, series
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


def _quantile_lines(
    ctx: ReportContext, value: str, where: str, grouping: Grouping, series: list[tuple[int, str]]
) -> list[Line]:
    """One CDF line per series: `CDF_POINTS` + 1 quantiles (linear interpolation) of its values."""
    q = np.linspace(0, 1, CDF_POINTS + 1)
    if not series:
        return []
    # numpy's quantiles over each group's values (the groups by row id from `group_map`): one scan,
    # no join with the group table.
    got = ctx.dataset.engine.numpy(
        f"SELECT row_id, x FROM (SELECT *, {value} AS x FROM r) WHERE measured AND {where} AND x IS NOT NULL AND isfinite(x)"
    )
    x = np.asarray(got["x"], dtype=np.float64)
    gid = ctx.summarizer.group_map(grouping)[np.asarray(got["row_id"], dtype=np.int64)]
    order = np.argsort(gid, kind="stable")
    bounds = np.searchsorted(gid[order], np.arange(len(grouping.keys) + 1))
    sorted_x = x[order]
    lines = []
    for i, (g, label) in enumerate(series):
        values = sorted_x[bounds[g] : bounds[g + 1]]
        if values.size:
            lines.append(Line(label, np.quantile(values, q), q * 100, color=i))
    return lines


def _cdf_figure(
    ctx: ReportContext,
    fig_id: str,
    title: str,
    x_label: str,
    value: str,
    where: str,
    grouping: Grouping,
    series: list[tuple[int, str]],
) -> Figure:
    lines = _quantile_lines(ctx, value, where, grouping, series)
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


def _time_axis(engine: Engine, max_bins: int) -> tuple[int, int]:
    """(bin width in ns, number of bins) over live records, and table `t0`: each run's first send."""
    engine.run(
        """CREATE OR REPLACE TEMP TABLE t0 AS SELECT run_index, min(sent_unix_ns) AS t0,
           max(end_unix_ns) - min(sent_unix_ns) AS span FROM r WHERE NOT warmup GROUP BY 1"""
    )
    (span,) = engine.one("SELECT max(span) FROM t0 WHERE span >= 0")
    span_ns = int(max(span or 0, 1))
    bin_s = max(1, math.ceil(span_ns / 1e9 / max_bins))
    bin_ns = bin_s * 1_000_000_000
    return bin_ns, span_ns // bin_ns + 1


@dataclass
class TokenBins:
    """Output tokens per (series, time bin) of the live successful records of the first
    `MAX_LINES` (run, host, model) groups: each content event lands in the bin of (send − its run's
    first send + its offset), weighted by output tokens / content events; events past the last bin
    stay in it; answers without content events (non-streaming) count at their end. The engine
    gives each record's series, base and weight; the streamed event offsets (`Engine.stream`) are
    binned batch by batch."""

    keys: list[dict[str, str | None]]
    bin_ns: int
    n_bins: int
    series: npt.NDArray[np.int16]
    """Per rowid, its series (-1: none)."""
    base_us: npt.NDArray[np.int64]
    weight: FloatArray
    acc: FloatArray

    def feed(
        self, rowids: npt.NDArray[np.int64], offsets: npt.NDArray[np.int64], values: npt.NDArray[Any]
    ) -> None:
        s = self.series[rowids]
        if not (s >= 0).any():
            return
        lengths = np.diff(offsets)
        v = np.asarray(values[offsets[0] : offsets[-1]], dtype=np.int64)
        bins = np.minimum(
            (np.repeat(self.base_us[rowids], lengths) + v) // (self.bin_ns // 1000), self.n_bins - 1
        )
        owner_series = np.repeat(s.astype(np.int64), lengths)
        spare = self.acc.size - 1
        cell = np.where(owner_series >= 0, owner_series * self.n_bins + bins, spare)
        self.acc += np.bincount(
            cell, weights=np.repeat(self.weight[rowids], lengths), minlength=self.acc.size
        )

    def counts(self) -> FloatArray:
        return self.acc[:-1].reshape(len(self.keys), self.n_bins)


def token_bins(ds: Dataset, summarizer: Summarizer, n_series: int = MAX_LINES) -> TokenBins | None:
    """A `TokenBins` ready to be fed; None when no live request succeeded."""
    grouping = summarizer.grouping(("run", "host", "model"), where="NOT warmup AND ok")
    if not grouping.keys:
        return None
    e = ds.engine
    bin_ns, n_bins = _time_axis(e, MAX_BINS)
    keys = grouping.keys[:n_series]
    got = e.numpy(
        f"""SELECT r.row_id, {grouping.table}.gid, greatest((r.sent_unix_ns - t0.t0) // 1000, 0) AS since_us,
                   coalesce(r.output_tokens, 0)::DOUBLE AS tokens, r.n_events,
                   least(greatest((r.end_unix_ns - t0.t0) // {bin_ns}, 0), {n_bins - 1}) AS end_bin
            FROM r JOIN t0 USING (run_index) {grouping.join()}
            WHERE NOT r.warmup AND r.ok AND {grouping.table}.gid < {len(keys)}"""
    )
    acc = np.zeros(len(keys) * n_bins + 1)
    gid = np.asarray(got["gid"], dtype=np.int64)
    tokens = np.asarray(got["tokens"], dtype=np.float64)
    n_events = np.asarray(got["n_events"], dtype=np.int64)
    none = n_events == 0
    end_cell = gid[none] * n_bins + np.asarray(got["end_bin"], dtype=np.int64)[none]
    acc += np.bincount(end_cell, weights=tokens[none], minlength=acc.size)
    size = e.max_rowid() + 1
    series = np.full(size, -1, np.int16)  # at most MAX_LINES series
    base_us = np.zeros(size, np.int64)
    weight = np.zeros(size)
    row_id = np.asarray(got["row_id"], dtype=np.int64)
    series[row_id] = gid
    base_us[row_id] = np.asarray(got["since_us"], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight[row_id] = np.where(n_events > 0, tokens / n_events, 0.0)
    del got
    return TokenBins(keys, bin_ns, n_bins, series, base_us, weight, acc)


def _tokens_over_time(ctx: ReportContext) -> Figure:
    title = "Output tokens/s over time"
    bins = ctx.prepared.get("token_bins")
    if bins is None and "token_bins" not in ctx.prepared:
        bins = token_bins(ctx.dataset, ctx.summarizer)
        if bins is not None:
            ctx.dataset.engine.stream([bins])
    if bins is None:
        return Figure(
            "tokens-over-time", "No successful request.", line_chart(Chart(title, "s", "tok/s"), []), []
        )
    counts = bins.counts()
    x = np.arange(bins.n_bins) * bins.bin_ns / 1e9
    labels = _labels(bins.keys)
    lines = [Line(label, x, counts[i] / (bins.bin_ns / 1e9), color=i) for i, label in enumerate(labels)]
    chart = Chart(
        f"{title} ({bins.bin_ns // 1_000_000_000} s bins)",
        "seconds since the run's first request",
        "output tokens/s",
    )
    caption = (
        "Output tokens of successful requests placed at the arrival of each content event (each event weighted by "
        "output tokens / content events of its request), per time bin; warm-up excluded, trimmed edges included."
    )
    return Figure("tokens-over-time", caption, line_chart(chart, lines), legend(lines))


def _errors_over_time(ctx: ReportContext) -> Figure:
    e = ctx.dataset.engine
    title = "Errors over time"
    (live,) = e.one("SELECT count(*) FROM r WHERE NOT warmup")
    bin_ns, n_bins = _time_axis(e, MAX_ERROR_BINS) if live else (1_000_000_000, 1)
    names = ["unknown", *(str(v) for v in ctx.summarizer.values_in_order("error"))]
    index = {name: i for i, name in enumerate(names)}
    counts = np.zeros((len(names), n_bins))
    if live:
        for error, b, n in e.rows(
            f"""SELECT coalesce(r.error, 'unknown'), least(greatest((r.end_unix_ns - t0.t0) // {bin_ns}, 0), {n_bins - 1}),
                       count(*)
                FROM r JOIN t0 USING (run_index) WHERE NOT r.warmup AND NOT r.ok GROUP BY 1, 2"""
        ):
            counts[index.get(error, 0), int(b)] += n
    stacks = [
        Stack(name, counts[i].astype(np.float64), color=i) for i, name in enumerate(names) if counts[i].any()
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
    grouping = ctx.summarizer.grouping(("host", "model"))
    series = list(enumerate(_labels(grouping.keys)))[:MAX_LINES]
    lines = _quantile_lines(
        ctx, "events::DOUBLE / content_reads::DOUBLE", "content_reads > 0", grouping, series
    )
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
