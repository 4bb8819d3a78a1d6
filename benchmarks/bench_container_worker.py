"""What one worker container sustains: `python benchmarks/bench_container_worker.py [--quick]`.

One simulated host (`harness serve sim`, 2 ms between tokens: 200 streams offer ~100,000 token
events/s, more than one client core takes) and one master (`harness run --master
--expect-workers 1`), both plain processes; the one worker is, in turn, a plain `harness worker`
process and the image's worker in a container (`docker run --network host --pid host
llm-load-harness:dev worker ...`, as deploy/compose.yaml runs it), interleaved so the machine's
noise falls on both alike. From each run folder: token events/s received in the steady window
(records.jsonl) and the worker's CPU % (client_metrics.jsonl); the ratio container / process says
what the container costs. Needs the image (`make image`) and a Docker daemon.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.servers.ready import start_child_host

ITL_MS = 2.0
TOKENS = 64
IMAGE = "llm-load-harness:dev"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(base_url: str, container: bool, users: int, duration_s: float, out: Path, tag: str) -> dict:
    port = _free_port()
    master = subprocess.Popen(
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
            "--master",
            "--expect-workers",
            "1",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--out",
            str(out),
            "--run-id",
            tag,
            "--no-report",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker_args = ["worker", "--master-host", "127.0.0.1", "--master-port", str(port)]
    if container:
        # The run folder at the same path inside, so the worker spools where a compose worker does.
        cmd = ["docker", "run", "--rm", "--network", "host", "--pid", "host"]
        cmd += ["--user", f"{os.getuid()}:{os.getgid()}", "-v", f"{out}:{out}", IMAGE, *worker_args]
    else:
        cmd = [sys.executable, "-m", "harness", *worker_args]
    worker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _, err = master.communicate(timeout=duration_s + 180)
    finally:
        worker.wait(30)
    if master.returncode not in (0, 3):
        raise RuntimeError(err[-2000:])
    run_dir = out / tag
    recs = [orjson.loads(x) for x in (run_dir / "records.jsonl").read_bytes().splitlines() if x.strip()]
    recs = [r for r in recs if not r["warmup"]]
    start = min(r["sent_unix_ns"] for r in recs)
    lo, hi = start + 3e9, start + (duration_s - 1) * 1e9  # skip the ramp and the end
    events = sum(
        1 for r in recs for off in r["event_offsets_us"] if lo <= r["sent_unix_ns"] + off * 1000 < hi
    )
    metrics = [
        orjson.loads(x) for x in (run_dir / "client_metrics.jsonl").read_bytes().splitlines() if x.strip()
    ]
    cpu = [m["cpu_percent"] for m in metrics if lo <= m["t_unix_ns"] < hi]
    return {"events_per_s": events / ((hi - lo) / 1e9), "cpu": statistics.median(cpu) if cpu else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat of 12 s runs")
    ap.add_argument("--users", type=int, default=200)
    args = ap.parse_args()
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        print(f"no image {IMAGE}: run `make image` first", file=sys.stderr)
        return 2
    duration = 12.0 if args.quick else 20.0
    repeats = 1 if args.quick else 3
    sim = start_child_host("sim", ["--port", "0", "--ttft-ms", "20", "--itl-ms", str(ITL_MS)])
    rows: dict[str, list[dict]] = {"process": [], "container": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp).chmod(0o777)
            for i in range(repeats):
                for kind in rows:
                    rows[kind].append(
                        one_run(
                            sim.base_url, kind == "container", args.users, duration, Path(tmp), f"{kind}{i}"
                        )
                    )
    finally:
        sim.stop()
    offered = args.users * 1000.0 / ITL_MS
    print(
        f"one worker: {args.users} streams, {ITL_MS:g} ms between tokens (offered ~{offered:,.0f} events/s), "
        f"{duration:g} s runs, medians of {repeats}; {os.cpu_count()} CPUs"
    )
    print(f"{'worker':>10} {'events/s':>10} {'worker CPU %':>13} {'events/CPU-s':>13}")
    med = {}
    for kind, rs in rows.items():
        ev = statistics.median(r["events_per_s"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        med[kind] = ev
        print(f"{kind:>10} {ev:>10,.0f} {cpu:>13.0f} {ev / max(cpu / 100, 1e-9):>13,.0f}")
    print(f"container / process: {med['container'] / med['process']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
