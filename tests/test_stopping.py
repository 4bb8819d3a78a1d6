"""Stopping and crashing: Ctrl-C/SIGTERM of `harness run`, a worker killed, a master killed.

Whatever is stopped or killed, every record that reached a disk must end up in the run folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import psutil
import pytest
from harness_helpers import REPO, records, sim_host, sim_stats

from harness.records import read_records

pytestmark = pytest.mark.slow


def start_run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def locust_processes(
    harness_pid: int, want: int, timeout: float = 20
) -> tuple[psutil.Process, list[psutil.Process]]:
    """The Locust master (child of harness run) and its worker processes, once `want` exist."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(harness_pid).children():
                if "locust" in " ".join(child.cmdline()):
                    workers = [
                        w for w in child.children() if w.is_running() and "locust" in " ".join(w.cmdline())
                    ]
                    if len(workers) >= want:
                        return child, workers
        except psutil.NoSuchProcess:  # a short-lived helper process went away while we looked
            pass
        time.sleep(0.2)
    raise AssertionError("Locust processes did not appear")


def spool_records(run_dir: Path) -> list[dict]:
    out = []
    for p in (run_dir / "spool").glob("*.records.jsonl"):
        out += [orjson.loads(x) for x in p.read_bytes().splitlines() if x.strip()]
    return out


def wait_for(
    what: str, condition: Callable[[], bool], timeout: float = 60, detail: Callable[[], str] | None = None
) -> None:
    """Wait until `condition()` holds (the load has reached a given point), not a fixed time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (
            f": {detail()}" if detail else ""
        )
        time.sleep(0.05)


def spooled_by(run_dir: Path, pid: int) -> int:
    """Records the worker process `pid` has spooled so far."""
    return sum(len(p.read_bytes().splitlines()) for p in (run_dir / "spool").glob(f"*-{pid}.records.jsonl"))


def on_disk(run_dir: Path) -> list[dict]:
    """Distinct records on disk now, in the run folder and the workers' spools (a line being
    written is skipped)."""
    paths = [run_dir / "records.jsonl", *(run_dir / "spool").glob("*.records.jsonl")]
    recs, _broken = read_records([p for p in paths if p.exists()])
    return list({(r["worker"], r["seq"]): r for r in recs}.values())


def sent_before(recs: list[dict], t_ns: int) -> int:
    return sum(1 for r in recs if r["sent_unix_ns"] < t_ns)


def received_and_on_disk(base_url: str, run_dir: Path) -> tuple[int, int]:
    """(t, n): n, the host's own count of the requests it had received by the time t (ns, Unix),
    once all their records have reached a disk (streams in flight at t end within ~50 ms; workers
    flush their spools every 0.5 s). Each was sent before t, so whatever is killed next, the folder
    must hold n records sent before t; records of later requests cannot make up for a lost one."""
    received = int(sim_stats(base_url)["chat_requests"])
    t_ns = time.time_ns()
    wait_for(
        f"records of the {received} requests the host received on disk",
        lambda: sent_before(on_disk(run_dir), t_ns) >= received,
        10,
        lambda: f"{sent_before(on_disk(run_dir), t_ns)} on disk",
    )
    return t_ns, received


def keys(recs: list[dict]) -> set[tuple[str, int]]:
    return {(r["worker"], r["seq"]) for r in recs}


def test_sigterm_records_streams_in_flight_as_stopped(tmp_path: Path) -> None:
    with sim_host("--ttft-ms", "50", "--itl-ms", "20") as sim:
        proc = start_run(
            "--host",
            sim.base_url,
            "--users",
            "3",
            "--duration",
            "60s",
            "--max-tokens",
            "100",
            "--out",
            str(tmp_path),
            "--run-id",
            "stop",
        )
        # Every user has a stream in flight at the host (and has finished one, past the warm-up).
        wait_for(
            "3 streams in flight",
            lambda: (st := sim_stats(sim.base_url))["in_flight"] == 3 and st["chat_requests"] >= 1 + 3 + 3,
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        host = sim_stats(sim.base_url)
    assert proc.returncode == 3, err
    run_dir = Path(out.strip().splitlines()[-1])
    assert run_dir == tmp_path / "stop"
    recs = [r for r in records(run_dir) if not r["warmup"]]
    stopped = [r for r in recs if r["error"] == "stopped"]
    assert len(stopped) == 3, "each user's stream in flight is recorded as stopped"
    assert all(0 <= r["content_events"] < 100 for r in stopped)
    counts = orjson.loads((run_dir / "locust_counts.json").read_bytes())["counts"]
    assert counts["E2E"]["requests"] == len(recs)
    assert len(records(run_dir)) == host["chat_requests"], "every request the host received has its record"
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["state"] == "incomplete" and "interrupted" in " ".join(manifest["problems"])


def test_worker_killed_mid_run_loses_nothing_the_others_sent(tmp_path: Path) -> None:
    with sim_host("--ttft-ms", "5", "--itl-ms", "2") as sim:
        proc = start_run(
            "--host",
            sim.base_url,
            "--users",
            "4",
            "--duration",
            "10s",
            "--max-tokens",
            "20",
            "--workers",
            "2",
            "--out",
            str(tmp_path),
            "--run-id",
            "kill1",
        )
        _master, workers = locust_processes(proc.pid, 2)
        run_dir = tmp_path / "kill1"
        # Both workers have sent load and spooled records of it.
        wait_for("both workers' records", lambda: all(spooled_by(run_dir, w.pid) >= 3 for w in workers))
        t_ns, received = received_and_on_disk(sim.base_url, run_dir)
        victim = workers[0].pid
        os.kill(victim, signal.SIGKILL)
        out, _err = proc.communicate(timeout=120)
        host = sim_stats(sim.base_url)
    assert Path(out.strip().splitlines()[-1]) == run_dir
    final = keys(records(run_dir))
    # Against what was sent (the host's own count): every request received before the kill, whose
    # record had reached a disk, is kept (up to 4 sent in the instant between the host's count and
    # the clock reading also count), and nothing is recorded that the host never received. (What
    # the victim made in its last flush interval and its streams in flight are lost with it.)
    kept = sent_before(records(run_dir), t_ns)
    assert received <= kept <= received + 4, (received, kept)
    assert len(final) <= host["chat_requests"], (len(final), host)
    spooled = spool_records(run_dir)
    assert keys(spooled) <= final, "every record a worker wrote is in the run folder"
    survivors = {r["worker"] for r in spooled if not r["worker"].endswith(f":{victim}")}
    assert survivors and all(k in final for k in keys(spooled) if k[0] in survivors)
    assert any(r["worker"].endswith(f":{victim}") for r in records(run_dir)), (
        "the killed worker's records are kept"
    )


def test_worker_then_master_killed_the_folder_is_recovered(tmp_path: Path) -> None:
    with sim_host("--ttft-ms", "5", "--itl-ms", "2") as sim:
        proc = start_run(
            "--host",
            sim.base_url,
            "--users",
            "4",
            "--duration",
            "60s",
            "--max-tokens",
            "20",
            "--workers",
            "2",
            "--out",
            str(tmp_path),
            "--run-id",
            "kill2",
        )
        master, workers = locust_processes(proc.pid, 2)
        run_dir = tmp_path / "kill2"
        wait_for("both workers' records", lambda: all(spooled_by(run_dir, w.pid) >= 3 for w in workers))
        t_ns, received = received_and_on_disk(sim.base_url, run_dir)
        os.kill(workers[0].pid, signal.SIGKILL)
        # The survivor goes on sending after the kill before the master is stopped.
        before = sim_stats(sim.base_url)["chat_requests"]
        wait_for("load after the kill", lambda: sim_stats(sim.base_url)["chat_requests"] >= before + 10)
        master.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=120)
        host = sim_stats(sim.base_url)
    assert proc.returncode != 0
    assert Path(out.strip().splitlines()[-1]) == run_dir
    spooled = spool_records(run_dir)
    final = records(run_dir)
    assert spooled and keys(spooled) <= keys(final), "the spools' records were merged back"
    assert len(keys(final)) == len(final), "no record twice"
    # Against what was sent: every request received before the kills, whose record had reached a
    # disk, is recovered (as above); nothing is recorded that the
    # host never received.
    kept = sent_before(final, t_ns)
    assert received <= kept <= received + 4, (received, kept)
    assert len(final) <= host["chat_requests"], (len(final), host)
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert manifest["exit_code"] == proc.returncode


def test_report_recover_merges_spools_by_hand(tmp_path: Path) -> None:
    """`harness report --recover`: a master that died before writing what workers sent."""
    from harness_helpers import harness

    run = tmp_path / "crashed"
    (run / "spool").mkdir(parents=True)
    from recordgen import record, write_run

    recs = [record(t_s=i * 0.2, seq=i, worker="box:7") for i in range(30)]
    write_run(run, recs[:10], tail=b'{"run_id": "run-a", "wor')  # the master wrote 10, then died mid-line
    (run / "spool" / "box-7.records.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
    proc = harness("report", str(run), "--recover", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "20 record(s) recovered" in proc.stderr
    from harness.records import read_records

    recs_read, broken = read_records(run / "records.jsonl")
    assert len(recs_read) == 30 and broken == 1
    summary = orjson.loads((run / "summary.json").read_bytes())
    # the line the crash cut stays where it was, skipped and counted; the 20 spooled records follow it
    assert summary["counts"]["records"] == 30 and summary["counts"]["broken_lines"] == 1
    nothing = harness("report", str(tmp_path), "--recover")
    assert nothing.returncode == 2 and "no worker spools" in nothing.stderr
