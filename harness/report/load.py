"""Loading run folders: records, manifest and host samples -> one `Dataset` the report computes on.

Owns the run folder's reading side: `records.jsonl` (through `jsonl`, with a Parquet cache beside it
keyed on the JSONL's size and mtime), `manifest.json` (run id, the scenario's SLOs), and the optional
`host_metrics.jsonl`. Records of several runs are merged into one table; nothing is filtered here
(warm-up and trimming are `measured`'s job).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.errors import InputError
from harness.metrics import SLO_KEYS
from harness.report.jsonl import SCHEMA, STRING_FIELDS, read_jsonl

__all__ = ["CACHE_NAME", "Dataset", "Run", "load_runs"]

RECORDS_NAME = "records.jsonl"
MANIFEST_NAME = "manifest.json"
HOST_METRICS_NAME = "host_metrics.jsonl"
CACHE_NAME = "records.cache.parquet"
#: A cache written for another table layout is ignored: its key holds the layout's fingerprint.
_CACHE_LAYOUT = hashlib.sha256(SCHEMA.to_string().encode()).hexdigest()[:16]
CACHE_ROW_GROUP = 65_536
STRING_NAMES = [n for n, _ in STRING_FIELDS]


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


@dataclass
class Dataset:
    """All records of the runs loaded, one row each (warm-up included), and their token events."""

    frame: pd.DataFrame
    """Record fields of `jsonl.SCHEMA` but `event_offsets_us`; strings are categoricals, missing
    numbers NaN; plus `run_index` (into `runs`)."""
    events: pa.ChunkedArray
    """Every record's `event_offsets_us`, in blocks as read (never concatenated: that copy is big)."""
    runs: list[Run]
    host_samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    """`host_metrics.jsonl` lines of every run, with `run_index`: host, t_unix_ns, rss_bytes, cpu_percent."""
    cache_writers: list[threading.Thread] = field(default_factory=list)
    """Parquet caches still being written; `wait` before the process may end."""
    n_events: npt.NDArray[np.int64] = field(init=False)
    """Content events per record."""

    def __post_init__(self) -> None:
        lengths = [pc.list_value_length(c).to_numpy(zero_copy_only=False) for c in self.events.chunks]
        self.n_events = np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64)

    def wait(self) -> None:
        """Wait for the Parquet caches being written in the background."""
        for writer in self.cache_writers:
            writer.join()

    def blocks(self) -> Iterator[tuple[int, npt.NDArray[np.int32], npt.NDArray[np.int64]]]:
        """Per block of records as stored: (row of its first record, the block's event offsets one
        record after another, events per record). Views, not copies."""
        row = 0
        for chunk in self.events.chunks:
            n = len(chunk)
            yield row, chunk.flatten().to_numpy(), self.n_events[row : row + n]
            row += n


def load_runs(run_dirs: list[Path]) -> Dataset:
    """Load and merge run folders; raises `InputError` for a folder that is not a run folder."""
    if not run_dirs:
        raise InputError("no run folder given: expected at least one folder holding records.jsonl")
    runs: list[Run] = []
    tables: list[pa.Table] = []
    samples: list[pd.DataFrame] = []
    writers: list[threading.Thread] = []
    for i, run_dir in enumerate(run_dirs):
        records_path = _records_path(run_dir)
        manifest = _read_manifest(run_dir)
        table, broken, writer = _read_records(records_path)
        run_id = str(manifest.get("run_id") or run_dir.name)
        runs.append(Run(run_dir, run_id, manifest, _slo(manifest), table.num_rows, broken, writer is None))
        writers += [writer] if writer else []
        tables.append(table.append_column("run_index", pa.array(np.full(table.num_rows, i, np.int32))))
        samples.append(_read_host_metrics(run_dir, i))
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    events = table.column("event_offsets_us")
    frame = _frame(table.drop_columns(["event_offsets_us"]))
    non_empty = [s for s in samples if not s.empty]
    host_samples = pd.concat(non_empty, ignore_index=True) if non_empty else pd.DataFrame()
    return Dataset(frame, events, runs, host_samples, writers)


def _records_path(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such folder (expected a run folder holding {RECORDS_NAME})")
    path = run_dir / RECORDS_NAME
    if not path.is_file():
        raise InputError(f"{run_dir}: no {RECORDS_NAME} in this folder (expected a run folder)")
    return path


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


def _read_records(path: Path) -> tuple[pa.Table, int, threading.Thread | None]:
    """(table, broken lines, the thread writing a new cache): the Parquet cache when it matches the
    JSONL (no thread), else the JSONL parsed, and the cache written while the report computes."""
    stat = path.stat()
    key = {"layout": _CACHE_LAYOUT, "size": str(stat.st_size), "mtime_ns": str(stat.st_mtime_ns)}
    cache = path.with_name(CACHE_NAME)
    cached = _read_cache(cache, key)
    if cached is not None:
        return *cached, None
    table, broken = read_jsonl(path)
    writer = threading.Thread(
        target=_write_cache, args=(cache, table, key | {"broken": str(broken)}), name="cache"
    )
    writer.start()
    for name in STRING_NAMES:
        table = table.set_column(
            table.schema.get_field_index(name), name, pc.dictionary_encode(table.column(name))
        )
    return table, broken, writer


def _read_cache(cache: Path, key: dict[str, str]) -> tuple[pa.Table, int] | None:
    try:
        file = pq.ParquetFile(cache, read_dictionary=STRING_NAMES)
        meta = {k.decode(): v.decode() for k, v in (file.schema_arrow.metadata or {}).items()}
        if any(meta.get(f"harness_{k}") != v for k, v in key.items()):
            return None
        # Row group by row group: decoding the whole file at once needs twice the memory.
        table = pa.concat_tables([file.read_row_group(i) for i in range(file.num_row_groups)])
    except (OSError, pa.ArrowInvalid):
        return None
    return table.replace_schema_metadata(None), int(meta.get("harness_broken", "0"))


def _write_cache(cache: Path, table: pa.Table, meta: dict[str, str]) -> None:
    """Best effort: a read-only run folder just goes without a cache."""
    table = table.replace_schema_metadata({f"harness_{k}": v for k, v in meta.items()})
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")  # two reports at once write apart
    try:
        pq.write_table(
            table,
            tmp,
            row_group_size=CACHE_ROW_GROUP,
            compression="none",
            use_dictionary=STRING_NAMES,
            # Offsets rise within a record: deltas pack small and decode fast.
            column_encoding={"event_offsets_us": "DELTA_BINARY_PACKED"},
        )
        tmp.replace(cache)
    except (OSError, pa.ArrowException):
        tmp.unlink(missing_ok=True)


def _frame(table: pa.Table) -> pd.DataFrame:
    """Strings (dictionary-encoded by now) become categoricals, missing numbers NaN."""
    return table.unify_dictionaries().to_pandas(split_blocks=True, self_destruct=True)


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
    frame["run_index"] = run_index
    return frame
