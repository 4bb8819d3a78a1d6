"""The run folder: its file names, its creation, its manifest and the spools written into it.

Every module that writes or reads a run folder takes its paths from `RunDir` (the layout table in
docs/ARCHITECTURE.md is this module's), so a file is renamed or added in one place:

    RUN_DIR/
      manifest.json          orchestrator (`harness run`, `harness bench`): what ran, how it ended
      plan.json              what the Locust processes ran
      records.jsonl          one record per request sent (`harness.records.Record`), warm-up first
      locust_counts.json     Locust's own final request counts, for the record check
      client_metrics.jsonl   per load-generator process and second: CPU, event-loop lag
      host_metrics.jsonl     RSS and CPU of hosts on this machine
      webui_changes.jsonl    choices changed in the web UI's start form
      spool/<worker>.records.jsonl, spool/<worker>.client.jsonl   a worker's own copies
      hosts/<i>-<kind>.log   embedded hosts' logs
      locust/                Locust's CSV, HTML report and log
      summary.json, report.*, *.csv   the report (harness.report)
      records.duckdb         the report's columnar copy of the records (harness.report.engine)
      bench.md, bench.csv, bench.json, scoring.csv, judge.jsonl   `harness bench`: the selection
                             table, answers to score by hand, a judge model's verdicts

`Spool` is the append-only JSONL file a process writes records (or samples) to as it goes, flushed
at least every `flush_interval_s` so a crash loses at most that much.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from harness import __version__
from harness.errors import InputError

__all__ = [
    "CLIENT_METRICS",
    "HOST_METRICS",
    "LOCUST_COUNTS",
    "MANIFEST",
    "PLAN",
    "RECORDS",
    "SPOOL_DIR",
    "SUMMARY",
    "WEBUI_CHANGES",
    "RunDir",
    "Spool",
    "machine",
    "make_run_dir",
    "new_run_id",
    "read_json",
    "utc",
    "versions",
    "write_json",
]

MANIFEST = "manifest.json"
PLAN = "plan.json"
RECORDS = "records.jsonl"
LOCUST_COUNTS = "locust_counts.json"
CLIENT_METRICS = "client_metrics.jsonl"
HOST_METRICS = "host_metrics.jsonl"
WEBUI_CHANGES = "webui_changes.jsonl"
SUMMARY = "summary.json"
SPOOL_DIR = "spool"
SPOOL_RECORDS_SUFFIX = ".records.jsonl"
SPOOL_CLIENT_SUFFIX = ".client.jsonl"
SCORING = "scoring.csv"
JUDGE = "judge.jsonl"
BENCH_TABLES = ("bench.md", "bench.csv", "bench.json")
HOSTS_DIR = "hosts"
LOCUST_DIR = "locust"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder (nothing is created by asking for a path)."""

    path: Path

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def plan(self) -> Path:
        return self.path / PLAN

    @property
    def records(self) -> Path:
        return self.path / RECORDS

    @property
    def locust_counts(self) -> Path:
        return self.path / LOCUST_COUNTS

    @property
    def client_metrics(self) -> Path:
        return self.path / CLIENT_METRICS

    @property
    def host_metrics(self) -> Path:
        return self.path / HOST_METRICS

    @property
    def webui_changes(self) -> Path:
        return self.path / WEBUI_CHANGES

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def scoring(self) -> Path:
        return self.path / SCORING

    @property
    def judge(self) -> Path:
        return self.path / JUDGE

    @property
    def bench_tables(self) -> tuple[Path, Path, Path]:
        """(bench.md, bench.csv, bench.json): the model selection table."""
        md, csv, js = (self.path / name for name in BENCH_TABLES)
        return md, csv, js

    @property
    def locust_log(self) -> Path:
        return self.path / LOCUST_DIR / "locust.log"

    @property
    def locust_csv_prefix(self) -> Path:
        return self.path / LOCUST_DIR / "locust"

    @property
    def locust_html(self) -> Path:
        return self.path / LOCUST_DIR / "report.html"

    def host_log(self, index: int, kind: str) -> Path:
        """The log of the `index`-th embedded host, of kind `kind` (`sim`, `foundry`)."""
        return self.path / HOSTS_DIR / f"{index}-{kind}.log"

    def worker_spools(self, worker: str) -> tuple[Path, Path]:
        """(records, client metrics) spool paths of a worker (`hostname:pid`)."""
        me = worker.replace(":", "-")
        spool = self.path / SPOOL_DIR
        return spool / f"{me}{SPOOL_RECORDS_SUFFIX}", spool / f"{me}{SPOOL_CLIENT_SUFFIX}"

    def record_spools(self) -> list[Path]:
        """Every worker's records spool, sorted."""
        return sorted((self.path / SPOOL_DIR).glob(f"*{SPOOL_RECORDS_SUFFIX}"))


def new_run_id(name: str) -> str:
    """`20261125-153604-quickstart-3f9a`: sortable by start time, unique across machines."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{name}-{secrets.token_hex(2)}"


def make_run_dir(out: Path, run_id: str) -> Path:
    """Create `out/run_id` (absolute); an existing non-empty folder or an unwritable `out` is bad input."""
    run_dir = (out / run_id).resolve()
    if run_dir.exists() and any(run_dir.iterdir()):
        raise InputError(f"--run-id {run_id}: run folder {run_dir} already exists; choose another id")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create run folder ({exc.strerror})") from None
    return run_dir


# --- the manifest's common parts -----------------------------------------------------------------


def utc(t: float | None = None) -> str:
    """`2026-11-25T15:36:04Z`: wall-clock times in manifests."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t if t is not None else time.time()))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(*dists: str) -> dict[str, str | None]:
    """`{"harness": ..., <dist>: ..., "python": ...}`: what a manifest records of the software."""
    return {"harness": __version__, **{d: _version(d) for d in dists}, "python": platform.python_version()}


def machine() -> dict[str, Any]:
    return {"hostname": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count()}


def write_json(path: Path, obj: Any) -> None:
    """Write indented JSON through a temporary file, so a reader never sees half a manifest."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    tmp.replace(path)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from the run folder; InputError naming the file when it is missing or not an object."""
    try:
        obj = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path.parent}: no {path.name} (expected {what})") from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object")
    return obj


# --- spools --------------------------------------------------------------------------------------


class Spool:
    """Append-only JSONL file, flushed at least every `flush_interval_s` seconds.

    Thread- and greenlet-safe for `append`; the owner calls `maybe_flush()` often (cheap) or runs
    `flush()` from a timer. Lines are written whole, so a crash can cut at most the last line.
    """

    def __init__(self, path: Path, *, flush_interval_s: float = 0.5) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = open(path, "ab")  # noqa: SIM115 - lives as long as the spool
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._interval_ns = int(flush_interval_s * 1e9)
        self._last_flush_ns = time.monotonic_ns()
        self.count = 0

    def append(self, record: Any) -> None:
        """Append a record (anything with `to_json()`) or a JSON-serialisable dict."""
        to_json = getattr(record, "to_json", None)
        self.append_line(to_json() if to_json is not None else orjson.dumps(record))

    def append_line(self, line: bytes) -> None:
        """Append one already serialised JSON line (without its newline)."""
        with self._lock:
            self._pending.append(line + b"\n")
            self.count += 1
        self.maybe_flush()

    def maybe_flush(self) -> None:
        if time.monotonic_ns() - self._last_flush_ns >= self._interval_ns:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            self._last_flush_ns = time.monotonic_ns()
            if not self._pending or self._fh is None:
                return
            data = b"".join(self._pending)
            self._pending.clear()
            self._fh.write(data)
            self._fh.flush()

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
