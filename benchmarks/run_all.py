"""Run every benchmark in this folder: `python benchmarks/run_all.py [--quick] [NAME ...]` (`make bench`).

Discovers `benchmarks/bench_*.py`, runs each in turn with this interpreter from the repository root
(passing `--quick` on when given), shows its output as it goes, and ends with one line per benchmark:
exit code and seconds. Exits non-zero when any benchmark did (a benchmark exits 1 when it misses a
target, so a FAIL shows here too).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def discover(names: list[str]) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    if not names:
        return found
    wanted = {n.removesuffix(".py").removeprefix("bench_") for n in names}
    picked = [p for p in found if p.stem.removeprefix("bench_") in wanted]
    missing = wanted - {p.stem.removeprefix("bench_") for p in picked}
    if missing:
        raise SystemExit(
            f"run_all: no benchmark named {', '.join(sorted(missing))} "
            f"(have: {', '.join(p.stem for p in found)})"
        )
    return picked


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    p.add_argument("names", nargs="*", help="only these (e.g. client accuracy); default: all")
    a = p.parse_args()
    benches = discover(a.names)
    if not benches:
        print("run_all: no benchmarks/bench_*.py found")
        return 1
    summary: list[tuple[str, int, float]] = []
    for path in benches:
        cmd = [sys.executable, str(path), *(["--quick"] if a.quick else [])]
        print(f"\n=== {path.name} {' '.join(cmd[2:])}".rstrip() + " ===", flush=True)
        t0 = time.monotonic()
        try:
            code = subprocess.run(cmd, cwd=ROOT).returncode
        except KeyboardInterrupt:
            print(f"\nrun_all: interrupted during {path.name}")
            return 130
        summary.append((path.name, code, time.monotonic() - t0))
    print("\n=== summary ===")
    for name, code, secs in summary:
        state = "ok" if code == 0 else ("missed a target" if code == 1 else f"failed (exit {code})")
        print(f"  {name:<24} {state:<22} {secs:6.0f} s")
    return 0 if all(code == 0 for _, code, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
