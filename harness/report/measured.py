"""Which records are measured, and the per-record context metrics need.

Owns: warm-up exclusion (`warmup: true` records are counted, never measured), steady-state trimming
(records SENT in the first and last N seconds of each (run, stage) are dropped), each stage's
concurrency, the TTFT-at-concurrency-1 baseline that queue time is measured from, and each record's
SLO limits (from its run's manifest). Adds these as columns of the dataset's frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness import metrics
from harness.report.load import Dataset

__all__ = ["Selection", "StageTrim", "default_trim_s", "select"]

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
    """Mark measured records and add the columns metrics need to `ds.frame`.

    Columns added: `end_unix_ns`, `trimmed`, `measured`, `concurrency`, `ttft_c1_ms`,
    `slo_ttft_ms`, `slo_tpot_ms`, `slo_e2e_ms` (NaN: no limit) and `has_slo`.
    """
    f = ds.frame
    f["end_unix_ns"] = metrics.end_unix_ns(f["sent_unix_ns"].to_numpy(), f["e2e_ms"].to_numpy())
    live = ~f["warmup"].to_numpy()
    stages = _trim(f, live, trim_s)
    f["measured"] = live & ~f["trimmed"].to_numpy()
    f["concurrency"] = _concurrency(f, live)
    f["ttft_c1_ms"] = _ttft_at_c1(f)
    run_index = f["run_index"].to_numpy()
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        limits = np.array([run.slo.get(key, np.nan) for run in ds.runs])
        f[f"slo_{key}"] = limits[run_index]
    f["has_slo"] = np.array([bool(run.slo) for run in ds.runs])[run_index]
    n_trimmed = int(f["trimmed"].sum())
    return Selection(
        trim_s=trim_s,
        records=len(f),
        warmup=int((~live).sum()),
        trimmed=n_trimmed,
        measured=int(f["measured"].sum()),
        stages=stages,
    )


def _trim(f: pd.DataFrame, live: np.ndarray, trim_s: float | None) -> list[StageTrim]:
    """Set `f.trimmed`: live records sent in the first or last N s of their (run, stage)."""
    stage_key = ["run_id", "stage"]
    bounds = f[live].groupby(stage_key, observed=True, sort=False)["sent_unix_ns"].agg(["min", "max", "size"])
    span_s = (bounds["max"] - bounds["min"]) / 1e9
    trims = [default_trim_s(s) if trim_s is None else trim_s for s in span_s]
    bounds["trim_ns"] = np.array(trims, dtype=np.float64) * 1e9
    per_record = bounds.reindex(pd.MultiIndex.from_arrays([f[k] for k in stage_key])).fillna(0)
    first = per_record["min"].to_numpy(np.int64)
    last = per_record["max"].to_numpy(np.int64)
    n_ns = per_record["trim_ns"].to_numpy(np.int64)
    sent = f["sent_unix_ns"].to_numpy()
    f["trimmed"] = live & ((sent < first + n_ns) | (sent > last - n_ns))
    counts = f.groupby(stage_key, observed=True)["trimmed"].sum()
    return [
        StageTrim(str(run), str(stage), span, trim, int(size), int(counts.get((run, stage), 0)))
        for (run, stage), size, span, trim in zip(bounds.index, bounds["size"], span_s, trims, strict=True)
    ]


def _concurrency(f: pd.DataFrame, live: np.ndarray) -> np.ndarray:
    """Users active in each record's (run, stage): Σ over workers of the worker's median `users`."""
    per_worker = f[live].groupby(["run_id", "stage", "worker"], observed=True)["users"].median()
    per_stage = per_worker.groupby(level=["run_id", "stage"], observed=True).sum()
    key = pd.MultiIndex.from_arrays([f["run_id"], f["stage"]])
    return per_stage.reindex(key).to_numpy(dtype=np.float64)


def _ttft_at_c1(f: pd.DataFrame) -> np.ndarray:
    """TTFT p50 of successful measured requests at concurrency 1, per (run, host, model); NaN: none."""
    c1 = f[f["measured"] & f["ok"] & (f["concurrency"] == 1)]
    base = c1.groupby(["run_id", "host", "model"], observed=True)["ttft_ms"].median()
    key = pd.MultiIndex.from_arrays([f["run_id"], f["host"], f["model"]])
    return base.reindex(key).to_numpy(dtype=np.float64)
