"""Re-assemble a run folder's `records.jsonl` from what every process wrote.

Each worker appends its records to its own spool (`spool/*.records.jsonl`) as it goes; the master
appends what workers report. After a crash either side may hold records the other lacks: a worker
killed before its last report, a master killed before it wrote what it received. The union of
both, one record per (worker, seq), is every record that reached a disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from harness.records import read_records

__all__ = ["Recovery", "recover_run", "spool_files"]


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
    return sorted((run_dir / "spool").glob("*.records.jsonl"))


def _key(r: dict[str, Any]) -> tuple[str, int]:
    return (str(r.get("worker")), int(r.get("seq", -1)))


def recover_run(run_dir: Path) -> Recovery:
    """Merge the spools into records.jsonl (atomically: a crash mid-way leaves the old file)."""
    main_path = run_dir / "records.jsonl"
    main, broken = read_records(main_path) if main_path.exists() else ([], 0)
    spools = spool_files(run_dir)
    extra, broken_spool = read_records(spools) if spools else ([], 0)
    seen = {_key(r) for r in main}
    added = []
    for r in extra:
        k = _key(r)
        if k not in seen:
            seen.add(k)
            added.append(r)
    if added or broken:
        merged = sorted(main + added, key=lambda r: (r.get("sent_unix_ns", 0), _key(r)))
        tmp = main_path.with_suffix(".jsonl.tmp")
        with open(tmp, "wb") as fh:
            for r in merged:
                fh.write(orjson.dumps(r) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(main_path)
    return Recovery(
        before=len(main),
        after=len(main) + len(added),
        added=len(added),
        broken_lines=broken + broken_spool,
        spools=len(spools),
    )
