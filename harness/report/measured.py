"""Which records are measured, and the per-record context metrics need.

Owns: warm-up exclusion (`warmup: true` records are counted, never measured), steady-state trimming
(records SENT in the first and last N seconds of each (run, stage) are dropped), each stage's
concurrency, the TTFT-at-concurrency-1 baseline that queue time is measured from, and each record's
SLO limits (from its run's manifest). All of it is the engine's view `r`: view `rec` joined with
small tables of per-stage (`seg`), per-run (`run_slo`) and per-(run, host, model) (`c1`) values,
without the token offsets (those stay in `rec`, by `row_id`).

Columns `r` adds to the record fields: `row_id` (the file order), `end_unix_ns`, `segment` (the
record's (run, stage) number), `trimmed`, `measured`, `concurrency`, `ttft_c1_ms`, `slo_ttft_ms`,
`slo_tpot_ms`, `slo_e2e_ms` (NULL: no limit), `has_slo`, `n_events` (length of `event_offsets_us`)
and `events` (`content_events`, else `n_events`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness import metrics
from harness.report.engine import COLUMN_TYPES, REPORT_FIELDS
from harness.report.load import Dataset

__all__ = ["Selection", "StageTrim", "default_trim_s", "select"]

#: Record columns of the view `r` (every field the report reads but the list of token offsets).
_SCALARS = ", ".join(
    f'r1."{n}"'
    for n in ("row_id", "run_index", "file_index", "n_events", *REPORT_FIELDS)
    if not COLUMN_TYPES.get(n, ("",))[0].endswith("[]")
)

#: Stages shorter than this (first to last send) are not trimmed by default.
MIN_SPAN_TO_TRIM_S = 3.0
#: Default trim: this share of the stage at each end, at most `MAX_DEFAULT_TRIM_S`.
DEFAULT_TRIM_SHARE = 0.1
MAX_DEFAULT_TRIM_S = 5.0


@dataclass(frozen=True)
class StageTrim:
    """How one (run, stage) was trimmed."""

    run: str
    stage: str
    span_s: float
    """First to last send of its non-warm-up records."""
    trim_s: float
    records: int
    trimmed: int


@dataclass(frozen=True)
class Selection:
    """What `select` decided, for the report's notes."""

    trim_s: float | None
    """As asked; None: automatic per stage (`default_trim_s`)."""
    records: int
    warmup: int
    trimmed: int
    measured: int
    stages: list[StageTrim]


def default_trim_s(span_s: float) -> float:
    """Seconds trimmed at each end of a stage by default.

    Formula: 0 below 3 s of span, else min(5 s, 10% of the span).
    """
    return 0.0 if span_s < MIN_SPAN_TO_TRIM_S else min(MAX_DEFAULT_TRIM_S, DEFAULT_TRIM_SHARE * span_s)


def select(ds: Dataset, trim_s: float | None = None) -> Selection:
    """Decide what is measured: creates the engine's view `r` (see the module's docstring)."""
    e = ds.engine
    # Stages in order of first appearance; first and last send of their live records.
    seg = e.rows(
        """SELECT run_id, stage, min(row_id) AS first_row,
                  min(sent_unix_ns) FILTER (WHERE NOT warmup), max(sent_unix_ns) FILTER (WHERE NOT warmup),
                  count(*) FILTER (WHERE NOT warmup)
           FROM rec GROUP BY run_id, stage ORDER BY first_row"""
    )
    stages: list[StageTrim] = []
    seg_rows = []
    for i, (run, stage, _, first, last, size) in enumerate(seg):
        span_s = (last - first) / 1e9 if size else 0.0
        trim = default_trim_s(span_s) if trim_s is None else trim_s
        seg_rows.append((run, stage, i, first, last, int(trim * 1e9)))
        if size:
            stages.append(StageTrim(str(run), str(stage), float(span_s), float(trim), int(size), 0))
    # Nanosecond stamps never pass through pandas: a stage without live records (NULL) would turn
    # the column into floats, which hold 1.8e18 only to the nearest 256 ns.
    e.run(
        "CREATE OR REPLACE TABLE seg (run_id VARCHAR, stage VARCHAR, segment BIGINT, first_ns BIGINT, "
        "last_ns BIGINT, trim_ns BIGINT)"
    )
    if seg_rows:  # a run folder with no records yet (DuckDB refuses an empty executemany)
        e.con.executemany("INSERT INTO seg VALUES (?, ?, ?, ?, ?, ?)", seg_rows)
    # Users active in each stage: Σ over workers of the worker's median `users` (live records).
    e.run(
        """CREATE OR REPLACE TABLE seg_users AS
           SELECT segment, sum(m)::DOUBLE AS concurrency FROM (
               SELECT s.segment, median(r.users) AS m FROM rec r JOIN seg s USING (run_id, stage)
               WHERE NOT r.warmup GROUP BY s.segment, r.worker)
           GROUP BY segment"""
    )
    slo = pd.DataFrame(
        {
            "run_index": np.arange(len(ds.runs), dtype=np.int32),
            **{f"slo_{k}": [run.slo.get(k, np.nan) for run in ds.runs] for k in metrics.SLO_KEYS},
            "has_slo": [bool(run.slo) for run in ds.runs],
        }
    )
    e.con.register("slo_frame", slo)
    e.run(
        "CREATE OR REPLACE TABLE run_slo AS SELECT run_index, "
        + ", ".join(
            f"CASE WHEN isnan(slo_{k}) THEN NULL ELSE slo_{k} END AS slo_{k}" for k in metrics.SLO_KEYS
        )
        + ", has_slo FROM slo_frame"
    )
    e.con.unregister("slo_frame")
    e.run(
        """CREATE OR REPLACE VIEW r0 AS
           SELECT rec.*,
                  rec.sent_unix_ns + coalesce(trunc(rec.e2e_ms * 1e6)::BIGINT, 0) AS end_unix_ns,
                  s.segment,
                  coalesce(NOT rec.warmup AND (rec.sent_unix_ns < s.first_ns + s.trim_ns
                                                OR rec.sent_unix_ns > s.last_ns - s.trim_ns), false) AS trimmed,
                  u.concurrency,
                  q.slo_ttft_ms, q.slo_tpot_ms, q.slo_e2e_ms, q.has_slo,
                  coalesce(rec.content_events, rec.n_events) AS events
           FROM rec JOIN seg s USING (run_id, stage) JOIN run_slo q USING (run_index)
                LEFT JOIN seg_users u USING (segment)"""
    )
    e.run("CREATE OR REPLACE VIEW r1 AS SELECT *, NOT warmup AND NOT trimmed AS measured FROM r0")
    _ttft_at_c1(ds)
    # A view, not a table: each query reads only the columns it needs from the columnar copy
    # (materializing every column would spill past the memory limit and cost more than the joins
    # with the small tables above). Without the token offsets: see `Engine.offsets`.
    e.run(
        f"""CREATE OR REPLACE VIEW r AS
           SELECT {_SCALARS}, r1.end_unix_ns, r1.segment, r1.trimmed, r1.measured, r1.concurrency,
                  r1.slo_ttft_ms, r1.slo_tpot_ms, r1.slo_e2e_ms, r1.has_slo, r1.events,
                  c1.ttft_c1_ms
           FROM r1 LEFT JOIN c1 USING (run_id, host, model)"""
    )
    trimmed = dict(e.rows("SELECT segment, count(*) FROM r0 WHERE trimmed GROUP BY segment"))
    seg_of = {(s[0], s[1]): s[2] for s in seg_rows}
    stages = [
        StageTrim(
            t.run, t.stage, t.span_s, t.trim_s, t.records, int(trimmed.get(seg_of[(t.run, t.stage)], 0))
        )
        for t in stages
    ]
    records, warmup = e.one("SELECT count(*), count(*) FILTER (WHERE warmup) FROM rec")
    n_trimmed = sum(trimmed.values())
    return Selection(
        trim_s=trim_s,
        records=int(records),
        warmup=int(warmup),
        trimmed=int(n_trimmed),
        measured=int(records) - int(warmup) - int(n_trimmed),
        stages=stages,
    )


def _ttft_at_c1(ds: Dataset) -> None:
    """Table `c1`: TTFT p50 of successful measured requests at concurrency 1, per (run, host, model).

    The median is numpy's (mean of the two middle values), as pandas computed it before."""
    e = ds.engine
    got = e.numpy(
        """SELECT run_id, host, model, ttft_ms FROM r1
           WHERE measured AND ok AND concurrency = 1 AND ttft_ms IS NOT NULL AND NOT isnan(ttft_ms)
           ORDER BY run_id, host, model, row_id"""
    )
    keys = list(zip(got["run_id"], got["host"], got["model"], strict=True))
    values = np.asarray(got["ttft_ms"], dtype=np.float64)
    rows = []
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            rows.append((*keys[start], float(np.median(values[start:i]))))
            start = i
    frame = pd.DataFrame(rows, columns=["run_id", "host", "model", "ttft_c1_ms"]).astype(
        {"run_id": str, "host": str, "model": str, "ttft_c1_ms": "float64"}
    )
    e.con.register("c1_frame", frame)
    e.run("CREATE OR REPLACE TABLE c1 AS SELECT * FROM c1_frame")
    e.con.unregister("c1_frame")
