"""Benchmark `harness report` on synthetic records: wall time and peak memory, the engine against the
implementation before it, side by side in one run.

    python benchmarks/bench_report.py [--records 1000000] [--repeat 3] [--old OLD_CHECKOUT]
                                      [--dir DIR] [--compare] [--keep]

Writes a run folder with `make_records.py` (32-128 content events per record, ~1.3 GB of JSONL per
million), then runs `python -m harness report` on it in a subprocess: `--repeat` times cold then
warm, for this checkout and, with `--old`, for a checkout of the implementation before the engine
(`git worktree add /tmp/old 559170d`): its cold run parses the JSONL and writes its Parquet cache,
its warm run reads the cache. The engine's cold run has no columnar copy (`records.duckdb`): it
parses the JSONL and writes the copy, as the report at the end of `harness run` does; its warm run
attaches the copy (every later report of the run). The OS may hold the files in its page cache in
both, as it would right after a run. Figures are medians over the repeats. Memory is sampled every 20 ms over the
whole process tree (the old implementation starts parser processes): the peak of the tree's summed
RSS, and the largest single process; CPU time is the tree's user + system time (fairer than wall
time on a shared machine; the load average is printed before and after). `--compare` also times
`harness compare DIR DIR` (6 default metrics, 1000 resamples) for each.

A folder of worker spools (`spool/*.records.jsonl`, e.g. ten hard links to the 1,000,000-record
file: 10,000,000 records without 13 GB more disk) is reported as it is, without generating.

Targets (issue 17): at 1,000,000 records cold ≤ 3 s, warm ≤ 2 s, tree peak ≤ 600 MB; at
10,000,000 records ≤ 40 s and ≤ 1.5 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from make_records import write_run

REPO = Path(__file__).resolve().parents[1]


def targets(records: int) -> tuple[float, float, float]:
    """(cold s, warm s, MB) the engine must stay within at this many records."""
    if records >= 10_000_000:
        return 40.0, 40.0, 1500.0
    return 3.0, 2.0, 600.0


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    args: list[str], env: dict[str, str], timeout_s: float, cwd: Path = REPO
) -> tuple[float, float, float, float] | None:
    """(wall s, CPU s of the whole tree, peak RSS of the tree in MB, peak RSS of its largest process
    in MB); None past the timeout."""
    cpu0 = _children_cpu_s()
    start = time.perf_counter()
    # cwd: `python -m` puts the working folder first on sys.path, so it picks the implementation.
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    tree_peak = single_peak = 0
    while proc.poll() is None:
        if time.perf_counter() - start > timeout_s:
            for p in [*root.children(recursive=True), root]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait()
            return None
        try:
            rss = [p.memory_info().rss for p in [root, *root.children(recursive=True)]]
        except psutil.Error:
            rss = []
        tree_peak, single_peak = max(tree_peak, sum(rss)), max([single_peak, *rss])
        time.sleep(0.02)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode not in (0, 1):  # compare exits 1 on a regression: still a result
        raise SystemExit(f"{' '.join(args[1:4])} failed ({proc.returncode}): {err[-2000:]}")
    return wall, _children_cpu_s() - cpu0, tree_peak / 1e6, single_peak / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="runs per phase; medians are shown")
    p.add_argument("--old", type=Path, help="checkout of the implementation before the engine")
    p.add_argument("--dir", type=Path, help="run folder to (re)use instead of a temporary one")
    p.add_argument("--keep", action="store_true", help="keep the generated folder")
    p.add_argument("--compare", action="store_true", help="also time `harness compare DIR DIR`")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a single run may take")
    p.add_argument("--skip-new", action="store_true", help="only the old implementation")
    p.add_argument("--quick", action="store_true", help="200,000 records, one repeat")
    p.add_argument("--cold-only", action="store_true", help="only the cold phase (large runs)")
    args = p.parse_args(argv)
    if args.quick:
        args.records, args.repeat = min(args.records, 200_000), 1
    run_dir = args.dir or Path(tempfile.mkdtemp(prefix="bench-report-"))
    missed = False
    try:
        records = run_dir / "records.jsonl"
        spools = sorted(run_dir.glob("spool/*.records.jsonl"))
        if not records.is_file() and not spools:
            t0 = time.perf_counter()
            write_run(run_dir, args.records, args.seed)
            print(f"generated {args.records:,} records in {time.perf_counter() - t0:.0f} s")
        n_lines = args.records
        files = [records] if records.is_file() else spools
        print(
            f"{run_dir}: {len(files)} file(s), {sum(f.stat().st_size for f in files) / 1e9:.2f} GB; "
            f"CPUs: {len(psutil.Process().cpu_affinity() or [])}; repeats: {args.repeat} (medians)"
        )
        impls = [] if args.skip_new else [("engine", REPO)]
        if args.old:
            impls.append(("before", args.old.resolve()))
        print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(f"{'':18}{'wall s':>8}{'CPU s':>8}{'tree peak MB':>14}{'largest proc MB':>17}")
        results: dict[tuple[str, str], tuple[float, ...] | None] = {}
        for name, checkout in impls:
            env = {**os.environ, "PYTHONPATH": str(checkout)}
            report = [
                sys.executable,
                "-m",
                "harness",
                "report",
                str(run_dir),
                "--out",
                str(run_dir / f"out-{name}"),
            ]
            phases: dict[str, list[tuple[float, float, float, float] | None]] = {"cold": []}
            if not args.cold_only:
                phases["warm"] = []
            for _ in range(args.repeat):
                (run_dir / "records.cache.parquet").unlink(missing_ok=True)  # before's cache
                (run_dir / "records.duckdb").unlink(missing_ok=True)  # the engine's columnar copy
                for phase in ("cold",) if args.cold_only else ("cold", "warm"):
                    phases[phase].append(measure(report, env, args.timeout, checkout))
            if args.compare:
                compare = [sys.executable, "-m", "harness", "compare", str(run_dir), str(run_dir)]
                phases["compare"] = [
                    measure(compare, env, args.timeout, checkout)
                    for _ in range(1 if name == "before" else args.repeat)
                ]
            for phase, runs in phases.items():
                done = [r for r in runs if r is not None]
                if len(done) < len(runs):
                    results[(name, phase)] = None
                    print(f"{name + ' ' + phase:18}{'> ' + format(args.timeout, 'g') + ' s':>8}")
                    continue
                med = tuple(statistics.median(r[i] for r in done) for i in range(4))
                results[(name, phase)] = med
                print(f"{name + ' ' + phase:18}{med[0]:8.1f}{med[1]:8.1f}{med[2]:14.0f}{med[3]:17.0f}")
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        cold_s, warm_s, mb = targets(n_lines)
        new_cold, new_warm = results.get(("engine", "cold")), results.get(("engine", "warm"))
        missed = False
        if new_cold and (new_warm or args.cold_only):
            warm = new_warm or new_cold
            met = new_cold[0] <= cold_s and warm[0] <= warm_s and max(new_cold[2], warm[2]) <= mb
            missed = not met
            print(
                f"target (engine): cold ≤ {cold_s:g} s, warm ≤ {warm_s:g} s, ≤ {mb:g} MB: {'met' if met else 'missed'}"
            )
        old_cold = results.get(("before", "cold"))
        if new_cold and old_cold:
            print(
                f"engine / before: cold wall {new_cold[0] / old_cold[0]:.2f}x, CPU {new_cold[1] / old_cold[1]:.2f}x, "
                f"tree peak {new_cold[2] / old_cold[2]:.2f}x"
            )
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
