"""The report's analytical engine: DuckDB over the records of one or many runs, out of core.

Owns how records get from `records.jsonl` files (and worker spools) into one view, `rec`, of an
embedded DuckDB database, and the connection every later stage queries. Why DuckDB: it reads
newline-delimited JSON itself (in parallel, straight from the file), runs every group-by, window
and join in a buffer pool capped by `memory_limit` (spilling to a temporary folder beyond it),
ships as one wheel with no server, and hands results to numpy and pandas without copies. Measured
against the hand-written msgspec parser it replaces: see benchmarks/README.md.

The columnar copy: parsing JSON is most of what reading costs (1.3 GB per million records, most of
it token offsets), so a run folder's records are parsed once into `records.duckdb` beside them (a
DuckDB database: table `rec`, every record field, compressed; table `sources`: each records file's
name, size and mtime when read, its records and broken lines). `records.jsonl` stays the truth: a
copy whose sources differ from the files now (a spool still growing, a file replaced), or written
for another column layout (`LAYOUT`), or unreadable, is written again. Whoever reads the records
first writes it (the report at the end of `harness run`, else the first `harness report`, `compare`
or `query`); a folder that cannot be written to gets its copy in the engine's temporary folder, for
this process only. Every later read attaches the copy read-only: no JSON parsed.

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
import hashlib
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
    "COPY_NAME",
    "DEFAULT_MEMORY_LIMIT",
    "LAYOUT",
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


#: The columnar copy's file name, beside the records files of a run folder.
COPY_NAME = "records.duckdb"
#: Fingerprint of the copy's layout: a copy written for other columns (or another reading rule) is
#: written again.
LAYOUT = hashlib.sha256(repr(("copy-1", list(COLUMN_TYPES.items()))).encode()).hexdigest()[:16]
#: Rows per batch of the streamed event offsets (`Engine.offsets`).
OFFSET_BATCH_ROWS = 1 << 14


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
    """An in-memory DuckDB database (temporary files in a folder removed on `close`) with view `rec`
    over the columnar copies of the runs loaded (`load_run`).

    `rec` has `run_index` (into the runs loaded), `file_index` (within its run), `row_id` (0.. over
    every record loaded, in the files' order, line by line: the order "first appearance" refers
    to), the chosen record fields and `n_events` (the length of `event_offsets_us`).
    """

    def __init__(
        self, *, fields: Sequence[str] = REPORT_FIELDS, memory_limit: str | None = None, table: str = "rec"
    ) -> None:
        self.fields = tuple(fields)
        self.table = table
        self._tmp = tempfile.TemporaryDirectory(prefix="harness-engine-")
        limit = memory_limit or os.environ.get("HARNESS_REPORT_MEMORY") or DEFAULT_MEMORY_LIMIT
        self.limit = limit
        self.config: dict[str, Any] = {
            "memory_limit": limit,
            "temp_directory": self._tmp.name,
            "preserve_insertion_order": True,
            "threads": max(1, len(os.sched_getaffinity(0))),
        }
        try:
            self.con = duckdb.connect(config=self.config)
        except duckdb.Error as exc:
            self._tmp.cleanup()
            raise InputError(f"HARNESS_REPORT_MEMORY={limit!r}: not a memory size ({exc})") from exc
        self._parts: list[str] = []
        self._rows = 0
        self._define_view()

    def close(self) -> None:
        self.con.close()
        self._tmp.cleanup()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -------------------------------------------------------------------------------

    def load_run(self, run_index: int, paths: Sequence[Path], copy: Path) -> list[FileRead]:
        """Add one run's records files to `rec`, through their columnar copy `copy` (written first
        when missing or stale); raises `InputError` for a line that is not a record."""
        alias = f"run{run_index}"
        sources = [_source(p, copy.parent) for p in paths]
        reads = self._attach(copy, alias, paths, sources)
        if reads is None:
            target = copy
            try:
                write_copy(paths, sources, target, self.config, self.limit)
            except _NotWritable:
                # A read-only run folder: a copy for this process only.
                target = Path(self._tmp.name) / f"{alias}.duckdb"
                write_copy(paths, sources, target, self.config, self.limit)
            reads = self._attach(target, alias, paths, None)
            if reads is None:
                raise HarnessError(f"{target}: the columnar copy just written cannot be read")
        names = ", ".join(f'"{n}"' for n in self.fields)
        self._parts.append(
            f"SELECT {int(run_index)}::INTEGER AS run_index, file_index, rowid + {self._rows} AS row_id, "
            f"{names}, n_events FROM {alias}.rec"
        )
        self._rows += sum(r.records for r in reads)
        self._define_view()
        return reads

    def _attach(
        self, path: Path, alias: str, paths: Sequence[Path], sources: list[tuple[str, int, int]] | None
    ) -> list[FileRead] | None:
        """Attach a copy read-only; None (detached again) when it is missing, unreadable, of another
        layout, or its sources differ from `sources` (None: not checked)."""
        if not path.is_file():
            return None
        try:
            self.con.execute(f"ATTACH {_sql_text(str(path))} AS {alias} (READ_ONLY)")
        except duckdb.Error:
            return None
        try:
            (layout,) = self.con.execute(f"SELECT fingerprint FROM {alias}.layout").fetchone() or ("",)
            found = self.con.execute(
                f"SELECT name, size, mtime_ns, records, broken_lines FROM {alias}.sources ORDER BY file_index"
            ).fetchall()
            (count, top) = self.con.execute(f"SELECT count(*), max(rowid) FROM {alias}.rec").fetchone() or (
                0,
                0,
            )
        except duckdb.Error:
            found, layout, count, top = [], "", 0, None
        fresh = (
            layout == LAYOUT
            and len(found) == len(paths)
            and (sources is None or [tuple(f[:3]) for f in found] == sources)
            and count == sum(int(f[3]) for f in found)
            and (top is None if count == 0 else top == count - 1)
        )
        if not fresh:
            self.con.execute(f"DETACH {alias}")
            return None
        return [FileRead(p, int(f[3]), int(f[4])) for p, f in zip(paths, found, strict=True)]

    def _define_view(self) -> None:
        body = " UNION ALL ".join(self._parts) or (
            "SELECT NULL::INTEGER AS run_index, NULL::INTEGER AS file_index, NULL::BIGINT AS row_id, "
            + ", ".join(f'NULL::{COLUMN_TYPES[n][0]} AS "{n}"' for n in self.fields)
            + ", NULL::INTEGER AS n_events WHERE false"
        )
        self.run(f"CREATE OR REPLACE VIEW {self.table} AS {body}")

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

    def offsets(self, batch_rows: int = OFFSET_BATCH_ROWS) -> Iterator[tuple[IntArray, IntArray, IntArray]]:
        """Every record's `event_offsets_us`, a batch of rows at a time (any order): (row ids, list
        offsets: record i owns `values[offsets[i]:offsets[i + 1]]`, values). One streamed query:
        memory stays flat whatever the number of events."""
        with _memory_guard(self.limit):
            reader = self.con.sql(f"SELECT row_id, event_offsets_us FROM {self.table}").to_arrow_reader(
                batch_rows
            )
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                lists = batch.column(1)
                yield (
                    batch.column(0).to_numpy().astype(np.int64, copy=False),
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
        return self._rows - 1

    def numpy(self, query: str, params: Sequence[Any] | None = None) -> dict[str, Any]:
        """Columns of the result as numpy arrays (masked arrays where a column holds NULLs)."""
        with _memory_guard(self.limit):
            return dict(self.con.execute(query, params).fetchnumpy())


class _NotWritable(Exception):
    """The copy cannot be created where it belongs."""


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _source(path: Path, folder: Path) -> tuple[str, int, int]:
    """(name relative to the copy's folder, size, mtime in ns) of a records file, as the copy keeps it."""
    st = path.stat()
    try:
        name = str(path.relative_to(folder))
    except ValueError:
        name = str(path)
    return name, int(st.st_size), int(st.st_mtime_ns)


def write_copy(
    paths: Sequence[Path],
    sources: list[tuple[str, int, int]],
    target: Path,
    config: dict[str, Any],
    limit: str,
) -> list[FileRead]:
    """Parse records files into a new columnar copy at `target` (written under a temporary name,
    then renamed: a reader never sees half a copy). Raises `InputError` for a line that is not a
    record, `_NotWritable` when the copy cannot be created there."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    leftovers = (tmp, tmp.with_name(tmp.name + ".wal"))
    for f in leftovers:
        f.unlink(missing_ok=True)
    try:
        con = duckdb.connect(str(tmp), config=config)
    except (duckdb.IOException, OSError) as exc:
        raise _NotWritable(str(exc)) from exc
    try:
        columns = ", ".join(f'"{n}" {t}' for n, (t, _) in COLUMN_TYPES.items())
        with _memory_guard(limit):
            con.execute(f"CREATE TABLE rec (file_index INTEGER, {columns}, n_events INTEGER)")
            reads = [_copy_file(con, path, i) for i, path in enumerate(paths)]
            con.execute(
                "CREATE TABLE sources (file_index INTEGER, name VARCHAR, size BIGINT, mtime_ns BIGINT, "
                "records BIGINT, broken_lines BIGINT)"
            )
            rows = [
                (i, *src, r.records, r.broken_lines)
                for i, (src, r) in enumerate(zip(sources, reads, strict=True))
            ]
            if rows:
                con.executemany("INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?)", rows)
            con.execute("CREATE TABLE layout AS SELECT $1::VARCHAR AS fingerprint", [LAYOUT])
        con.close()
        os.replace(tmp, target)
    except BaseException:
        con.close()
        for f in leftovers:
            f.unlink(missing_ok=True)
        raise
    return reads


def _copy_file(con: duckdb.DuckDBPyConnection, path: Path, file_index: int) -> FileRead:
    """Append one records file to the copy's table `rec`: read strictly (the fast path); a file
    the strict read refuses, or with a suspect row, is read again tolerantly and each suspect line
    looked at on its own."""
    (start,) = con.execute("SELECT count(*) FROM rec").fetchone() or (0,)
    names = ", ".join(f'"{n}"' for n in COLUMN_TYPES)
    con.begin()
    try:
        con.execute(
            f"INSERT INTO rec SELECT {file_index}, {names}, len(event_offsets_us) FROM {_read(path, strict=True)}"
        )
        clean = not _suspects(con, "rec", f"rowid >= {start}", start)
    except duckdb.OutOfMemoryException:
        con.rollback()
        raise
    except duckdb.Error:
        clean = False
    if clean:
        con.commit()
        return FileRead(path, _count(con, file_index), 0)
    con.rollback()
    # Not JSON somewhere (a cut line), or a value the typed read refuses: each suspect line looked at.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE stage AS SELECT {file_index} AS file_index, {names}, "
        f"len(event_offsets_us) AS n_events FROM {_read(path, strict=False)}"
    )
    suspects = _suspects(con, "stage", "true", 0)
    broken = _classify(path, suspects)
    con.execute(
        "INSERT INTO rec SELECT * FROM stage WHERE rowid NOT IN (SELECT unnest($1::BIGINT[])) ORDER BY rowid",
        [suspects],
    )
    con.execute("DROP TABLE stage")
    return FileRead(path, _count(con, file_index), broken)


def _read(path: Path, *, strict: bool) -> str:
    spec = ", ".join(f"'{n}': '{t}'" for n, (t, _) in COLUMN_TYPES.items())
    return (
        f"read_json({_sql_text(str(path))}, format='newline_delimited', columns={{{spec}}}, "
        f"ignore_errors={str(not strict).lower()})"
    )


def _count(con: duckdb.DuckDBPyConnection, file_index: int) -> int:
    (n,) = con.execute(f"SELECT count(*) FROM rec WHERE file_index = {file_index}").fetchone() or (0,)
    return int(n)


def _suspects(con: duckdb.DuckDBPyConnection, table: str, where: str, start: int) -> list[int]:
    """Positions (among the file's non-blank lines) of rows a record cannot be: a required value
    NULL, or a list element the typed read could not convert."""
    checks = [f'"{n}" IS NULL' for n in NOT_NULL]
    checks += [f'list_count("{n}") <> len("{n}")' for n, (t, _) in COLUMN_TYPES.items() if t.endswith("[]")]
    rows = con.execute(
        f"SELECT rowid - {start} FROM {table} WHERE {where} AND ({' OR '.join(checks)}) ORDER BY rowid"
    ).fetchall()
    return [int(r[0]) for r in rows]


def _classify(path: Path, suspects: list[int]) -> int:
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
