"""The report's analytical engine: DuckDB over the records of one or many runs, out of core.

Owns how records get from `records.jsonl` files (and worker spools) into one table, `rec`, of an
embedded DuckDB database, and the connection every later stage queries. Why DuckDB: it reads
newline-delimited JSON itself (in parallel, straight from the file, only the columns asked for),
runs every group-by, window and join in a buffer pool capped by `memory_limit` (spilling to a
temporary folder beyond it), ships as one wheel with no server, and hands results to numpy and
pandas without copies. Measured against the hand-written msgspec parser it replaces: see
benchmarks/README.md.

The column types come from one place, the `harness.records.Record` dataclass: each field's
annotation maps to a DuckDB type (`COLUMN_TYPES`), so a field added there is read here. A key a
record lacks reads as NULL (older runs lack newer optional keys).

Tolerance: a line that is not JSON (a file cut mid-line by a crash) is skipped and counted; a line
that is JSON but not a record (a required key missing, a value of the wrong type) raises
`InputError` naming the file and line. Every file is first read strictly (the fast path); only a
file the strict read refuses, or whose required columns come out NULL, is examined line by line.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import numpy.typing as npt
import orjson

from harness.errors import HarnessError, InputError
from harness.records import REQUIRED_KEYS, Record

__all__ = [
    "COLUMN_TYPES",
    "DEFAULT_MEMORY_LIMIT",
    "NOT_NULL",
    "REPORT_FIELDS",
    "Engine",
    "FileRead",
    "OffsetsConsumer",
    "check_record",
    "duckdb_type",
]

IntArray = npt.NDArray[np.int64]

#: DuckDB's buffer pool cap (`HARNESS_REPORT_MEMORY` overrides): beyond it, work spills to disk.
DEFAULT_MEMORY_LIMIT = "192MB"
#: Storage narrower than the annotation says: offsets are µs after sending, and int32 holds 35
#: minutes, far beyond any stream (a value beyond it is nanoseconds by mistake: not a record).
NARROW = {"event_offsets_us": "INTEGER[]"}
_OFFSET_LIMIT = 2**31


def duckdb_type(annotation: Any) -> tuple[str, bool]:
    """(DuckDB type, nullable) of a `Record` field annotation: str, bool, int, float, list[...],
    dict[...] (JSON), and `X | None` of these."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {annotation!r}")
        return duckdb_type(args[0])[0], True
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"{duckdb_type(item)[0]}[]", False
    if origin is dict:
        return "JSON", False
    simple = {str: "VARCHAR", bool: "BOOLEAN", int: "BIGINT", float: "DOUBLE"}
    if annotation in simple:
        return simple[annotation], False
    raise TypeError(f"unsupported record field type {annotation!r}")


def _column_types() -> dict[str, tuple[str, bool]]:
    hints = typing.get_type_hints(Record)
    out = {}
    for f in fields(Record):
        sql_type, nullable = duckdb_type(hints[f.name])
        out[f.name] = (NARROW.get(f.name, sql_type), nullable)
    return out


#: Record field -> (DuckDB type, nullable), in the dataclass's order.
COLUMN_TYPES: dict[str, tuple[str, bool]] = _column_types()
#: Required keys that may not be null: a line where one reads as NULL is not a record.
NOT_NULL = tuple(k for k in REQUIRED_KEYS if not COLUMN_TYPES[k][1])
#: The fields the report computes on (text, extra and error_detail are never read; finish_reason
#: tells short outputs, `harness.report.workload`).
REPORT_FIELDS = tuple(n for n in COLUMN_TYPES if n not in {"text", "extra", "error_detail", "stream"})


class OffsetsConsumer(typing.Protocol):
    """Something computed from the event offsets, a batch of records at a time (`Engine.stream`)."""

    def feed(self, rowids: IntArray, offsets: IntArray, values: npt.NDArray[Any]) -> None: ...


@dataclass(frozen=True)
class FileRead:
    """One records file as read."""

    path: Path
    records: int
    broken_lines: int


class Engine:
    """A DuckDB database in a temporary folder (removed on `close`), holding table `rec`.

    `rec` has `run_index` (into the runs given to `load`), `file_index`, the chosen record fields and
    `n_events` (the length of `event_offsets_us`); its `rowid` follows the files' order, line by line
    (the order "first appearance" refers to).
    """

    def __init__(
        self, *, fields: Sequence[str] = REPORT_FIELDS, memory_limit: str | None = None, table: str = "rec"
    ) -> None:
        self.fields = tuple(fields)
        self.table = table
        self._tmp = tempfile.TemporaryDirectory(prefix="harness-engine-")
        limit = memory_limit or os.environ.get("HARNESS_REPORT_MEMORY") or DEFAULT_MEMORY_LIMIT
        self.limit = limit
        try:
            self.con = duckdb.connect(
                config={
                    "memory_limit": limit,
                    "temp_directory": self._tmp.name,
                    "preserve_insertion_order": True,
                    "threads": max(1, len(os.sched_getaffinity(0))),
                }
            )
        except duckdb.Error as exc:
            self._tmp.cleanup()
            raise InputError(f"HARNESS_REPORT_MEMORY={limit!r}: not a memory size ({exc})") from exc
        columns = ", ".join(f'"{n}" {COLUMN_TYPES[n][0]}' for n in self.fields)
        # n_events: the length of event_offsets_us, taken while reading (later queries then never
        # touch the lists but to stream them).
        self.run(f"CREATE TABLE {table} (run_index INTEGER, file_index INTEGER, {columns}, n_events INTEGER)")
        self._files = 0

    def close(self) -> None:
        self.con.close()
        self._tmp.cleanup()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -------------------------------------------------------------------------------

    def load(self, path: Path, run_index: int) -> FileRead:
        """Append one records file's records; raises `InputError` for a line that is not a record."""
        file_index = self._files
        self._files += 1
        start = self._next_rowid()
        try:
            self._insert(path, run_index, file_index, strict=True)
        except duckdb.Error:
            # Not JSON somewhere (a cut line), or a value the typed read refuses: the tolerant read,
            # then each suspect line is looked at on its own.
            self._insert(path, run_index, file_index, strict=False)
        suspects = self._suspects(start)
        broken = 0
        if suspects:
            broken = self._classify(path, suspects)
            self.run(
                f"DELETE FROM {self.table} WHERE rowid IN (SELECT unnest($1::BIGINT[]))",
                [[start + k for k in suspects]],
            )
        (records,) = self.one(f"SELECT count(*) FROM {self.table} WHERE file_index = {file_index}")
        return FileRead(path, int(records), broken)

    def _next_rowid(self) -> int:
        (top,) = self.one(f"SELECT max(rowid) FROM {self.table}")
        return 0 if top is None else int(top) + 1

    def _insert(self, path: Path, run_index: int, file_index: int, *, strict: bool) -> None:
        spec = ", ".join(f"'{n}': '{t}'" for n, (t, _) in COLUMN_TYPES.items())
        names = ", ".join(f'"{n}"' for n in self.fields)
        n_events = "len(event_offsets_us)" if "event_offsets_us" in self.fields else "NULL"
        self.run(
            f"INSERT INTO {self.table} SELECT {run_index}, {file_index}, {names}, {n_events} FROM read_json($1, "
            f"format='newline_delimited', columns={{{spec}}}, ignore_errors={str(not strict).lower()})",
            [str(path)],
        )

    def _suspects(self, start: int) -> list[int]:
        """Positions (among the file's non-blank lines) of rows a record cannot be: a required value
        NULL, or a list element the typed read could not convert."""
        checks = [f'"{n}" IS NULL' for n in NOT_NULL if n in self.fields]
        checks += [
            f'list_count("{n}") <> len("{n}")' for n in self.fields if COLUMN_TYPES[n][0].endswith("[]")
        ]
        if not checks:
            return []
        rows = self.con.execute(
            f"SELECT rowid - {start} FROM {self.table} WHERE rowid >= {start} AND ({' OR '.join(checks)}) "
            "ORDER BY rowid"
        ).fetchall()
        return [int(r[0]) for r in rows]

    def _classify(self, path: Path, suspects: list[int]) -> int:
        """Count the suspects that are not JSON; raise at the first one that is JSON but not a record."""
        wanted = iter(suspects)
        target = next(wanted, None)
        broken = 0
        for line_no, position, line in _non_blank_lines(path):
            if target is None:
                break
            if position != target:
                continue
            target = next(wanted, None)
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                broken += 1
                continue
            problem = check_record(obj) or "a value of the wrong type"
            raise InputError(f"{path}:{line_no}: not a record: {problem}")
        return broken

    # --- queries -------------------------------------------------------------------------------

    def run(self, query: str, params: Sequence[Any] | None = None) -> None:
        """A statement run to its end (DuckDB wants every result consumed before the next one)."""
        with _memory_guard(self.limit):
            self.con.execute(query, params).fetchall()

    def one(self, query: str, params: Sequence[Any] | None = None) -> tuple[Any, ...]:
        with _memory_guard(self.limit):
            (row,) = self.con.execute(query, params).fetchall()
        return tuple(row)

    def rows(self, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with _memory_guard(self.limit):
            return [tuple(r) for r in self.con.execute(query, params).fetchall()]

    def offsets(self, batch_rows: int = 8_192) -> Iterator[tuple[IntArray, IntArray, IntArray]]:
        """Every record's `event_offsets_us`, a batch of rows at a time (any order within): (rowids, list
        offsets: record i owns `values[offsets[i]:offsets[i + 1]]`, values). Each batch is its own
        query over a range of rowids (storage is in rowid order, so it reads only that range):
        memory stays flat whatever the number of events."""
        top = self.max_rowid()
        for start in range(0, top + 1, batch_rows):
            with _memory_guard(self.limit):
                table = self.con.sql(
                    f"SELECT rowid, event_offsets_us FROM {self.table} WHERE rowid >= {start} "
                    f"AND rowid < {start + batch_rows}"
                ).to_arrow_table()
            if table.num_rows == 0:
                continue
            lists = table.column(1).combine_chunks()
            yield (
                table.column(0).to_numpy().astype(np.int64, copy=False),
                lists.offsets.to_numpy().astype(np.int64),
                lists.values.to_numpy(),  # int32: consumers widen only what they keep
            )

    def stream(self, consumers: Sequence[OffsetsConsumer]) -> None:
        """One streamed pass over every record's event offsets, each batch fed to every consumer."""
        if not consumers:
            return
        for batch in self.offsets():
            for consumer in consumers:
                consumer.feed(*batch)

    def max_rowid(self) -> int:
        (top,) = self.one(f"SELECT max(rowid) FROM {self.table}")
        return -1 if top is None else int(top)

    def numpy(self, query: str, params: Sequence[Any] | None = None) -> dict[str, Any]:
        """Columns of the result as numpy arrays (masked arrays where a column holds NULLs)."""
        with _memory_guard(self.limit):
            return dict(self.con.execute(query, params).fetchnumpy())


@contextlib.contextmanager
def _memory_guard(limit: str) -> Iterator[None]:
    """DuckDB out of memory -> one line saying which setting to raise (no traceback)."""
    try:
        yield
    except duckdb.OutOfMemoryException as exc:
        first = str(exc).splitlines()[0] if str(exc) else "out of memory"
        raise HarnessError(
            f"the report engine needs more memory than HARNESS_REPORT_MEMORY={limit} allows ({first}); "
            "raise it (e.g. HARNESS_REPORT_MEMORY=2GB)"
        ) from exc


def _non_blank_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, position among non-blank lines, line) of each non-blank line."""
    position = 0
    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                yield line_no, position, line
                position += 1


_PY_TYPES = {
    "VARCHAR": (str,),
    "BOOLEAN": (bool,),
    "BIGINT": (int,),
    "INTEGER": (int,),
    "DOUBLE": (int, float),
}


def check_record(obj: Any) -> str | None:
    """Why a decoded JSON value is not a record (None: it is one), in words for an error message."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for key in REQUIRED_KEYS:
        if key not in obj:
            return f"missing required key {key}"
    for key, (sql_type, _) in COLUMN_TYPES.items():
        value = obj.get(key)
        if value is None:
            if key in NOT_NULL:
                return f"{key} is null"
            continue
        if sql_type.endswith("[]"):
            item = _PY_TYPES.get(sql_type[:-2], ())
            if not isinstance(value, list) or not all(
                isinstance(v, item) and not isinstance(v, bool) for v in value
            ):
                return f"{key}: expected a list of {sql_type[:-2].lower()}s"
            if key == "event_offsets_us" and any(abs(v) >= _OFFSET_LIMIT for v in value):
                return "event_offsets_us beyond ±2^31 µs (35 min): expected µs after sending"
            continue
        allowed = _PY_TYPES.get(sql_type)
        if allowed is None:
            continue
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            return f"{key}: expected {sql_type.lower()}, got {type(value).__name__}"
    return None
