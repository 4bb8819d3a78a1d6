"""Wire-level findings for the report: stream diagnostics per group, and the client's own health.

- Stream diagnostics (`harness.diagnostics`) per (run, host, model, stage, connection): tokens per
  socket read, share of tokens in bursts, TTFB→TTFT, and the patterns it names (Nagle, a client that
  could not keep up, buffering, a first wave of connections). Computed on up to `SAMPLE` successful
  measured records per group (seeded), which is plenty for medians and bursts: the engine gives the
  groups' row numbers, and only the sampled records' fields and `event_offsets_us` come back.
- Client health from `client_metrics.jsonl` (each Locust process samples its CPU and event-loop lag
  every second): a stage where any worker was above `CPU_LIMIT` % or its loop lag p99 above
  `LAG_LIMIT_MS` is client-limited: its figures are not trustworthy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd

from harness.diagnostics import StreamStats, diagnose
from harness.report import aggregate
from harness.report.aggregate import Summarizer
from harness.report.load import Dataset

__all__ = [
    "CPU_LIMIT",
    "LAG_LIMIT_MS",
    "client_health",
    "diagnostics",
    "markdown_lines",
    "sample",
    "table_rows",
    "verdict",
]

SAMPLE = 20_000
CPU_LIMIT = 80.0
LAG_LIMIT_MS = 5.0
KEYS = ("run_id", "host", "model", "stage", "connection")


def client_health(ds: Dataset) -> list[dict[str, Any]]:
    """Per (run, stage): the worst worker CPU % and loop lag p99 seen, and whether it was too busy."""
    out = []
    for run in ds.runs:
        path = run.dir / "client_metrics.jsonl"
        if not path.exists():
            continue
        by_stage: dict[str, list[dict[str, Any]]] = {}
        for line in path.read_bytes().splitlines():
            try:
                m = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            by_stage.setdefault(str(m.get("stage")), []).append(m)
        for stage, samples in by_stage.items():
            cpu = max(float(m.get("cpu_percent") or 0) for m in samples)
            lag = float(np.percentile([float(m.get("loop_lag_ms_p99") or 0) for m in samples], 99))
            # None: sampled before the process opened a connection
            kernel = {m.get("kernel_stamps") for m in samples} - {None} == {True}
            out.append(
                {
                    "run_id": run.run_id,
                    "stage": stage,
                    "workers": len({m.get("worker") for m in samples}),
                    "samples": len(samples),
                    "cpu_percent_max": round(cpu, 1),
                    "loop_lag_ms_p99": round(lag, 2),
                    "client_limited": not verdict(cpu, lag, kernel).startswith("ok"),
                    "verdict": verdict(cpu, lag, kernel),
                }
            )
    return out


def verdict(cpu: float, lag_ms: float, kernel_stamps: bool = False) -> str:
    """Kernel receive stamps keep token times true however late the loop reads them; a late loop
    then only delays sends (closed loop: the next request; open loop: dispatch delay shows it)."""
    if cpu > CPU_LIMIT:
        return "client-limited (CPU): figures not trustworthy; add workers"
    if lag_ms > LAG_LIMIT_MS and kernel_stamps:
        return "ok (event loop late, but token times come from kernel receive stamps; sends may be late)"
    if lag_ms > LAG_LIMIT_MS:
        return (
            "client starved (event loop late while its CPU was free: other processes, the host perhaps, "
            "share its cores): figures not trustworthy; give the client its own cores"
        )
    return "ok"


@dataclass
class Sample:
    """The records each diagnostics group is computed on, and what their event offsets give: a
    consumer of the streamed offsets (`Engine.stream`)."""

    keys: list[dict[str, str | None]]
    cols: dict[str, Any]
    """Per sampled record (ttft known): g (its group), row_id, ttft_ms, ttfb_ms, tpot_ms, events,
    reads, reused."""
    pick_group: npt.NDArray[np.int32]
    """Per rowid, its group when sampled, else -1."""
    pick_pos: npt.NDArray[np.int32]
    """Per rowid, its position in `cols` when sampled."""
    first_read: npt.NDArray[np.float64]
    """Per sampled record (position in `cols`): tokens that arrived with the first one (NaN: none)."""
    bursty: npt.NDArray[np.int64]
    total: npt.NDArray[np.int64]
    raw: list[_Counts] = field(default_factory=list)
    """Per group, the raw gaps between consecutive events (µs), counted by value."""

    def feed(
        self, rowids: npt.NDArray[np.int64], offsets: npt.NDArray[np.int64], values: npt.NDArray[Any]
    ) -> None:
        groups = self.pick_group[rowids]
        keep = groups >= 0
        if not keep.any():
            return
        lengths = np.diff(offsets)
        v = values[offsets[0] : offsets[-1]]
        if not keep.all():
            # Only the sampled records' events (a share of the batch in a large run).
            v = v[np.repeat(keep, lengths)]
            rowids, groups, lengths = rowids[keep], groups[keep], lengths[keep]
        starts = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=starts[1:])
        self.total += np.bincount(groups, weights=lengths, minlength=self.total.size).astype(np.int64)
        if v.size == 0:
            return
        owner = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths)
        # Tokens that came in the first token's read (equal stamps): a held first token piles up.
        has = lengths > 0
        first = np.zeros(lengths.size, v.dtype)
        first[has] = v[starts[:-1][has]]
        with_first = np.bincount(owner[v == first[owner]], minlength=lengths.size)
        self.first_read[self.pick_pos[rowids[has]]] = with_first[has]
        gaps, gap_group = aggregate.batch_gaps(starts, v, groups)
        if gaps.size == 0:
            return
        # A token is in a burst when its stamp equals a neighbour's in the same record.
        equal = (gaps == 0) & (gap_group >= 0)
        burst = np.zeros(v.size, bool)
        burst[:-1] |= equal
        burst[1:] |= equal
        self.bursty += np.bincount(groups[owner[burst]], minlength=self.bursty.size)
        aggregate.add_grouped(self.raw, gaps, gap_group)


def sample(ds: Dataset, summarizer: Summarizer) -> Sample:
    """Up to `SAMPLE` successful measured records per (run, host, model, stage, connection), seeded."""
    e = ds.engine
    grouping = summarizer.grouping(KEYS, where="measured AND ok")
    n_groups = len(grouping.keys)
    got = e.numpy(f"SELECT {grouping.table}.gid, r.row_id FROM r {grouping.join()} WHERE r.measured AND r.ok")
    gid = np.asarray(got["gid"], dtype=np.int64)
    row_id = np.asarray(got["row_id"], dtype=np.int64)
    order = np.lexsort((row_id, gid))
    gid, row_id = gid[order], row_id[order]
    bounds = np.searchsorted(gid, np.arange(n_groups + 1))
    rng = np.random.default_rng(0)
    chosen = []
    for g in range(n_groups):
        ids = row_id[bounds[g] : bounds[g + 1]]
        chosen.append(ids if len(ids) <= SAMPLE else rng.choice(ids, SAMPLE, replace=False))
    picks = pd.DataFrame(
        {
            "row_id": np.concatenate(chosen or [np.zeros(0, np.int64)]).astype(np.int64),
            "g": np.repeat(np.arange(n_groups, dtype=np.int64), [len(c) for c in chosen]),
        }
    )
    e.con.register("picks_frame", picks)
    try:
        cols = e.numpy(
            """SELECT p.g, r.row_id, r.ttft_ms, r.ttfb_ms, r.tpot_ms, coalesce(r.content_events, 0)::DOUBLE AS events,
                      coalesce(r.content_reads, 0)::DOUBLE AS reads, coalesce(r.conn_reused, false) AS reused
               FROM picks_frame p JOIN r USING (row_id) WHERE r.ttft_ms IS NOT NULL"""
        )
    finally:
        e.con.unregister("picks_frame")
    del got, gid, row_id, picks
    pick_group = np.full(e.max_rowid() + 1, -1, np.int32)
    picked_rows = np.asarray(cols["row_id"], dtype=np.int64)
    pick_group[picked_rows] = np.asarray(cols["g"], dtype=np.int32)
    pick_pos = np.zeros(pick_group.size, np.int32)
    pick_pos[picked_rows] = np.arange(picked_rows.size, dtype=np.int32)
    return Sample(
        grouping.keys,
        cols,
        pick_group,
        pick_pos,
        np.full(picked_rows.size, np.nan),
        np.zeros(n_groups, np.int64),
        np.zeros(n_groups, np.int64),
        [_Counts() for _ in range(n_groups)],
    )


def diagnostics(
    ds: Dataset, summarizer: Summarizer, health: list[dict[str, Any]], fed: Sample | None = None
) -> list[dict[str, Any]]:
    """Stream statistics and named findings per group of successful measured records (`fed`: a
    `sample` already fed the event offsets)."""
    if fed is None:
        fed = sample(ds, summarizer)
        ds.engine.stream([fed])
    worst = {(h["run_id"], h["stage"]): h for h in health}
    out = []
    for named, st in zip(fed.keys, _stream_stats_by_group(fed), strict=True):
        h = worst.get((named.get("run_id"), named.get("stage")))
        findings = diagnose(
            st,
            connection=named.get("connection"),
            client_cpu_max=h["cpu_percent_max"] if h else None,
            client_lag_ms_p99=h["loop_lag_ms_p99"] if h else None,
        )
        out.append({"key": dict(named), "stats": asdict(st), "findings": [asdict(x) for x in findings]})
    return out


def _stream_stats_by_group(fed: Sample) -> list[StreamStats]:
    """`diagnostics.stream_stats` of each group's sampled records, vectorised: the same figures
    (medians as `statistics.median`, p99 as numpy's)."""
    cols = fed.cols

    def arr(name: str) -> Any:
        return np.ma.filled(np.ma.asarray(cols[name], dtype=np.float64), np.nan)

    g = np.asarray(cols["g"], dtype=np.int64)
    ttft, ttfb, tpot = arr("ttft_ms"), arr("ttfb_ms"), arr("tpot_ms")
    events, reads = arr("events"), arr("reads")
    reused = np.asarray(np.ma.filled(np.ma.asarray(cols["reused"]), False), dtype=bool)
    out = []
    for k in range(len(fed.keys)):
        mine = g == k
        with np.errstate(divide="ignore", invalid="ignore"):
            per_read = (events / reads)[mine & (reads != 0)]
        has_ttfb = mine & ~np.isnan(ttfb)
        fresh = (ttft - ttfb)[has_ttfb & ~reused]
        again = (ttft - ttfb)[has_ttfb & reused]
        total, bursty = int(fed.total[k]), int(fed.bursty[k])
        out.append(
            StreamStats(
                requests=int(mine.sum()),
                tokens_per_read_p50=_median(per_read),
                burst_share=round(bursty / total, 4) if total else None,
                ttfb_to_ttft_ms_p50=_median(np.concatenate([fresh, again])),
                raw_gap_ms_p50=fed.raw[k].median_ms(),
                tpot_ms_p50=_median(tpot[mine & ~np.isnan(tpot)]),
                fresh_ttfb_to_ttft_ms_p50=_median(fresh),
                reused_ttfb_to_ttft_ms_p50=_median(again),
                first_on_connection_ttft_ms_p99=_p99(ttft[mine & ~reused]),
                later_ttft_ms_p99=_p99(ttft[mine & reused]),
                first_on_connection=int((mine & ~reused).sum()),
                reused_first_read_tokens_p50=_median(
                    fed.first_read[mine & reused & ~np.isnan(fed.first_read)]
                ),
            )
        )
    return out


def _median(values: npt.NDArray[Any]) -> float | None:
    """`round(statistics.median(values), 3)`."""
    n = values.size
    if n == 0:
        return None
    middle = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
    xs = [float(x) for x in np.partition(values, middle)[middle].tolist()]
    return round(xs[0] if n % 2 else (xs[0] + xs[1]) / 2, 3)


class _Counts:
    """Integer samples counted by value (dense below `LIMIT`, the rest kept): their order
    statistics exactly, in memory that does not grow with the number of samples."""

    LIMIT = 1 << 20

    def __init__(self) -> None:
        self.counts = np.zeros(0, np.int64)
        self.others: list[npt.NDArray[np.int64]] = []
        self.dense_limit = self.LIMIT

    def add_counts(self, counts: npt.NDArray[np.int64]) -> None:
        """Add samples given as counts by value (below `LIMIT`)."""
        if counts.size > self.counts.size:
            grown = np.zeros(counts.size, np.int64)
            grown[: self.counts.size] = self.counts
            self.counts = grown
        self.counts[: counts.size] += counts

    def add(self, values: npt.NDArray[np.int64]) -> None:
        dense = (values >= 0) & (values < self.LIMIT)
        d = values[dense]
        if d.size:
            counts = np.bincount(d, minlength=self.counts.size)
            counts[: self.counts.size] += self.counts
            self.counts = counts
        if d.size != values.size:
            self.others.append(values[~dense])

    def median_ms(self) -> float | None:
        """`round(statistics.median(v / 1000 for v in samples), 3)`."""
        others = np.sort(np.concatenate(self.others)) if self.others else np.zeros(0, np.int64)
        below, above = others[others < 0], others[others >= 0]
        cum = np.cumsum(self.counts)
        n_dense = int(cum[-1]) if cum.size else 0
        n = below.size + n_dense + above.size
        if n == 0:
            return None

        def at(rank: int) -> int:
            if rank < below.size:
                return int(below[rank])
            if rank < below.size + n_dense:
                return int(np.searchsorted(cum, rank - below.size, side="right"))
            return int(above[rank - below.size - n_dense])

        if n % 2:
            return round(at(n // 2) / 1000, 3)
        return round((at(n // 2 - 1) / 1000 + at(n // 2) / 1000) / 2, 3)


def _p99(values: npt.NDArray[np.float64]) -> float | None:
    return round(float(np.percentile(values, 99)), 3) if values.size else None


def table_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the stream diagnostics table (both writers show the same)."""

    def num(v: Any, digits: int = 2) -> str:
        return "–" if v is None else f"{v:.{digits}f}"

    header = [
        "Host",
        "Model",
        "Stage",
        "Connection",
        "Tokens/read p50",
        "Burst share",
        "TTFB→TTFT p50 (ms)",
        "Raw gap p50 (ms)",
        "TPOT p50 (ms)",
        "Findings",
    ]
    rows = []
    for d in summary.get("diagnostics", []):
        k, s = d["key"], d["stats"]
        rows.append(
            [
                str(k.get("host")),
                str(k.get("model")),
                str(k.get("stage")),
                str(k.get("connection") or "–"),
                num(s["tokens_per_read_p50"], 1),
                num(s["burst_share"]),
                num(s["ttfb_to_ttft_ms_p50"]),
                num(s["raw_gap_ms_p50"]),
                num(s["tpot_ms_p50"]),
                "; ".join(x["message"] for x in d["findings"]) or "none",
            ]
        )
    return header, rows


DOC = (
    "How tokens arrived, per group: tokens per socket read (1 = each token read on its own), the share of "
    "tokens that came in a read with another, first byte to first token, the median raw gap between token "
    "events against per-request TPOT, and the patterns these reveal, named in plain words."
)


def markdown_lines(summary: dict[str, Any]) -> list[str]:
    header, rows = table_rows(summary)
    lines = [
        "## Stream diagnostics",
        "",
        DOC,
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    health = summary.get("client_health", [])
    if health:
        lines += [
            "",
            "## Client health",
            "",
            f"Each Locust process samples its CPU and event-loop lag every second. A stage with a worker above "
            f"{CPU_LIMIT:g} % CPU or loop lag p99 above {LAG_LIMIT_MS:g} ms is client-limited: its figures "
            "are not trustworthy; add workers.",
            "",
            "| Run | Stage | Workers | CPU max (%) | Loop lag p99 (ms) | Verdict |",
            "| --- | --- | --: | --: | --: | --- |",
        ]
        lines += [
            f"| {h['run_id']} | {h['stage']} | {h['workers']} | {h['cpu_percent_max']:.0f} | {h['loop_lag_ms_p99']:.2f} | "
            f"{h['verdict']} |"
            for h in health
        ]
    return lines + [""]
