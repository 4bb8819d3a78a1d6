"""Loading run folders: records, manifest and host samples -> one `Dataset` the report queries.

Owns the run folder's reading side: which files hold its records (`records.jsonl`, or, in a folder
without one, such as a fleet's, every worker spool `spool/*.records.jsonl`), `manifest.json` (run
id, the scenario's SLOs), and the optional `host_metrics.jsonl`. Records of every run go into one
view of the engine (`engine.Engine`, through the run's columnar copy `records.duckdb`); nothing is
filtered here (warm-up and trimming are `measured`'s job).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from harness.errors import InputError
from harness.metrics import SLO_KEYS
from harness.report.engine import COPY_NAME, REPORT_FIELDS, Engine

__all__ = ["Dataset", "Run", "load_runs", "records_files"]

RECORDS_NAME = "records.jsonl"
MANIFEST_NAME = "manifest.json"
HOST_METRICS_NAME = "host_metrics.jsonl"
SPOOL_GLOB = "spool/*.records.jsonl"


@dataclass(frozen=True)
class Run:
    """One run folder as loaded."""

    dir: Path
    run_id: str
    """The manifest's `run_id`, else the folder's name."""
    manifest: dict[str, Any]
    slo: dict[str, float]
    """The scenario's SLO limits that are set (`ttft_ms`, `tpot_ms`, `e2e_ms`); empty: none."""
    records: int
    broken_lines: int
    from_cache: bool
    """Always False: kept in summary.json for its readers (there is no cache any more)."""
    broken_by_file: dict[Path, int] = field(default_factory=dict)
    """Files with broken lines -> how many."""


@dataclass
class Dataset:
    """All records of the runs loaded (warm-up included) in the engine's view `rec`, and the runs."""

    engine: Engine
    runs: list[Run]
    host_samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    """`host_metrics.jsonl` lines of every run, with `run_index`: host, t_unix_ns, rss_bytes,
    cpu_percent; also in the engine as table `host_samples`."""

    def close(self) -> None:
        self.engine.close()


def records_files(run_dir: Path) -> list[Path]:
    """The files holding a run folder's records: `records.jsonl`, else its worker spools."""
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such folder (expected a run folder holding {RECORDS_NAME})")
    path = run_dir / RECORDS_NAME
    if path.is_file():
        return [path]
    spools = sorted(run_dir.glob(SPOOL_GLOB))
    if spools:
        return spools
    raise InputError(
        f"{run_dir}: no {RECORDS_NAME} in this folder (expected a run folder, or one with worker spools "
        f"{SPOOL_GLOB})"
    )


def load_runs(run_dirs: list[Path], *, memory_limit: str | None = None) -> Dataset:
    """Load and merge run folders; raises `InputError` for a folder that is not a run folder."""
    if not run_dirs:
        raise InputError("no run folder given: expected at least one folder holding records.jsonl")
    files = [records_files(d) for d in run_dirs]  # every folder checked before any is read
    engine = Engine(fields=REPORT_FIELDS, memory_limit=memory_limit)
    try:
        runs: list[Run] = []
        samples: list[pd.DataFrame] = []
        for i, (run_dir, paths) in enumerate(zip(run_dirs, files, strict=True)):
            manifest = _read_manifest(run_dir)
            reads = engine.load_run(i, paths, run_dir / COPY_NAME)
            run_id = str(manifest.get("run_id") or run_dir.name)
            runs.append(
                Run(
                    run_dir,
                    run_id,
                    manifest,
                    _slo(manifest),
                    sum(r.records for r in reads),
                    sum(r.broken_lines for r in reads),
                    False,
                    {r.path: r.broken_lines for r in reads if r.broken_lines},
                )
            )
            samples.append(_read_host_metrics(run_dir, i))
        non_empty = [s for s in samples if not s.empty]
        host_samples = (
            pd.concat(non_empty, ignore_index=True)
            if non_empty
            else pd.DataFrame(
                {
                    "host": pd.Series(dtype=str),
                    "t_unix_ns": pd.Series(dtype="int64"),
                    "rss_bytes": pd.Series(dtype="float64"),
                    "cpu_percent": pd.Series(dtype="float64"),
                    "run_index": pd.Series(dtype="int32"),
                }
            )
        )
        engine.con.register("host_samples_frame", host_samples)
        engine.run("CREATE TABLE host_samples AS SELECT * FROM host_samples_frame")
        engine.con.unregister("host_samples_frame")
    except BaseException:
        engine.close()
        raise
    return Dataset(engine, runs, host_samples)


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: expected a JSON object")
    return manifest


def _slo(manifest: dict[str, Any]) -> dict[str, float]:
    scenario = manifest.get("scenario")
    slo = scenario.get("slo") if isinstance(scenario, dict) else None
    if not isinstance(slo, dict):
        return {}
    limits = {k: slo[k] for k in SLO_KEYS if isinstance(slo.get(k), int | float)}
    return {k: float(v) for k, v in limits.items() if math.isfinite(v)}


def _read_host_metrics(run_dir: Path, run_index: int) -> pd.DataFrame:
    path = run_dir / HOST_METRICS_NAME
    if not path.is_file():
        return pd.DataFrame()
    rows = []
    with open(path, "rb") as fh:
        for line in fh:
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a sampler cut mid-line, like records
            if (
                isinstance(row, dict)
                and isinstance(row.get("host"), str)
                and isinstance(row.get("t_unix_ns"), int)
                and isinstance(row.get("rss_bytes"), int | float)
            ):
                rows.append(row)
    frame = pd.DataFrame(rows, columns=["host", "t_unix_ns", "rss_bytes", "cpu_percent"])
    frame["rss_bytes"] = frame["rss_bytes"].astype("float64")
    frame["cpu_percent"] = frame["cpu_percent"].astype("float64")
    frame["run_index"] = run_index
    return frame
