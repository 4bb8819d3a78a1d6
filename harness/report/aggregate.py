"""Grouping and per-group metrics: the numbers of `summary.json`.

Owns the group keys (`--by`) and the per-group row: every metric of `harness.metrics` computed once
per group over the group's merged raw records (and once over all measured records for the overall
row), named flat as in summary.json: `ttft_ms_p50`, `e2e_ms_p95`, `output_tokens_per_s`, `errors`...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from harness import metrics
from harness.errors import InputError
from harness.report.load import Dataset

__all__ = ["BY_COLUMNS", "DEFAULT_BY", "OVERALL", "Columns", "Summarizer", "check_by"]

#: `--by` key -> record field.
BY_COLUMNS = {
    "run": "run_id",
    "host": "host",
    "model": "model",
    "stage": "stage",
    "prompt_id": "prompt_id",
    "worker": "worker",
    "connection": "connection",
}
DEFAULT_BY = ("run", "host", "model", "stage")
#: Key value of the overall row.
OVERALL = "all"
Row = dict[str, Any]


def check_by(by: Sequence[str] | None) -> tuple[str, ...]:
    """Validate group keys; None -> the default (run, host, model, stage)."""
    if by is None:
        return DEFAULT_BY
    keys = tuple(k.strip() for k in by if k.strip())
    unknown = [k for k in keys if k not in BY_COLUMNS]
    if unknown or not keys:
        raise InputError(
            f"--by: unknown key {', '.join(unknown) or '(none given)'}; expected a comma-separated list of "
            + ", ".join(BY_COLUMNS)
        )
    return tuple(dict.fromkeys(keys))


class Summarizer:
    """Computes rows over one dataset's measured records (after `measured.select`)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.cols = Columns.of(ds)
        self.measured = np.flatnonzero(ds.frame["measured"].to_numpy())

    def groups(self, by: Sequence[str], *, itl: bool = True) -> list[Row]:
        """One row per group, ordered by each key's order of first appearance in the records."""
        parts = self.partition(by)
        itls = self._itl(parts) if itl else [None] * len(parts)
        return [{"key": key} | self._row(rows, d) for (key, rows), d in zip(parts, itls, strict=True)]

    def groups_and_overall(self, by: Sequence[str]) -> tuple[list[Row], Row]:
        """`groups(by)` and the overall row, pooling the groups' ITL gaps rather than reading them twice."""
        parts = self.partition(by)
        itls = self._itl(parts)
        groups = [{"key": key} | self._row(rows, d) for (key, rows), d in zip(parts, itls, strict=True)]
        pooled = sum(itls[1:], itls[0]) if itls else metrics.PooledIntDist()
        return groups, {"key": OVERALL} | self._row(self.measured, pooled)

    def partition(
        self, by: Sequence[str], rows: npt.NDArray[np.int64] | None = None
    ) -> list[tuple[dict[str, str | None], npt.NDArray[np.int64]]]:
        """(key, ascending row numbers) per group of `rows` (default: the measured records), groups in
        the order of their key values' first appearance (categories' order), missing values last."""
        rows = self.measured if rows is None else rows
        if rows.size == 0:
            return []
        combined = np.zeros(rows.size, np.int64)
        radix = 1
        for name in by:
            codes = self.cols.codes[BY_COLUMNS[name]][rows]
            n = int(codes.max(initial=-1)) + 2
            combined = combined * n + np.where(codes < 0, n - 1, codes)
            radix *= n
            if radix > 1 << 31:  # keep the mixed-radix code far from overflowing: re-number densely
                uniq, combined = np.unique(combined, return_inverse=True)
                radix = uniq.size
        _, group_of = np.unique(combined, return_inverse=True)
        sizes = np.bincount(group_of)
        rows_of = np.split(rows[np.argsort(group_of, kind="stable")], np.cumsum(sizes)[:-1])
        frame = self.ds.frame
        return [
            ({name: _key_value(frame[BY_COLUMNS[name]].iat[group_rows[0]]) for name in by}, group_rows)
            for group_rows in rows_of
        ]

    def _itl(
        self, parts: list[tuple[dict[str, str | None], npt.NDArray[np.int64]]]
    ) -> list[metrics.PooledIntDist]:
        """Each group's pooled ITL over its successful requests, in one pass over every record's events."""
        group_of = np.full(self.cols.ok.size, -1, np.int32)
        for g, (_, rows) in enumerate(parts):
            group_of[rows] = g
        group_of[~self.cols.ok] = -1
        return _itl_by_group(self.ds, group_of, len(parts))

    def window_s(self, rows: npt.NDArray[np.int64]) -> float | None:
        """The measured window of these records (see `_window_s`)."""
        return _window_s(self.cols.segment[rows], self.cols.sent[rows], self.cols.end[rows])

    def _row(self, rows: npt.NDArray[np.int64], itl: metrics.PooledIntDist | None) -> Row:
        return _metrics(self.ds, self.cols, rows, itl)


def _key_value(value: Any) -> str | None:
    return None if pd.isna(value) else str(value)


@dataclass(frozen=True)
class Columns:
    """The frame's columns as numpy arrays, taken once per dataset."""

    ok: npt.NDArray[np.bool_]
    sent: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    values: dict[str, npt.NDArray[np.float64]]
    content_events: npt.NDArray[np.float64]
    from_usage: npt.NDArray[np.bool_]
    error_codes: npt.NDArray[np.int64]
    error_names: list[str]
    segment: npt.NDArray[np.int64]
    """Per record, its (run, stage)'s number."""
    hosts: list[str]
    run_index: npt.NDArray[np.int32]
    has_slo: npt.NDArray[np.bool_]
    codes: dict[str, npt.NDArray[np.int64]]
    """Category codes of the `--by` fields (-1: missing)."""

    @classmethod
    def of(cls, ds: Dataset) -> Columns:
        f = ds.frame
        numeric = [
            "ttft_ms",
            "ttfb_ms",
            "e2e_ms",
            "tpot_ms",
            "dispatch_delay_ms",
            "output_tokens",
            "input_tokens",
            "content_reads",
            "concurrency",
            "ttft_c1_ms",
            "slo_ttft_ms",
            "slo_tpot_ms",
            "slo_e2e_ms",
        ]
        events = f["content_events"].to_numpy(np.float64)
        error = f["error"].cat
        return cls(
            ok=f["ok"].to_numpy(bool),
            sent=f["sent_unix_ns"].to_numpy(np.int64),
            end=f["end_unix_ns"].to_numpy(np.int64),
            values={n: f[n].to_numpy(np.float64) for n in numeric},
            content_events=np.where(np.isnan(events), ds.n_events, events),
            from_usage=(f["tokens_source"] == "usage").to_numpy(bool),
            error_codes=np.asarray(error.codes, dtype=np.int64),
            error_names=[str(c) for c in error.categories],
            segment=f["segment"].to_numpy(np.int64),
            hosts=[str(c) for c in f["host"].cat.categories],
            run_index=f["run_index"].to_numpy(np.int32),
            has_slo=f["has_slo"].to_numpy(bool),
            codes={name: np.asarray(f[name].cat.codes, dtype=np.int64) for name in BY_COLUMNS.values()},
        )


def _metrics(ds: Dataset, c: Columns, rows: npt.NDArray[np.int64], itl: metrics.PooledIntDist | None) -> Row:
    v = {name: arr[rows] for name, arr in c.values.items()}
    ok = c.ok[rows]
    sent, end = c.sent[rows], c.end[rows]
    content_events = c.content_events[rows]
    window = _window_s(c.segment[rows], sent, end)
    ttft, tpot, e2e = v["ttft_ms"], v["tpot_ms"], v["e2e_ms"]
    met = metrics.meets_slo(
        ok,
        ttft,
        tpot,
        e2e,
        {key: v[f"slo_{key}"] for key in metrics.SLO_KEYS},
    )
    has_slo = bool(rows.size) and bool(c.has_slo[rows].all())
    delay = v["dispatch_delay_ms"]
    dists = {
        "ttft_ms": metrics.dist(ttft[ok]),
        "ttfb_ms": metrics.dist(v["ttfb_ms"][ok]),
        "tpot_ms": metrics.dist(tpot[ok]),
        "itl_ms": itl.dist(scale=1e-3) if itl is not None else metrics.dist([]),
        "e2e_ms": metrics.dist(e2e[ok]),
        "dispatch_delay_ms": metrics.dist(delay),
        "sched_ttft_ms": metrics.dist(metrics.latency_from_sched_ms(delay, ttft)[ok]),
        "sched_e2e_ms": metrics.dist(metrics.latency_from_sched_ms(delay, e2e)[ok]),
        "queue_time_ms": metrics.dist(metrics.queue_time_ms(ttft, v["ttft_c1_ms"])[ok]),
        "events_per_read": metrics.dist(metrics.events_per_read(content_events, v["content_reads"])),
    }
    concurrency = v["concurrency"]
    row: Row = {
        "requests": int(rows.size),
        "ok": int(ok.sum()),
        "failed": int((~ok).sum()),
        "error_rate": metrics.error_rate(ok),
        "errors": _errors(c, rows[~ok]),
        "concurrency": float(np.nanmedian(concurrency)) if np.isfinite(concurrency).any() else None,
        "window_s": window,
        "output_tokens": int(np.nansum(v["output_tokens"][ok])),
        "output_tokens_per_s": metrics.output_tokens_per_s(v["output_tokens"], ok, window),
        "requests_per_s": metrics.requests_per_s(ok, window),
        "goodput_per_s": metrics.goodput_per_s(met, window) if has_slo else None,
        "slo_met": int(met.sum()) if has_slo else None,
        "stream_tokens_per_s_p50": metrics.dist(metrics.stream_tokens_per_s(tpot[ok]))["p50"],
        "input_tokens_mean": _mean(v["input_tokens"][ok]),
        "output_tokens_mean": _mean(v["output_tokens"][ok]),
        "token_mismatch": int(
            metrics.token_mismatch(c.from_usage[rows], content_events, v["output_tokens"]).sum()
        ),
        "host_peak_rss_mb": _peak_rss_mb(ds, c, rows),
    }
    for name, d in dists.items():
        row |= {f"{name}_{stat}": value for stat, value in d.items()}
    return row


def _mean(values: npt.NDArray[np.float64]) -> float | None:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else None


def _window_s(
    segment: npt.NDArray[np.int64], sent: npt.NDArray[np.int64], end: npt.NDArray[np.int64]
) -> float | None:
    """Union of the group's per-(run, stage) windows [first send, last end]."""
    if segment.size == 0:
        return None
    order = np.argsort(segment, kind="stable")
    s = segment[order]
    cuts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return metrics.window_s(np.minimum.reduceat(sent[order], cuts), np.maximum.reduceat(end[order], cuts))


def _itl_by_group(ds: Dataset, group_of: npt.NDArray[np.int32], n_groups: int) -> list[metrics.PooledIntDist]:
    """Pooled gaps between content events per group (`group_of[row]`, -1: not counted), one pass
    over the events: per block, records are put in group order and their gaps taken in that order."""
    pooled = [metrics.PooledIntDist() for _ in range(n_groups)]
    for first, offsets, lengths in ds.blocks():
        groups = group_of[first : first + lengths.size]
        counted = np.flatnonzero(groups >= 0)
        if counted.size == 0:
            continue
        starts = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        gaps = metrics.itl_gaps_us(offsets, starts)
        n_gaps = np.maximum(lengths - 1, 0)
        gap_starts = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(n_gaps, out=gap_starts[1:])
        order = counted[np.argsort(groups[counted], kind="stable")]
        by_group = pa.LargeListArray.from_arrays(pa.array(gap_starts), pa.array(gaps)).take(pa.array(order))
        flat = by_group.flatten().to_numpy()
        sizes = np.bincount(groups[order], weights=n_gaps[order], minlength=n_groups).astype(np.int64)
        ends = np.cumsum(sizes)
        for g in np.flatnonzero(sizes):
            pooled[g].add(flat[ends[g] - sizes[g] : ends[g]])
    return pooled


def _errors(c: Columns, failed: npt.NDArray[np.int64]) -> dict[str, int]:
    """Failed requests by category; a failure without a category counts as `unknown`."""
    counts = np.bincount(c.error_codes[failed] + 1, minlength=len(c.error_names) + 1)
    named = {name: int(n) for name, n in zip(c.error_names, counts[1:], strict=True) if n}
    return named | ({"unknown": int(counts[0])} if counts[0] else {})


def _peak_rss_mb(ds: Dataset, c: Columns, rows: npt.NDArray[np.int64]) -> float | None:
    """Highest host RSS sampled while the group's requests ran, over the group's (run, host)s."""
    samples = ds.host_samples
    if samples.empty or rows.size == 0:
        return None
    pairs = pd.DataFrame(
        {
            "run_index": c.run_index[rows],
            "host": c.codes["host"][rows],
            "sent": c.sent[rows],
            "end": c.end[rows],
        }
    )
    spans = pairs.groupby(["run_index", "host"]).agg(first=("sent", "min"), last=("end", "max"))
    peak = None
    for (run_index, host_code), first, last in spans.itertuples(name=None):
        s = samples[(samples["run_index"] == run_index) & (samples["host"] == c.hosts[host_code])]
        s = s[(s["t_unix_ns"] >= first) & (s["t_unix_ns"] <= last)]
        if not s.empty:
            peak = max(peak or 0.0, float(s["rss_bytes"].max()) / 1e6)
    return peak
