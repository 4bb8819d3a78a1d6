"""`harness query RUN_DIR... "SQL"`: ad-hoc SQL over the records of one or many runs.

The records of every folder given (its `records.jsonl`, or its worker spools) are read by the
report's engine (`harness.report.engine`, DuckDB) into a view named `records`: every field of a
record (CONTRACT.md), plus `run_index` (the folder's position on the command line). Prints the
result as a table, or writes it as CSV (`--csv FILE`). SQL the engine refuses is bad input: one
line naming the problem, exit 2.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]

MAX_ROWS = 200


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "query",
        help="ad-hoc SQL over the records of run folders (a view named `records`)",
        description="Run one SQL query over the records of one or more run folders, as a view named "
        "`records` holding every record field and `run_index` (0 for the first folder given). Example: "
        'harness query results/run-1 "SELECT host, count(*), quantile_cont(ttft_ms, 0.99) FROM records '
        'WHERE ok GROUP BY host"',
    )
    p.add_argument("args", nargs="+", metavar="RUN_DIR... SQL", help="run folder(s), then the query")
    p.add_argument("--csv", type=Path, metavar="FILE", help="write the result to this CSV file instead")
    p.add_argument(
        "--max-rows", type=int, default=MAX_ROWS, help=f"rows printed at most (default {MAX_ROWS})"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import duckdb

    from harness.errors import InputError
    from harness.report.engine import COLUMN_TYPES, COPY_NAME, Engine
    from harness.report.load import records_files
    from harness.report.tables import fixed_width

    if len(args.args) < 2:
        raise InputError('query: expected RUN_DIR... "SQL" (at least one run folder, then the query)')
    *dirs, sql = args.args
    run_dirs = [Path(d) for d in dirs]
    files = [records_files(d) for d in run_dirs]
    with Engine(fields=tuple(COLUMN_TYPES)) as engine:
        for i, (run_dir, paths) in enumerate(zip(run_dirs, files, strict=True)):
            for read in engine.load_run(i, paths, run_dir / COPY_NAME):
                if read.broken_lines:
                    print(
                        f"harness: warning: {read.path}: skipped {read.broken_lines} broken line(s) (not JSON: cut mid-write?)",
                        file=sys.stderr,
                    )
        engine.run(
            f"CREATE VIEW records AS SELECT * EXCLUDE (file_index, row_id, n_events) FROM {engine.table}"
        )
        try:
            result = engine.con.execute(sql)
            names = [d[0] for d in result.description or []]
            if args.csv is not None:
                count = _write_csv(result, names, args.csv)
                print(f"wrote {count} row(s) to {args.csv}")
                return 0
            rows = result.fetchmany(args.max_rows + 1)
            more = len(rows) > args.max_rows
            shown = [[_cell(v) for v in row] for row in rows[: args.max_rows]]
            rest = len(result.fetchall()) if more else 0
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"query: {first}") from exc
    if names:
        print(fixed_width(names, shown, left=len(names)))
    if more:
        print(f"... {rest + 1} more row(s); --csv FILE writes them all")
    return 0


def _write_csv(result: Any, names: list[str], path: Path) -> int:
    try:
        fh = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        from harness.errors import InputError

        raise InputError(f"--csv {path}: cannot write this file ({exc.strerror or exc})") from exc
    count = 0
    with fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        while batch := result.fetchmany(10_000):
            writer.writerows(batch)
            count += len(batch)
    return count


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
