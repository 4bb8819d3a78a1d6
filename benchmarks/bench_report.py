"""Benchmark `harness report` on 1,000,000 synthetic records: wall time and peak memory, cold and warm.

    python benchmarks/bench_report.py [--records 1000000] [--seed 0] [--dir DIR]

Writes a run folder with `make_records.py` (32-128 content events per record, ~1.3 GB of JSONL for a
million), then runs `python -m harness report` on it in a subprocess twice: cold (no Parquet cache:
parse the JSONL, write the cache) and warm (read the cache). Memory is sampled every 20 ms over the
whole process tree (the report starts parser processes): the peak of the tree's summed RSS, and the
largest single process; CPU time is the tree's user + system time (a fairer figure than wall time on
a shared machine; the load average is printed too). Target: under 15 s and 2 GB each.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from make_records import write_run

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 15.0
TARGET_MB = 2000.0


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(args: list[str]) -> tuple[float, float, float, float]:
    """(wall s, CPU s of the whole tree, peak RSS of the tree in MB, peak RSS of its largest process in MB)."""
    cpu0 = _children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    tree_peak = single_peak = 0
    while proc.poll() is None:
        try:
            rss = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
        except psutil.Error:
            rss = []
        tree_peak, single_peak = max(tree_peak, sum(rss)), max([single_peak, *rss])
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"harness report failed ({proc.returncode}): {proc.stderr.read().decode() if proc.stderr else ''}"
        )
    return wall, _children_cpu_s() - cpu0, tree_peak / 1e6, single_peak / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, help="run folder to (re)use instead of a temporary one")
    args = p.parse_args(argv)
    run_dir = args.dir or Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        records = run_dir / "records.jsonl"
        if not records.is_file():
            t0 = time.perf_counter()
            write_run(run_dir, args.records, args.seed)
            print(f"generated {args.records:,} records in {time.perf_counter() - t0:.0f} s")
        print(
            f"{records}: {records.stat().st_size / 1e9:.2f} GB; CPUs: {len(psutil.Process().cpu_affinity() or [])}"
        )
        (run_dir / "records.cache.parquet").unlink(missing_ok=True)
        command = [sys.executable, "-m", "harness", "report", str(run_dir), "--out", str(run_dir / "out")]
        print(f"command: {' '.join(command[1:])}")
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"{'':6}{'wall s':>8}{'CPU s':>8}{'tree peak MB':>14}{'largest proc MB':>17}")
        missed = False
        for phase in ("cold", "warm"):
            wall, cpu, tree, single = measure(command)
            missed |= wall > TARGET_S or tree > TARGET_MB
            print(f"{phase:6}{wall:8.1f}{cpu:8.1f}{tree:14.0f}{single:17.0f}")
        print(f"target: < {TARGET_S:g} s and < {TARGET_MB:g} MB: {'missed' if missed else 'met'}")
    finally:
        if args.dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
