"""A soak: long run, mixed faults, flat memory, no record lost: `python benchmarks/bench_soak.py [--minutes 10]`.

A simulated host with 5 % of requests faulted (500, 429, dropped streams, malformed events, stalls,
missing usage, odd splits; about 0.7 % each), `harness run --workers 2` against it for the given
time. Every 15 s it samples the resident memory of every process (the host, `harness run`, the
Locust master and its workers). It prints each process's RSS after the first minute and at the end
(memory must stay flat: no growth with the number of requests), and checks that every request
Locust counted has exactly one record.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from harness.servers.ready import start_child_host

FAULTS = ["500", "429", "drop", "bad-event", "stall", "no-usage", "split"]


def tree(pid: int) -> dict[str, psutil.Process]:
    root = psutil.Process(pid)
    out = {"harness run": root}
    for child in root.children(recursive=True):
        try:
            role = "locust worker" if child.ppid() != pid else "locust master"
        except psutil.Error:
            continue
        out[f"{role} {child.pid}"] = child
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--users", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="1 minute")
    args = ap.parse_args()
    minutes = 1.0 if args.quick else args.minutes
    share = 0.05 / len(FAULTS)
    flags = ["--port", "0", "--ttft-ms", "30", "--itl-ms", "3", "--stall-s", "2", "--seed", "1"]
    for f in FAULTS:
        flags += [f"--fault-{f}", f"{share:.4f}"]
    sim = start_child_host("sim", flags)
    samples: dict[str, list[tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "soak.yaml"
        scenario.write_text(
            "request: {max_tokens: [32, 96]}\n"
            f"load: {{users: {args.users}, duration: {minutes * 60:g}s, stop_timeout: 10s}}\n"
            "timeouts: {idle_s: 1, first_token_s: 10}\n"
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness",
                "run",
                str(scenario),
                "--host",
                sim.base_url,
                "--workers",
                "2",
                "--out",
                tmp,
                "--no-report",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        start = time.monotonic()

        def sample() -> None:
            while proc.poll() is None:
                procs = tree(proc.pid) | {"sim host": psutil.Process(sim.pid)}
                for name, p in procs.items():
                    with contextlib.suppress(psutil.Error):
                        samples.setdefault(name, []).append((time.monotonic() - start, p.memory_info().rss))
                time.sleep(15)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        out, _err = proc.communicate(timeout=minutes * 60 + 300)
        sim.stop()
        run_dir = Path(out.strip().splitlines()[-1])
        recs = [orjson.loads(x) for x in (run_dir / "records.jsonl").read_bytes().splitlines() if x.strip()]
        measured = [r for r in recs if not r["warmup"]]
        counts = orjson.loads((run_dir / "locust_counts.json").read_bytes())["counts"]
    print(
        f"soak: {minutes:g} min, {args.users} users over 2 workers, 5 % mixed faults; exit code {proc.returncode}"
    )
    print(f"{'process':<22}{'RSS after 1 min (MB)':>22}{'RSS at end (MB)':>17}{'change':>9}")
    for name, ss in sorted(samples.items()):
        after = [rss for t_s, rss in ss if t_s >= min(60, minutes * 30)]
        if len(after) < 2:
            continue
        a, b = after[0] / 1e6, after[-1] / 1e6
        print(f"{name:<22}{a:>22.1f}{b:>17.1f}{(b / a - 1) * 100:>8.1f}%")
    errors: dict[str, int] = {}
    for r in measured:
        errors[str(r["error"])] = errors.get(str(r["error"]), 0) + 1
    print(f"requests: {len(measured):,}; by outcome: {dict(sorted(errors.items()))}")
    lost = counts["E2E"]["requests"] - len(measured)
    print(
        f"Locust counted {counts['E2E']['requests']:,}, records.jsonl holds {len(measured):,}: "
        f"{'no record lost' if lost <= 0 else f'{lost} LOST'}"
    )
    return 0 if lost <= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
