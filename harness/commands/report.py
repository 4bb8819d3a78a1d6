"""`harness report RUN_DIR...`: merge run folders into tables and reports (`harness.report.build`).

Prints the compact table, then, as its last line, the folder the files went to.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import thresholds
from harness.errors import CheckFailed, InputError

__all__ = ["add_parser", "split_list"]

BY_KEYS = (
    "run, host, model, stage, prompt_id, worker, connection, turn, session_id (or any label or integer field "
    "of a record)"
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="merge run folders into tables and reports (md, csv, html, json)",
        description="Merge one or more run folders into tables and reports. Percentiles are computed once "
        "over the merged raw records; warm-up records and each stage's first and last seconds are excluded.",
    )
    p.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folder(s) holding records.jsonl"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="folder to write into (default: the run folder when one is given, else results/report-<UTC time>)",
    )
    p.add_argument(
        "--format",
        default="md,csv,html,json",
        help="comma-separated formats: md, csv, html, json (default: all)",
    )
    p.add_argument("--by", help=f"comma-separated group keys from {BY_KEYS} (default: run,host,model,stage)")
    p.add_argument(
        "--trim-s",
        type=float,
        help="seconds dropped at each end of every stage, by send time (default: automatic, 0 for stages under "
        "3 s, else min(5 s, 10%% of the stage); 0: keep everything)",
    )
    p.add_argument(
        "--recover",
        action="store_true",
        help="first re-assemble each run's records.jsonl from its worker spools (after a master crash)",
    )
    p.add_argument(
        "--threshold",
        action="append",
        metavar="EXPR",
        help="METRIC OP NUMBER, e.g. ttft_p95_ms<500 (repeatable), judged per group as `harness run "
        "--threshold` does; results in summary.json and report.md; a failed one exits 1",
    )
    p.set_defaults(func=run)


def split_list(value: str | None) -> list[str] | None:
    """`a,b` -> ["a", "b"]; None stays None (the default)."""
    return None if value is None else [v.strip() for v in value.split(",")]


def run(args: argparse.Namespace) -> int:
    from harness.report import build
    from harness.report.writers import capacity

    if len(args.run_dirs) == 1 and capacity.is_capacity_dir(args.run_dirs[0]):
        # A capacity run folder (`harness capacity`): its own report, from capacity.json.
        files = capacity.write(args.run_dirs[0], args.out)
        print("\n".join(capacity.answer_lines(read_capacity(args.run_dirs[0] / capacity.CAPACITY_FILE))))
        print(f"wrote {', '.join(p.name for p in files)}")
        print(args.out or args.run_dirs[0])
        return 0
    if args.recover:
        from harness.recover import recover_run, spool_files

        for run_dir in args.run_dirs:
            if not spool_files(run_dir):
                raise InputError(f"{run_dir}: --recover found no worker spools (spool/*.records.jsonl)")
            r = recover_run(run_dir)
            print(
                f"harness: {run_dir}: {r.added} record(s) recovered from {r.spools} spool(s); "
                f"records.jsonl now holds {r.after}",
                file=sys.stderr,
            )
    out = args.out
    if out is None:
        out = args.run_dirs[0] if len(args.run_dirs) == 1 else default_out_dir("report")
    checks = []
    if args.threshold:
        try:
            checks = thresholds.parse_all(
                [("--threshold", e) for e in args.threshold], thresholds.known_metrics()
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
    report = build(
        args.run_dirs,
        out,
        formats=split_list(args.format) or [],
        by=split_list(args.by),
        trim_s=args.trim_s,
        thresholds=checks,
    )
    for warning in report.warnings:
        print(f"harness: warning: {warning}", file=sys.stderr)
    print(report.console_table())
    results = [thresholds.Result(**r) for r in report.summary.get("thresholds", [])]
    if results:
        print("thresholds:\n" + "\n".join(f"  {r.line()}" for r in results))
    print(f"wrote {', '.join(p.name for p in report.files)}")
    print(out)
    if failed := thresholds.failure_lines(results):
        for line in failed:
            print(f"harness: {line}", file=sys.stderr)
        return CheckFailed.exit_code
    return 0


def read_capacity(path: Path) -> dict[str, Any]:
    """A capacity search's `capacity.json` (a bad one: one line naming the file, exit 2)."""
    from harness.rundir import read_json

    return read_json(path, "a capacity search")


def default_out_dir(kind: str) -> Path:
    """`results/<kind>-<UTC time>` for outputs that merge several runs."""
    return Path("results") / f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
