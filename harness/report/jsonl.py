"""`records.jsonl` -> Arrow table of the columns the report uses: fast, and tolerant of a cut line.

A line that is not JSON (a file cut mid-line by a crash) is skipped and counted; a line that is JSON
but not a record (a required key missing, a wrong type) is bad input and raises `InputError` naming
the file and line. Keys the report does not use are skipped while decoding.

Speed (a 1.3 GB file of 1,000,000 records in seconds): lines are decoded by msgspec into typed
structs 4 MiB at a time, so that temporaries stay small and reused; string fields and
`event_offsets_us` stay raw JSON text and are turned into Arrow columns for a whole chunk at once
(numpy, Arrow compute), with an exact line-by-line path for any chunk the fast path cannot vouch for.
Large files are split into byte ranges: this process parses one, child processes (`python -m
harness.report.jsonl`, which import only this module's light dependencies and hand back Arrow IPC
files) the others.
"""

from __future__ import annotations

import gc
import itertools
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from harness.errors import HarnessError, InputError

__all__ = ["SCHEMA", "read_jsonl"]

#: (name, nullable): strings kept as raw JSON while decoding.
STRING_FIELDS = (
    ("run_id", False),
    ("worker", False),
    ("host", False),
    ("model", False),
    ("stage", False),
    ("prompt_id", False),
    ("error", True),
    ("tokens_source", False),
    ("connection", True),
)
BOOL_FIELDS = ("warmup", "ok")
INT_FIELDS = ("sched_unix_ns", "sent_unix_ns", "users")
#: Nullable numbers, token counts included (NaN is their missing value once in numpy).
FLOAT_FIELDS = (
    "dispatch_delay_ms",
    "ttfb_ms",
    "ttft_ms",
    "e2e_ms",
    "tpot_ms",
    "input_tokens",
    "output_tokens",
    "content_reads",
    "content_events",
)
#: Nullable booleans beyond the contract's keys (stream diagnostics: fresh against reused connections).
OPTIONAL_BOOL_FIELDS = ("conn_reused",)
#: Keys beyond the contract's required ones: absent -> null.
OPTIONAL_FIELDS = ("connection", "content_reads", "content_events", *OPTIONAL_BOOL_FIELDS)
SCHEMA = pa.schema(
    [(n, pa.string()) for n, _ in STRING_FIELDS]
    + [(n, pa.bool_()) for n in BOOL_FIELDS]
    + [(n, pa.int64()) for n in INT_FIELDS]
    + [(n, pa.float64()) for n in FLOAT_FIELDS]
    + [(n, pa.bool_()) for n in OPTIONAL_BOOL_FIELDS]
    + [("event_offsets_us", pa.large_list(pa.int32()))]
)
#: Offsets are µs after sending: int32 holds 35 minutes, far beyond any stream (and catches ns by mistake).
OFFSET_RANGE = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)

_CHUNK_BYTES = 4 << 20
_PARALLEL_MIN_BYTES = 64 << 20
_MAX_PROCESSES = 8
_TO_SPACES = bytes.maketrans(b"[],", b"   ")
_JSON_WHITESPACE = (b" ", b"\t", b"\r")


def _record_type(*, exact: bool) -> Any:
    """The decoding struct: raw strings and offsets (fast path) or fully typed (validating path)."""
    types: dict[str, Any] = {
        n: (str | None if nullable else str) if exact else msgspec.Raw for n, nullable in STRING_FIELDS
    }
    types |= {n: bool for n in BOOL_FIELDS}
    types |= {n: int for n in INT_FIELDS}
    types |= {n: float | None for n in FLOAT_FIELDS}
    types |= {"dispatch_delay_ms": float, "input_tokens": int | None, "output_tokens": int | None}
    types |= {"content_reads": int | None, "content_events": int | None}
    types |= {n: bool | None for n in OPTIONAL_BOOL_FIELDS}
    types["event_offsets_us"] = list[int] if exact else msgspec.Raw
    missing = {
        n: None if exact or types[n] is not msgspec.Raw else msgspec.Raw(b"null") for n in OPTIONAL_FIELDS
    }
    fields: list[Any] = [(n, t) for n, t in types.items() if n not in OPTIONAL_FIELDS]
    fields += [(n, types[n], missing[n]) for n in OPTIONAL_FIELDS]
    return msgspec.defstruct("Record", fields, gc=False)


_FAST = msgspec.json.Decoder(_record_type(exact=False))
_EXACT = msgspec.json.Decoder(_record_type(exact=True))


class _SlowPath(Exception):
    """The chunk's fast path cannot vouch for it; decode it line by line."""


class _BadLine(Exception):
    """A line that is JSON but not a record, at `offset` bytes into its chunk."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


@dataclass
class _Part:
    """What parsing one byte range gives back."""

    table: pa.Table
    broken: int
    bad: tuple[int, str] | None = None
    """(byte offset in the file, message) of the first line that is JSON but not a record."""


def read_jsonl(path: Path, *, processes: int | None = None) -> tuple[pa.Table, int]:
    """Read a records file into a table with `SCHEMA`; returns (table, broken_lines).

    `processes` caps the parallel parsers (default: the CPUs this process may use, at most 8); files
    under 64 MiB are parsed in this process.
    """
    size = path.stat().st_size
    n = processes or min(_MAX_PROCESSES, len(os.sched_getaffinity(0)))
    ranges = _ranges(path, size, n if size >= _PARALLEL_MIN_BYTES else 1)
    parts = [_parse_range(path, *ranges[0])] if len(ranges) == 1 else _parse_in_processes(path, ranges)
    for part in parts:
        if part.bad is not None:
            offset, message = part.bad
            raise InputError(f"{path}:{_line_number(path, offset)}: not a record: {message}")
    return pa.concat_tables([p.table for p in parts]), sum(p.broken for p in parts)


def _ranges(path: Path, size: int, n: int) -> list[tuple[int, int]]:
    """Split [0, size) into at most n byte ranges that start at line starts."""
    cuts = [0]
    with open(path, "rb") as fh:
        for i in range(1, n):
            fh.seek(max(size * i // n, cuts[-1]))
            fh.readline()
            cuts.append(min(fh.tell(), size))
    cuts.append(size)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a] or [(0, 0)]


def _line_number(path: Path, offset: int) -> int:
    with open(path, "rb") as fh:
        return fh.read(offset).count(b"\n") + 1


def _parse_in_processes(path: Path, ranges: list[tuple[int, int]]) -> list[_Part]:
    """Parse the first range here and each other one in a child `python -m harness.report.jsonl`
    that writes an Arrow IPC file.

    Plain child processes rather than multiprocessing: they never re-import the caller's main
    module, so `build()` is safe to call from any script or notebook.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="harness-report-") as tmp:
        outs = [Path(tmp) / f"part{i}.arrow" for i in range(1, len(ranges))]
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "harness.report.jsonl", str(path), str(a), str(b), str(out)],
                env={**os.environ, "PYTHONPATH": pythonpath},
                stderr=subprocess.PIPE,
            )
            for (a, b), out in zip(ranges[1:], outs, strict=True)
        ]
        first = _parse_range(path, *ranges[0])
        errors = [child.communicate()[1].decode(errors="replace").strip() for child in children]
        for child, err in zip(children, errors, strict=True):
            if child.returncode != 0:
                raise HarnessError(
                    f"parsing {path} in a child process failed ({child.returncode}): {err[-500:]}"
                )
        return [first, *(_read_part(out) for out in outs)]


def _write_part(part: _Part, out: Path) -> None:
    meta = {"broken": str(part.broken)}
    if part.bad is not None:
        meta |= {"bad_offset": str(part.bad[0]), "bad_message": part.bad[1]}
    with pa.ipc.new_file(out, SCHEMA.with_metadata(meta)) as writer:
        writer.write_table(part.table)


def _read_part(out: Path) -> _Part:
    table = pa.ipc.open_file(pa.memory_map(str(out))).read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    bad = (int(meta["bad_offset"]), meta["bad_message"]) if "bad_offset" in meta else None
    return _Part(table.replace_schema_metadata(None), int(meta["broken"]), bad)


def _parse_range(path: Path, start: int, end: int) -> _Part:
    # Millions of short-lived objects: the cyclic collector would scan them over and over for nothing.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse_range_nogc(path, start, end)
    finally:
        if gc_was_enabled:
            gc.enable()


def _parse_range_nogc(path: Path, start: int, end: int) -> _Part:
    batches: list[pa.RecordBatch] = []
    broken = 0
    with open(path, "rb") as fh:
        fh.seek(start)
        rest = b""
        pos = start
        while pos < end:
            chunk_start = pos - len(rest)
            data = rest + fh.read(min(_CHUNK_BYTES, end - pos))
            pos = min(end, pos + _CHUNK_BYTES)
            cut = data.rfind(b"\n") + 1 if pos < end else len(data)
            chunk, rest = data[:cut], data[cut:]
            try:
                batches.append(_fast_batch(chunk))
            except (msgspec.DecodeError, _SlowPath):
                try:
                    batch, chunk_broken = _exact_batch(chunk)
                except _BadLine as bad:
                    return _Part(SCHEMA.empty_table(), broken, (chunk_start + bad.offset, bad.message))
                batches.append(batch)
                broken += chunk_broken
    return _Part(pa.Table.from_batches(batches, SCHEMA), broken)


# --- fast path: whole chunk at once --------------------------------------------------------------


def _fast_batch(chunk: bytes) -> pa.RecordBatch:
    records = _FAST.decode_lines(chunk)
    columns = [_raw_strings(_values(records, n), nullable) for n, nullable in STRING_FIELDS]
    columns += _typed_columns(records)
    columns.append(_raw_offsets(_values(records, "event_offsets_us")))
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _values(records: list[Any], name: str) -> list[Any]:
    return list(map(attrgetter(name), records))


def _raw_strings(raws: list[Any], nullable: bool) -> pa.Array:
    """Raw JSON strings (or null) -> an Arrow string array, without making a Python str each."""
    data = b"".join(raws)
    if b"\\" in data:
        raise _SlowPath  # escapes: let msgspec decode them
    offsets = np.zeros(len(raws) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, raws), np.int64, len(raws)), out=offsets[1:])
    first = np.frombuffer(data, np.uint8)[offsets[:-1]]
    is_null = first == ord("n")
    if not np.all((first == ord('"')) | (is_null if nullable else False)):
        raise _SlowPath  # a value that is not a string
    quoted = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(raws), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    strings = pc.binary_slice(quoted, 1, -1).cast(pa.string())
    if nullable and is_null.any():
        strings = pc.if_else(pa.array(is_null), pa.scalar(None, pa.string()), strings)
    return strings


def _raw_offsets(raws: list[Any]) -> pa.Array:
    """Raw `event_offsets_us` arrays of a whole chunk -> one Arrow list column, parsed by numpy."""
    if not raws:
        return pa.array([], pa.large_list(pa.int32()))
    joined = b"".join(raws)
    if any(ws in joined for ws in _JSON_WHITESPACE):
        raise _SlowPath
    u = np.frombuffer(joined, np.uint8)
    opens = np.flatnonzero(u == ord("["))
    if opens.size != len(raws) or opens[0] != 0:
        raise _SlowPath  # not one flat array per record
    commas = np.add.reduceat(u == ord(","), opens, dtype=np.int64)
    lengths = np.where(u[opens + 1] == ord("]"), 0, commas + 1)
    if not lengths.any():
        return _list_array(np.zeros(0, np.int64), lengths)
    try:
        values = np.fromstring(joined.translate(_TO_SPACES), dtype=np.int64, sep=" ")
    except ValueError as exc:  # not integers
        raise _SlowPath from exc
    if values.size != lengths.sum() or not _in_range(values):
        raise _SlowPath
    return _list_array(values, lengths)


def _typed_columns(records: list[Any]) -> list[pa.Array]:
    columns = [pa.array(np.array(_values(records, n), dtype=bool)) for n in BOOL_FIELDS]
    columns += [pa.array(np.array(_values(records, n), dtype=np.int64)) for n in INT_FIELDS]
    columns += [pa.array(_values(records, n), pa.float64()) for n in FLOAT_FIELDS]
    columns += [pa.array(_values(records, n), pa.bool_()) for n in OPTIONAL_BOOL_FIELDS]
    return columns


def _in_range(values: npt.NDArray[np.int64]) -> bool:
    return values.size == 0 or (OFFSET_RANGE[0] <= values.min() and values.max() <= OFFSET_RANGE[1])


def _list_array(values: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int32)))


# --- exact path: line by line -------------------------------------------------------------------


def _exact_batch(chunk: bytes) -> tuple[pa.RecordBatch, int]:
    """Decode line by line: (batch, broken lines); raises `_BadLine` at a line that is not a record."""
    records: list[Any] = []
    broken = 0
    offset = 0
    for line in chunk.split(b"\n"):
        if line.strip():
            try:
                record = _EXACT.decode(line)
            except msgspec.ValidationError as exc:
                raise _BadLine(offset, str(exc)) from exc
            except msgspec.DecodeError:
                broken += 1
            else:
                if not _in_range(np.array(record.event_offsets_us, dtype=np.int64)):
                    raise _BadLine(
                        offset, "event_offsets_us beyond ±2^31 µs (35 min): expected µs after sending"
                    )
                records.append(record)
        offset += len(line) + 1
    columns = [pa.array(_values(records, n), pa.string()) for n, _ in STRING_FIELDS]
    columns += _typed_columns(records)
    lists = _values(records, "event_offsets_us")
    lengths = np.fromiter(map(len, lists), np.int64, len(lists))
    values = np.fromiter((v for lst in lists for v in lst), np.int64, int(lengths.sum()))
    columns.append(_list_array(values, lengths))
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA), broken


def _main(argv: list[str]) -> int:
    path, start, end, out = argv
    _write_part(_parse_range(Path(path), int(start), int(end)), Path(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
