"""How load generation scales with local worker processes: `python benchmarks/bench_workers.py [--quick]`.

One simulated host (`harness serve sim`, 2 ms between tokens, so 200 streams offer ~100,000 token
events/s: more than any one client core takes) and `harness run --workers N` for N = 1, 2, 4 against
it, the real CLI each time. From each run folder: token events/s received in the steady window
(from records.jsonl), each worker's CPU % and event-loop lag p99 (client_metrics.jsonl), the sim's
CPU %. Prints the scaling ratio against one worker and, from the measured events per client
CPU-second, a paper estimate of the workers a fleet needs.

On this 2-core machine the host, the Locust master and the workers share the two cores, so scaling
past ~2 cores' worth of work cannot show: the table says what limited each line.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.servers.ready import start_child_host

ITL_MS = 2.0
TOKENS = 64


def one_run(base_url: str, sim_pid: int, workers: int, users: int, duration_s: float, out: Path) -> dict:
    sim = psutil.Process(sim_pid)
    sim.cpu_percent(None)
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            "--host",
            base_url,
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--duration",
            f"{duration_s}s",
            "--max-tokens",
            str(TOKENS),
            "--workers",
            str(workers),
            "--out",
            str(out),
            "--no-report",
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 120,
    )
    wall = time.monotonic() - t0
    sim_cpu = sim.cpu_percent(None) * wall / max(duration_s, 1e-9)  # spread over the load phase
    if proc.returncode not in (0, 3):
        raise RuntimeError(proc.stderr[-2000:])
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    recs = [orjson.loads(x) for x in (run_dir / "records.jsonl").read_bytes().splitlines() if x.strip()]
    recs = [r for r in recs if not r["warmup"]]
    start = min(r["sent_unix_ns"] for r in recs)
    lo, hi = start + 3e9, start + (duration_s - 1) * 1e9  # skip ramp and the end
    events = 0
    for r in recs:
        for off in r["event_offsets_us"]:
            t = r["sent_unix_ns"] + off * 1000
            if lo <= t < hi:
                events += 1
    window = (hi - lo) / 1e9
    metrics = [
        orjson.loads(x) for x in (run_dir / "client_metrics.jsonl").read_bytes().splitlines() if x.strip()
    ]
    steady = [m for m in metrics if lo <= m["t_unix_ns"] < hi]
    by_worker: dict[str, list[dict]] = {}
    for m in steady:
        by_worker.setdefault(m["worker"], []).append(m)
    cpu = {w: statistics.median(m["cpu_percent"] for m in ms) for w, ms in by_worker.items()}
    lag = max((m["loop_lag_ms_p99"] for m in steady), default=0.0)
    return {
        "workers": workers,
        "events_per_s": events / window,
        "worker_cpu_sum": sum(cpu.values()),
        "worker_cpu_max": max(cpu.values(), default=0.0),
        "loop_lag_p99_ms": lag,
        "sim_cpu": sim_cpu,
        "ok_share": sum(1 for r in recs if r["ok"]) / len(recs),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat of 12 s runs")
    ap.add_argument("--users", type=int, default=200)
    args = ap.parse_args()
    duration = 12.0 if args.quick else 20.0
    repeats = 1 if args.quick else 3
    sim = start_child_host("sim", ["--port", "0", "--ttft-ms", "20", "--itl-ms", str(ITL_MS)])
    offered = args.users * 1000.0 / ITL_MS
    rows: dict[int, list[dict]] = {1: [], 2: [], 4: []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeats):
                for n in rows:  # interleaved, so the machine's noise falls on every line alike
                    rows[n].append(one_run(sim.base_url, sim.pid, n, args.users, duration, Path(tmp)))
    finally:
        sim.stop()
    print(
        f"worker scaling: {args.users} streams, {ITL_MS:g} ms between tokens (offered ~{offered:,.0f} events/s), "
        f"{duration:g} s runs, medians of {repeats}; {psutil.cpu_count()} CPUs"
    )
    print(
        f"{'workers':>7} {'events/s':>10} {'x 1 worker':>10} {'worker CPU % (sum)':>19} {'loop lag p99':>13} {'sim CPU %':>10}  limit"
    )
    base = statistics.median(r["events_per_s"] for r in rows[1])
    per_core = []
    for n, rs in rows.items():
        ev = statistics.median(r["events_per_s"] for r in rs)
        cpu = statistics.median(r["worker_cpu_sum"] for r in rs)
        lag = statistics.median(r["loop_lag_p99_ms"] for r in rs)
        simc = statistics.median(r["sim_cpu"] for r in rs)
        per_core.append(ev / max(cpu / 100, 1e-9))
        if ev > 0.9 * offered:
            limit = "offered load"
        elif lag > 5 and cpu / n < 80:
            limit = "the machine: workers wait for a CPU (host, master and workers share its cores)"
        else:
            limit = "client CPU"
        print(f"{n:>7} {ev:>10,.0f} {ev / base:>10.2f} {cpu:>19.0f} {lag:>12.1f}  {simc:>9.0f}  {limit}")
    best = max(per_core)
    print(f"\nevents per client CPU-second (best line): {best:,.0f}")
    print(
        "paper estimate: workers needed = peak token events/s of the fleet / "
        f"({best:,.0f} x 0.7 headroom) per core; e.g. 20 hosts x 8 streams x 50 tok/s = 8,000 events/s "
        f"-> {8000 / (best * 0.7):.2f} worker cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
