"""Workers as real processes: `harness worker --processes N` for a `harness run --master`, and
`harness run --workers N`; every worker process's records reach the master.

Streams are still running when the load ends, and `stop_timeout` lets them finish: their records
travel only in each worker's last report, sent after its users stopped. The master's records are
checked against the host's own count (`/sim/stats`) and against Locust's count on the master, and
no record may have come back only through the spool recovery (which a worker on another machine
would not have).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness_helpers import REPO, harness, last_line, records, sim_host

pytestmark = pytest.mark.slow

#: 4 users with streams of 1.5 s (TTFT 5 ms + 50 x 30 ms): every user has one in flight at the end,
#: most for longer than the 0.5 s Locust's master would wait for the workers' last reports.
SIM_ARGS = ("--ttft-ms", "5", "--itl-ms", "30")
LOAD_ARGS = ("--users", "4", "--duration", "2s", "--max-tokens", "50", "--stop-timeout", "5s", "--no-report")


def sim_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/sim/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
        return stats


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def check_every_record_arrived(run_dir: Path, stderr: str, stats: dict[str, Any], processes: int) -> None:
    recs = records(run_dir)
    measured = [r for r in recs if not r["warmup"]]
    # Every request the host received is a record in the master's folder...
    assert len(recs) == stats["chat_requests"]
    assert sum(r["output_tokens"] or 0 for r in recs) == stats["tokens"]
    # ...that came through the master: Locust on the master counted each, and none had to be
    # recovered from a worker's spool afterwards.
    assert "recovered from worker spools" not in stderr, stderr
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["records"]["locust_counted"] == len(measured) == manifest["records"]["measured"]
    counts = orjson.loads((run_dir / "locust_counts.json").read_bytes())
    assert sum(counts["workers"].values()) == len(measured)
    # The streams running at the end finished (stop_timeout) rather than being cut.
    assert all(r["ok"] for r in measured)
    # Each worker process sent load and its records arrived.
    by_worker = Counter(r["worker"] for r in measured)
    assert len(by_worker) == processes and min(by_worker.values()) > 0, by_worker
    assert {w["worker"]: w["records"] for w in manifest["workers"]} == dict(by_worker)


def test_harness_worker_processes_for_a_master(tmp_path: Path) -> None:
    port = free_port()
    with sim_host(*SIM_ARGS) as sim:
        master = spawn(
            "run",
            "--host",
            sim.base_url,
            *LOAD_ARGS,
            "--master",
            "--expect-workers",
            "2",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--out",
            str(tmp_path),
            "--run-id",
            "remote",
        )
        worker = spawn("worker", "--master-host", "127.0.0.1", "--master-port", str(port), "--processes", "2")
        try:
            out, err = finish(master, 90)
        finally:
            # The workers leave when their master quits.
            _, worker_err = finish(worker, 30)
        stats = sim_stats(sim.base_url)
    assert master.returncode == 0, err
    assert worker.returncode == 0, worker_err
    run_dir = Path(last_line(out))
    check_every_record_arrived(run_dir, err, stats, processes=2)
    # The load came from two processes of their own, neither the master nor `harness worker` itself.
    senders = {int(r["worker"].rsplit(":", 1)[1]) for r in records(run_dir) if not r["warmup"]}
    assert not senders & {master.pid, worker.pid}


def test_local_worker_processes(tmp_path: Path) -> None:
    with sim_host(*SIM_ARGS) as sim:
        proc = harness(
            "run", "--host", sim.base_url, *LOAD_ARGS, "--workers", "2", "--out", str(tmp_path), timeout=90
        )
        stats = sim_stats(sim.base_url)
    assert proc.returncode == 0, proc.stderr
    check_every_record_arrived(Path(last_line(proc.stdout)), proc.stderr, stats, processes=2)


def test_a_worker_that_joins_after_the_start_sends_no_workload_request(tmp_path: Path) -> None:
    """The workload is split among the workers there are at test start; a later one has no share.
    Falling back to "alone" it would send the whole workload again: the host's own count shows
    the limit exact."""
    n = 40
    port = free_port()
    run_dir = tmp_path / "late"
    with sim_host("--ttft-ms", "5", "--itl-ms", "30") as sim:
        master = spawn(
            *("run", "--host", sim.base_url, "--users", "2", "--duration", "60s", "--no-report"),
            *("--output-tokens", "10", "--max-requests", str(n)),
            *("--master", "--expect-workers", "1", "--master-bind-host", "127.0.0.1"),
            *("--master-bind-port", str(port), "--out", str(tmp_path), "--run-id", "late"),
        )
        first = spawn("worker", "--master-host", "127.0.0.1", "--master-port", str(port))
        late = None
        try:
            deadline = time.monotonic() + 60
            # The test has started once the first measured records reach the master.
            while not (
                (run_dir / "records.jsonl").exists()
                and b'"warmup":false' in (run_dir / "records.jsonl").read_bytes().replace(b" ", b"")
            ):
                assert time.monotonic() < deadline and master.poll() is None, "the run never started"
                time.sleep(0.1)
            late = spawn("worker", "--master-host", "127.0.0.1", "--master-port", str(port))
            _, err = finish(master, 90)
        finally:
            finish(first, 30)
            _, late_err = finish(late, 30) if late is not None else ("", "")
        stats = sim_stats(sim.base_url)
    assert master.returncode == 0, err
    recs = [r for r in records(run_dir) if not r["warmup"]]
    assert stats["chat_requests"] == len(records(run_dir)) and len(recs) == n
    assert len({r["worker"] for r in recs}) == 1
    assert "joined after the test started" in late_err, late_err[-2000:]
