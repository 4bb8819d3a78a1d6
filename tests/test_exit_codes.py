"""`harness run` exit 3 paths, provoked for real: records missing, and a second Ctrl-C.

Real processes: the simulated host as its own process, `harness run` as a child in its own session
(signals reach it as a terminal's Ctrl-C would: to its process group), Locust as its child. Counts
are checked against the host's own (`/sim/stats`), and what was written is read back from disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from harness_helpers import REPO, last_line, records, sim_host

pytestmark = pytest.mark.slow


def sim_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/sim/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
        return stats


def start_run(*args: str) -> subprocess.Popen[str]:
    """`harness run ARGS` in a session of its own, as a shell would start it in the foreground."""
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def measured_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_bytes().splitlines() if line.strip() and b'"warmup":false' in line)


def test_records_missing_is_exit_3_naming_the_counts_and_keeps_what_is_on_disk(tmp_path: Path) -> None:
    """records.jsonl loses lines while Locust writes it (here: truncated mid-run, as a careless log
    rotation would do): Locust's own count no longer matches and the run must say so."""
    run_dir = tmp_path / "missing"
    rec_path = run_dir / "records.jsonl"
    with sim_host("--ttft-ms", "5", "--itl-ms", "1") as sim:
        proc = start_run(
            "--host",
            sim.base_url,
            "--users",
            "2",
            "--duration",
            "4s",
            "--max-tokens",
            "8",
            "--stop-timeout",
            "5s",
            "--out",
            str(tmp_path),
            "--run-id",
            "missing",
        )
        try:
            # Truncate once measured records have been flushed, early enough that more follow.
            wait_for("the first measured records", lambda: measured_lines(rec_path) >= 3)
            os.truncate(rec_path, 0)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stats = sim_stats(sim.base_url)
    assert proc.returncode == 3, err
    assert Path(last_line(out)) == run_dir
    on_disk = records(run_dir)
    held = [r for r in on_disk if not r["warmup"]]
    # Locust counted every load request the host received (the one warm-up request came before).
    counted = stats["chat_requests"] - 1
    assert (
        f"harness: records missing: Locust counted {counted} requests, records.jsonl holds {len(held)}" in err
    )
    # What was written after the truncation is still there, whole, and the manifest says why the
    # run is incomplete.
    assert 0 < len(held) < counted
    assert all(r["run_id"] == "missing" and r["ok"] for r in held)
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["state"] == "incomplete" and manifest["exit_code"] == 3
    assert manifest["records"]["locust_counted"] == counted and manifest["records"]["measured"] == len(held)
    assert "Traceback" not in err


def test_second_ctrl_c_kills_at_once_and_keeps_what_was_written(tmp_path: Path) -> None:
    """The first Ctrl-C lets streams in flight finish (stop_timeout); the second must not wait."""
    scenario = tmp_path / "long.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "name": "long",
                "prompts": [{"id": "p", "text": "Tell me a long story."}],
                # At 50 ms a token, load streams of up to 50 s that the first Ctrl-C lets finish
                # (stop_timeout 60 s); the warm-up takes the range's low end, one token.
                "request": {"max_tokens": [1, 1000]},
                "load": {"users": 2, "duration": "60s", "stagger": 0, "stop_timeout": "60s"},
                "warmup": {"requests": 1},
                "seed": 1,
            }
        )
    )
    run_dir = tmp_path / "twice"
    with sim_host("--ttft-ms", "5", "--itl-ms", "50") as sim:
        proc = start_run(str(scenario), "--host", sim.base_url, "--out", str(tmp_path), "--run-id", "twice")
        try:
            wait_for("two load streams in flight", lambda: sim_stats(sim.base_url)["in_flight"] >= 2)
            os.killpg(proc.pid, signal.SIGINT)
            # The first Ctrl-C alone does not end the run while its streams are running.
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
            # Requests the host had finished by now have been flushed to disk by the time of the
            # second Ctrl-C (spools flush every 0.5 s); the ones it finishes later may not be.
            early = sim_stats(sim.base_url)
            time.sleep(1.0)
            late = sim_stats(sim.base_url)
            assert late["in_flight"] >= 1, "no stream left for the second Ctrl-C to cut"
            os.killpg(proc.pid, signal.SIGINT)
            t = time.monotonic()
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - t
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Nothing of the run outlives it: the host sees every stream's connection close.
        wait_for("the killed run's streams to end", lambda: sim_stats(sim.base_url)["in_flight"] == 0, 10)
    assert proc.returncode == 3, err
    # At once: well under the ~19 s the streams in flight still had to run.
    assert took < 5.0, f"the second Ctrl-C took {took:.1f} s"
    assert "run killed on a second interrupt" in err and "Traceback" not in err
    assert Path(last_line(out)) == run_dir
    # What was written stays: the records of the requests the host had finished (the warm-up
    # among them), the manifest saying how the run ended, Locust's log.
    on_disk = records(run_dir)
    finished_early = early["chat_requests"] - early["in_flight"]
    finished_late = late["chat_requests"] - late["in_flight"]
    assert finished_early <= len(on_disk) <= finished_late, (finished_early, len(on_disk), finished_late)
    assert sum(r["warmup"] for r in on_disk) == 1 and all(r["ok"] for r in on_disk)
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["state"] == "incomplete" and manifest["exit_code"] == 3
    assert (run_dir / "locust" / "locust.log").exists()
