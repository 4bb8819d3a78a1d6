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

    Columns added: `end_unix_ns`, `segment` (the record's (run, stage) number), `trimmed`, `measured`,
    `concurrency`, `ttft_c1_ms`, `slo_ttft_ms`, `slo_tpot_ms`, `slo_e2e_ms` (NaN: no limit), `has_slo`.
    """
    f = ds.frame
    f["end_unix_ns"] = metrics.end_unix_ns(f["sent_unix_ns"].to_numpy(), f["e2e_ms"].to_numpy())
    live = ~f["warmup"].to_numpy()
    stage = f["segment"] = _codes(f, ["run_id", "stage"])
    stages = _trim(f, live, stage, trim_s)
    f["measured"] = live & ~f["trimmed"].to_numpy()
    f["concurrency"] = _concurrency(f, live, stage)
    f["ttft_c1_ms"] = _ttft_at_c1(f)
    run_index = f["run_index"].to_numpy()
    for key in metrics.SLO_KEYS:
        limits = np.array([run.slo.get(key, np.nan) for run in ds.runs])
        f[f"slo_{key}"] = limits[run_index]
    f["has_slo"] = np.array([bool(run.slo) for run in ds.runs])[run_index]
    return Selection(
        trim_s=trim_s,
        records=len(f),
        warmup=int((~live).sum()),
        trimmed=int(f["trimmed"].sum()),
        measured=int(f["measured"].sum()),
        stages=stages,
    )


def _codes(f: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Per record, the number of its group of `keys` (0, 1, ... in order of appearance)."""
    return np.asarray(f[keys].groupby(keys, observed=True, sort=False, dropna=False).ngroup(), dtype=np.int64)


def _trim(f: pd.DataFrame, live: np.ndarray, stage: np.ndarray, trim_s: float | None) -> list[StageTrim]:
    """Set `f.trimmed`: live records sent in the first or last N s of their (run, stage) (`stage`: codes)."""
    n = int(stage.max(initial=-1)) + 1
    sent = f["sent_unix_ns"].to_numpy(np.int64)
    first = np.full(n, np.iinfo(np.int64).max)
    last = np.full(n, np.iinfo(np.int64).min)
    np.minimum.at(first, stage[live], sent[live])
    np.maximum.at(last, stage[live], sent[live])
    size = np.bincount(stage[live], minlength=n)
    span_s = np.where(size > 0, (last - first) / 1e9, 0.0)
    trims = np.array([default_trim_s(x) if trim_s is None else trim_s for x in span_s])
    trim_ns = (trims * 1e9).astype(np.int64)
    trimmed = live & ((sent < first[stage] + trim_ns[stage]) | (sent > last[stage] - trim_ns[stage]))
    f["trimmed"] = trimmed
    n_trimmed = np.bincount(stage[trimmed], minlength=n)
    first_row = np.unique(stage, return_index=True)[1]
    run, name = f["run_id"].iloc[first_row].tolist(), f["stage"].iloc[first_row].tolist()
    return [
        StageTrim(
            str(run[i]), str(name[i]), float(span_s[i]), float(trims[i]), int(size[i]), int(n_trimmed[i])
        )
        for i in range(n)
        if size[i]
    ]


def _concurrency(f: pd.DataFrame, live: np.ndarray, stage: np.ndarray) -> np.ndarray:
    """Users active in each record's (run, stage): Σ over workers of the worker's median `users`."""
    worker = _codes(f, ["worker"])
    users = pd.Series(f["users"].to_numpy()[live])
    per_worker = users.groupby([stage[live], worker[live]]).median()
    per_stage = per_worker.groupby(level=0).sum()
    return per_stage.reindex(np.arange(int(stage.max(initial=-1)) + 1)).to_numpy(np.float64)[stage]


def _ttft_at_c1(f: pd.DataFrame) -> np.ndarray:
    """TTFT p50 of successful measured requests at concurrency 1, per (run, host, model); NaN: none."""
    group = _codes(f, ["run_id", "host", "model"])
    c1 = (f["measured"] & f["ok"] & (f["concurrency"] == 1)).to_numpy()
    base = pd.Series(f["ttft_ms"].to_numpy()[c1]).groupby(group[c1]).median()
    return base.reindex(np.arange(int(group.max(initial=-1)) + 1)).to_numpy(np.float64)[group]
