"""Old against new `harness report`: the same run folders, both summary.json files compared key by key.

    python benchmarks/report_identity.py --old OLD_CHECKOUT [RUN_DIR ...] [--from-tests DIR]

`OLD_CHECKOUT` is a checkout of the implementation before the engine (e.g. `git worktree add
/tmp/old 559170d`). `--from-tests DIR` first runs that checkout's report tests with `--basetemp DIR`
(hand-built folders and real runs against the simulated host) and adds every run folder they left.
Each folder is reported by both implementations (`--format json`, default options, into separate
folders), and the two summaries compared: every value must be identical; floats that differ are
listed with their relative difference, and keys one side lacks are listed. Volatile keys
(`generated_utc`, `harness_version`, `runs[].from_cache`) are left out. Exit 1 when anything differs
beyond `--rel` (default 0: bit for bit).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
VOLATILE = {"generated_utc", "harness_version", "from_cache"}
TESTS = ("tests/test_report.py", "tests/test_wire_report.py", "tests/test_compare.py")


def report(checkout: Path, run_dir: Path, out: Path, extra: list[str]) -> dict[str, Any] | str:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "report",
        str(run_dir),
        "--out",
        str(out),
        "--format",
        "json",
        *extra,
    ]
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
    summary: dict[str, Any] = orjson.loads((out / "summary.json").read_bytes())
    return summary


def diff(a: Any, b: Any, path: str, out: list[tuple[str, str, float]]) -> None:
    """(path, what, relative difference) of every difference between a and b."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a.keys() | b.keys():
            if k in VOLATILE:
                continue
            if k not in a or k not in b:
                out.append((f"{path}.{k}", "only in " + ("old" if k in a else "new"), float("inf")))
            else:
                diff(a[k], b[k], f"{path}.{k}", out)
        if [k for k in a if k in b] != [k for k in b if k in a]:
            out.append((path, "key order", 0.0))
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append((path, f"length {len(a)} vs {len(b)}", float("inf")))
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            diff(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float | int) and not isinstance(b, bool):
        if a != b:
            rel = abs(a - b) / max(abs(a), abs(b))
            out.append((path, f"{a!r} vs {b!r}", rel))
    elif a != b or type(a) is not type(b):
        if isinstance(a, int) and isinstance(b, float) and a == b:
            out.append((path, f"int {a!r} vs float {b!r}", 0.0))
        else:
            out.append((path, f"{a!r} vs {b!r}", float("inf")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--old", type=Path, required=True, help="checkout of the implementation before")
    p.add_argument("run_dirs", nargs="*", type=Path)
    p.add_argument(
        "--from-tests", type=Path, help="run the old checkout's report tests into this folder first"
    )
    p.add_argument("--rel", type=float, default=0.0, help="relative difference tolerated in floats")
    args = p.parse_args(argv)
    dirs = list(args.run_dirs)
    if args.from_tests:
        shutil.rmtree(args.from_tests, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--basetemp={args.from_tests}",
                *TESTS,
            ],
            cwd=args.old,
            env={**os.environ, "PYTHONPATH": str(args.old)},
            check=False,
            stdout=subprocess.DEVNULL,
        )
        dirs += sorted({p.parent for p in args.from_tests.rglob("records.jsonl")})
    worst = 0.0
    differing = 0
    compared = 0
    with tempfile.TemporaryDirectory(prefix="report-identity-") as tmp:
        for i, run_dir in enumerate(dirs):
            for cache in run_dir.glob("records.cache.parquet"):
                cache.unlink()
            old = report(args.old, run_dir, Path(tmp) / f"old{i}", [])
            new = report(REPO, run_dir, Path(tmp) / f"new{i}", [])
            if isinstance(old, str) or isinstance(new, str):
                same = isinstance(old, str) and isinstance(new, str)
                print(
                    f"{run_dir}: old {old if isinstance(old, str) else 'ok'}; new {new if isinstance(new, str) else 'ok'}"
                )
                differing += not same
                continue
            compared += 1
            found: list[tuple[str, str, float]] = []
            diff(old, new, "", found)
            beyond = [f for f in found if f[2] > args.rel]
            worst = max([worst, *(f[2] for f in found if f[2] != float("inf"))])
            if found:
                print(f"{run_dir}: {len(found)} difference(s), {len(beyond)} beyond {args.rel:g}")
                for path, what, rel in found[:40]:
                    print(f"    {path}: {what} (rel {rel:.1e})")
            differing += bool(beyond)
    print(
        f"{compared} folder(s) compared, {differing} with differences beyond {args.rel:g}; largest finite relative difference {worst:.1e}"
    )
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
