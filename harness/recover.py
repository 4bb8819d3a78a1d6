"""Reading a run folder's records lightly, and re-assembling `records.jsonl` from worker spools.

Each worker appends its records to its own spool (`spool/*.records.jsonl`) as it goes; the master
appends what workers report. After a crash either side may hold records the other lacks: a worker
killed before its last report, a master killed before it wrote what it received. The union of
both, one record per (worker, seq), is every record that reached a disk.

Both passes stream: only a handful of fields of each line are decoded (msgspec skips the token
offsets), so memory stays flat whatever the number of records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from harness.rundir import RunDir

__all__ = ["Recovery", "Scan", "recover_run", "scan_records", "spool_files"]


class _Extra(msgspec.Struct, gc=False):
    """A retried attempt's link to the attempt before (`users.py` tags it); other keys skipped."""

    # Any: a value of another type must not make the whole line unreadable (a "broken" line).
    retry_of: Any = None
    attempt: Any = 0


class _Head(msgspec.Struct, gc=False):
    """The fields the orchestrator checks; everything else in a line is skipped unparsed."""

    worker: str
    host: str
    sent_unix_ns: int
    warmup: bool
    error: str | None = None
    seq: int = -1
    extra: _Extra | None = None


_DECODE = msgspec.json.Decoder(_Head)


def _heads(path: Path) -> Iterator[tuple[bytes, _Head | None]]:
    """(raw line, its head or None for a line that does not parse) for each non-empty line."""
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                yield line, _DECODE.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                yield line, None


@dataclass
class Scan:
    measured: int = 0
    first_attempts: int = 0
    """Measured records that are not a retry of an earlier attempt: one per request taken from
    the workload pool, what an exact request limit counts."""
    warmup: int = 0
    broken: int = 0
    workers: Counter[str] = field(default_factory=Counter)
    """Measured records per worker."""
    by_host: dict[str, list[tuple[int, str | None]]] = field(default_factory=dict)
    """Per host, (sent_unix_ns, error) of each measured record."""


def scan_records(path: Path) -> Scan:
    scan = Scan()
    if not path.exists():
        return scan
    for _, head in _heads(path):
        if head is None:
            scan.broken += 1
        elif head.warmup:
            scan.warmup += 1
        else:
            scan.measured += 1
            if head.extra is None or (head.extra.retry_of is None and not head.extra.attempt):
                scan.first_attempts += 1
            scan.workers[head.worker] += 1
            scan.by_host.setdefault(head.host, []).append((head.sent_unix_ns, head.error))
    return scan


@dataclass
class Recovery:
    before: int
    """Records in records.jsonl before."""
    after: int
    added: int
    """Records only the spools held."""
    broken_lines: int
    spools: int


def spool_files(run_dir: Path) -> list[Path]:
    return RunDir(run_dir).record_spools()


def recover_run(run_dir: Path) -> Recovery:
    """Append to records.jsonl every spooled record it lacks (by worker and seq)."""
    main_path = RunDir(run_dir).records
    seen: set[tuple[str, int]] = set()
    broken = 0
    ends_cleanly = True
    if main_path.exists():
        for line, head in _heads(main_path):
            if head is None:
                broken += 1
            else:
                seen.add((head.worker, head.seq))
            ends_cleanly = line.endswith(b"\n")
    before = len(seen)
    spools = spool_files(run_dir)
    added = 0
    with open(main_path, "ab") as out:
        if not ends_cleanly:
            out.write(b"\n")  # a line cut by a crash stays a broken line of its own
        for spool in spools:
            for line, head in _heads(spool):
                if head is None:
                    broken += 1
                    continue
                key = (head.worker, head.seq)
                if key in seen:
                    continue
                seen.add(key)
                out.write(line if line.endswith(b"\n") else line + b"\n")
                added += 1
    return Recovery(before=before, after=before + added, added=added, broken_lines=broken, spools=len(spools))
