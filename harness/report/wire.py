"""Wire-level findings for the report: stream diagnostics per group, and the client's own health.

- Stream diagnostics (`harness.diagnostics`) per (run, host, model, stage, connection): tokens per
  socket read, share of tokens in bursts, TTFB→TTFT, and the patterns it names (Nagle, a client that
  could not keep up, buffering, a first wave of connections). Computed on up to `SAMPLE` successful
  measured records per group (seeded), which is plenty for medians and bursts: the engine gives the
  groups' row numbers, and only the sampled records' fields and `event_offsets_us` come back.
- Client health from `client_metrics.jsonl` (each Locust process samples its CPU and event-loop lag
  every second, and says whether its reads carry kernel receive stamps and whether the first-token
  watcher runs): a stage where any worker was above `CPU_LIMIT` % or (without kernel stamps) its
  loop lag p99 above `LAG_LIMIT_MS` is client-limited for TPOT and E2E. TTFT has its own rule
  (`judge`): with kernel stamps and the first-token watcher a late read no longer moves the first
  token's stamp, so TTFT is flagged only above `WATCH_CPU_LIMIT` % (where the watcher thread itself
  competes for the core) or on evidence that first tokens did get merged: while the client was busy,
  more than `FIRST_ALIKE_LIMIT` of the requests whose host spread its tokens over time had their first
  two content events on one stamp (benchmarks/README.md, "bench_ceiling.py"). Groups where the host
  held its first tokens for Nagle (the diagnostics name it) are left out of that count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd

from harness.diagnostics import StreamStats, diagnose, nagle_held
from harness.report import aggregate
from harness.report.aggregate import Summarizer
from harness.report.load import Dataset

__all__ = [
    "CPU_LIMIT",
    "FIRST_ALIKE_LIMIT",
    "LAG_LIMIT_MS",
    "WATCH_CPU_LIMIT",
    "Health",
    "client_health",
    "diagnostics",
    "judge",
    "markdown_lines",
    "sample",
    "table_rows",
    "verdict",
]

SAMPLE = 20_000
CPU_LIMIT = 80.0
LAG_LIMIT_MS = 5.0
#: TTFT's CPU limit when reads carry kernel stamps and the first-token watcher runs: the first token
#: keeps its own arrival however late the loop reads it, as long as the watcher's thread gets the
#: core within one token gap; near a full core it competes with the loop for it.
WATCH_CPU_LIMIT = 95.0
#: Share of requests whose first two content events carry one stamp (the first token read merged
#: with the second) above which a busy client's TTFT is not trusted: the first token is then one
#: token gap late (or more). With the watcher working this stays near 0 (benchmarks/README.md).
FIRST_ALIKE_LIMIT = 0.01
#: A request counts for that share only when its host spread its tokens over time (its TPOT from
#: first and last stamp, which a late read does not move, at least this): a host that sends the
#: whole answer in one write has nothing to keep apart.
SPREAD_US = 500
KEYS = ("run_id", "host", "model", "stage", "connection")


def client_health(ds: Dataset, fed: Sample | None = None) -> list[dict[str, Any]]:
    """Per (run, stage): the worst worker CPU % and loop lag p99 seen, how the client stamped its
    reads, and whether it was too busy for TTFT or for the rest (`judge`). `fed`: the diagnostics
    sample, already fed the event offsets: its first-two-events counts are TTFT's evidence."""
    alike: dict[tuple[Any, Any], list[int]] = {}
    if fed is not None:
        for k, (key, st) in enumerate(zip(fed.keys, group_stats(fed), strict=True)):
            a = alike.setdefault((key.get("run_id"), key.get("stage")), [0, 0, 0])
            if _nagle(st):
                # The host held its first tokens for the client's delayed ACK and sent them together
                # (the diagnostics name it): its bursts are no evidence against the client.
                a[2] += int(fed.first_pairs[k])
                continue
            a[0] += int(fed.first_pairs[k])
            a[1] += int(fed.first_alike[k])
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
            # None: sampled before the process opened a connection (or written before the key existed)
            kernel = {m.get("kernel_stamps") for m in samples} - {None} == {True}
            watch = kernel and {m.get("first_token_watch") for m in samples} - {None} == {True}
            pairs, same, nagle = alike.get((run.run_id, stage), [0, 0, 0])
            share = round(same / pairs, 4) if pairs else None
            h = judge(cpu, lag, kernel, watch, share)
            out.append(
                {
                    "run_id": run.run_id,
                    "stage": stage,
                    "workers": len({m.get("worker") for m in samples}),
                    "samples": len(samples),
                    "cpu_percent_max": round(cpu, 1),
                    "loop_lag_ms_p99": round(lag, 2),
                    "kernel_stamps": kernel,
                    "first_token_watch": watch,
                    "first_two_alike_share": share,
                    "first_two_requests": pairs,
                    "first_two_nagle_requests": nagle,
                    "client_limited": h.ttft_limited or h.others_limited,
                    "ttft_client_limited": h.ttft_limited,
                    "verdict": h.verdict,
                }
            )
    return out


@dataclass(frozen=True)
class Health:
    ttft_limited: bool
    """TTFT not trustworthy."""
    others_limited: bool
    """TPOT and E2E (and every other timed figure) not trustworthy."""
    verdict: str


def judge(
    cpu: float,
    lag_ms: float,
    kernel_stamps: bool = False,
    first_token_watch: bool = False,
    first_alike: float | None = None,
) -> Health:
    """Whether a stage's client was too busy for its figures, TTFT apart from the rest.

    TPOT, E2E: above `CPU_LIMIT` % CPU, or with the loop late beyond `LAG_LIMIT_MS` where reads carry
    no kernel stamps (with them a late loop only delays sends: closed loop, the next request; open
    loop, dispatch delay shows it). TTFT: without kernel stamps, the same rule. With them, the CPU
    limit is `WATCH_CPU_LIMIT` when the first-token watcher runs (`CPU_LIMIT` when not), and a busy
    client (CPU above `CPU_LIMIT` or loop lag above `LAG_LIMIT_MS`) whose requests show their first
    two content events on one stamp in more than `FIRST_ALIKE_LIMIT` of cases (`first_alike`) is
    flagged: its first tokens were read merged with the second. The same share from a client that
    was not busy is the host's own bursts, which the stream diagnostics name "bursty": not the
    client's fault, and not flagged; groups held by Nagle are left out of `first_alike` beforehand.
    A busy client and a host that bursts cannot be told apart from the stamps: then TTFT is flagged."""
    busy = cpu > CPU_LIMIT or lag_ms > LAG_LIMIT_MS
    others = cpu > CPU_LIMIT or (lag_ms > LAG_LIMIT_MS and not kernel_stamps)
    merged = busy and first_alike is not None and first_alike > FIRST_ALIKE_LIMIT
    if not kernel_stamps:
        ttft = others
    else:
        ttft = cpu > (WATCH_CPU_LIMIT if first_token_watch else CPU_LIMIT) or merged
    seen = (
        f"first two tokens on one stamp in {100 * first_alike:.1f} % of requests"
        if first_alike is not None
        else "no streamed requests to check the first token with"
    )
    if ttft and others and not kernel_stamps and cpu <= CPU_LIMIT:
        text = (
            "client starved (event loop late while its CPU was free: other processes, the host perhaps, "
            "share its cores): figures not trustworthy; give the client its own cores"
        )
    elif ttft and others:
        text = "client-limited (CPU): figures not trustworthy; add workers" + (f" ({seen})" if merged else "")
    elif others:
        text = (
            "client-limited (CPU): TPOT and E2E not trustworthy; add workers (TTFT kept: kernel stamps "
            f"and the first-token watcher, {seen})"
        )
    elif ttft:
        # Below CPU_LIMIT (above it TPOT and E2E are flagged too): the evidence alone.
        text = (
            f"client-limited (first token): TTFT not trustworthy ({seen} while the event loop was late, "
            f"lag p99 {lag_ms:.1f} ms); add workers"
        )
    elif lag_ms > LAG_LIMIT_MS:
        text = "ok (event loop late, but token times come from kernel receive stamps; sends may be late)"
    else:
        text = "ok"
    return Health(ttft, others, text)


def verdict(
    cpu: float,
    lag_ms: float,
    kernel_stamps: bool = False,
    first_token_watch: bool = False,
    first_alike: float | None = None,
) -> str:
    """`judge`'s verdict in words."""
    return judge(cpu, lag_ms, kernel_stamps, first_token_watch, first_alike).verdict


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
    first_pairs: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    """Per group, requests with two content events or more whose host spread its tokens over time
    (TPOT from the stamps >= `SPREAD_US`): their first two events should carry two stamps."""
    first_alike: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    """Per group, those of them whose first two content events carry one stamp."""
    stats: list[StreamStats] | None = None
    """Per group, its stream statistics (`group_stats`), once computed."""

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
        # First two content events on one stamp, where the host spread its tokens over time.
        two = lengths >= 2
        start, n = starts[:-1][two], lengths[two]
        first2 = v[start].astype(np.int64)
        second = v[start + 1].astype(np.int64)
        spread = v[start + n - 1].astype(np.int64) - first2 >= (n - 1) * SPREAD_US
        pair_group = groups[two].astype(np.int64)[spread]
        self.first_pairs += np.bincount(pair_group, minlength=self.first_pairs.size)
        self.first_alike += np.bincount(
            pair_group[(first2 == second)[spread]], minlength=self.first_alike.size
        )
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
        np.zeros(n_groups, np.int64),
        np.zeros(n_groups, np.int64),
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
    for named, st in zip(fed.keys, group_stats(fed), strict=True):
        h = worst.get((named.get("run_id"), named.get("stage")))
        findings = diagnose(
            st,
            connection=named.get("connection"),
            client_cpu_max=h["cpu_percent_max"] if h else None,
            client_lag_ms_p99=h["loop_lag_ms_p99"] if h else None,
        )
        out.append({"key": dict(named), "stats": asdict(st), "findings": [asdict(x) for x in findings]})
    return out


def group_stats(fed: Sample) -> list[StreamStats]:
    """Each group's stream statistics, computed once per sample."""
    if fed.stats is None:
        fed.stats = _stream_stats_by_group(fed)
    return fed.stats


def _nagle(st: StreamStats) -> bool:
    """Whether `diagnose` names Nagle for this group (the same evidence, the same reference)."""
    reference = st.fresh_ttfb_to_ttft_ms_p50 if st.first_on_connection >= 3 else None
    return nagle_held(st.reused_ttfb_to_ttft_ms_p50, reference, st.reused_first_read_tokens_p50)


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
            f"{CPU_LIMIT:g} % CPU (or, without kernel receive stamps, loop lag p99 above {LAG_LIMIT_MS:g} ms) is "
            "client-limited: its figures are not trustworthy; add workers. TTFT is judged apart: with kernel "
            "stamps and the first-token watcher a late read keeps the first token's own arrival, so TTFT is "
            f"flagged only above {WATCH_CPU_LIMIT:g} % CPU, or when a busy client's requests show their first "
            f"two tokens on one stamp in more than {100 * FIRST_ALIKE_LIMIT:g} % of cases (1st=2nd; groups "
            "where the host held its first tokens for Nagle left out).",
            "",
            "| Run | Stage | Workers | CPU max (%) | Loop lag p99 (ms) | Kernel stamps | First-token watcher "
            "| 1st=2nd (%) | Verdict |",
            "| --- | --- | --: | --: | --: | --- | --- | --: | --- |",
        ]

        def yes(v: Any) -> str:
            return "yes" if v else "no"

        lines += [
            f"| {h['run_id']} | {h['stage']} | {h['workers']} | {h['cpu_percent_max']:.0f} | {h['loop_lag_ms_p99']:.2f} | "
            f"{yes(h.get('kernel_stamps'))} | {yes(h.get('first_token_watch'))} | "
            f"{'–' if h.get('first_two_alike_share') is None else format(100 * h['first_two_alike_share'], '.1f')} | "
            f"{h['verdict']} |"
            for h in health
        ]
    return lines + [""]
