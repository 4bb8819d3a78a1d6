"""Start-up progress of embedded hosts (harness.servers.ready.StartWatch, the Foundry host's
download/load reports): the ready wait is extended while progress is reported and ends with one
line when it stops. The logic with a fake clock, the wait with a real stand-in child process that
reports slowly or stalls, and the real Foundry host's load reports with the shipped tiny model.

What cannot be shown here: a real model download (no internet) and a real load long enough to be
shown on the terminal (the tiny model loads in well under a second)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HostError
from harness.servers.ready import MOVED_BYTES, PROGRESS_ENV, ChildHost, StartWatch, start_child_command


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_wait_is_extended_while_a_download_moves_and_ends_when_it_stops() -> None:
    clock = Clock()
    shown: list[str] = []
    w = StartWatch("foundry", 60, clock=clock, show=shown.append)
    assert w.deadline() == 160
    for pct in range(0, 50, 5):  # 5 % every 30 s: 4.5 minutes, far past the first 60 s
        clock.t += 30
        w.progress({"progress": "download", "model": "qwen", "percent": float(pct)})
        assert w.deadline() == clock.t + 60
    stuck_at = clock.t
    clock.t += 30
    w.progress({"progress": "download", "model": "qwen", "percent": 45.0})  # the same: no progress
    assert w.deadline() == stuck_at + 60
    clock.t = stuck_at + 61
    assert "made no progress for 60 s while downloading qwen: 45.0 %" in w.why()
    # Shown every SHOW_EVERY_S at most, not at every report.
    assert shown and all(line.startswith("foundry host: downloading qwen") for line in shown)
    assert len(shown) <= 10


def test_load_heartbeats_count_only_when_memory_or_reads_grow() -> None:
    clock = Clock()
    w = StartWatch("foundry", 60, clock=clock, show=None)
    beat: dict[str, Any] = {
        "progress": "load",
        "model": "m:1",
        "state": "running",
        "rss_bytes": 10 * MOVED_BYTES,
        "read_bytes": 0,
    }
    w.progress({**beat, "state": "start"})
    clock.t += 1
    w.progress(beat)  # state changed: progress
    t_moved = clock.t
    for _ in range(30):
        clock.t += 1
        w.progress({**beat, "rss_bytes": beat["rss_bytes"] + MOVED_BYTES // 2})  # under the threshold
    assert w.deadline() == t_moved + 60
    clock.t += 1
    w.progress({**beat, "read_bytes": 2 * MOVED_BYTES})
    assert w.deadline() == clock.t + 60


def test_nothing_reported_keeps_the_plain_timeout() -> None:
    clock = Clock()
    w = StartWatch("sim", 60, clock=clock)
    assert w.deadline() == 160
    assert w.why() == "did not print its ready line within 60 s"


STAND_IN = textwrap.dedent(
    """
    import json, sys, time
    steps, gap, ready = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "ready"
    def say(obj):
        sys.stdout.write(json.dumps(obj) + "\\n"); sys.stdout.flush()
    for i in range(steps):
        say({"progress": "download", "model": "big-model", "percent": 10.0 * (i + 1)})
        time.sleep(gap)
    if ready:
        say({"ready": True, "base_url": "http://127.0.0.1:9/v1", "models": ["big-model"], "pid": 1})
    time.sleep(60)
    """
)


def _start(
    tmp_path: Path, steps: int, gap: float, ready: bool, timeout_s: float
) -> tuple[ChildHost, list[str]]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    shown: list[str] = []
    cmd = [sys.executable, str(script), str(steps), str(gap), "ready" if ready else "stall"]
    host = start_child_command("stand-in", cmd, timeout_s=timeout_s, show=shown.append)
    return host, shown


def test_a_slow_start_that_reports_progress_is_waited_for(tmp_path: Path) -> None:
    # 8 reports 0.5 s apart: 4 s in all, with a wait of 1.5 s after each report.
    t = time.monotonic()
    host, shown = _start(tmp_path, steps=8, gap=0.5, ready=True, timeout_s=1.5)
    try:
        assert time.monotonic() - t >= 3.5
        assert [e["percent"] for e in host.progress] == [10.0 * (i + 1) for i in range(8)]
        assert any("downloading big-model" in line for line in shown)
    finally:
        host.stop()


def test_a_start_that_stops_reporting_fails_with_one_line(tmp_path: Path) -> None:
    t = time.monotonic()
    with pytest.raises(HostError) as err:
        _start(tmp_path, steps=3, gap=0.3, ready=False, timeout_s=1.5)
    took = time.monotonic() - t
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        "embedded stand-in host made no progress for 1.5 s while downloading big-model: 30.0 %"
    )
    # It waited past the first report's deadline, and gave up about 1.5 s after the last report.
    assert 2.0 <= took < 10, took


def test_foundry_host_reports_its_model_load(tmp_path: Path) -> None:
    from harness.servers.foundry import start_foundry_host

    host = start_foundry_host(log_path=tmp_path / "foundry.log")
    try:
        loads = [e for e in host.progress if e["progress"] == "load"]
        model = host.models[0]
        assert loads[0]["state"] == "start" and loads[-1]["state"] == "done"
        assert {e["model"] for e in loads} == {model}
        done = loads[-1]
        # The host's own figures: a resident process of some MB, and a load that took some time.
        assert 10 * MOVED_BYTES < done["rss_bytes"] < 4096 * MOVED_BYTES
        assert 0 <= done["elapsed_s"] < 60
    finally:
        host.stop()


def test_foundry_stdout_is_the_ready_line_alone_unless_asked() -> None:
    """The contract: `serve` prints one JSON line on stdout; progress lines only for a parent that asks."""
    env = {k: v for k, v in os.environ.items() if k != PROGRESS_ENV}
    cmd = [sys.executable, "-m", "harness", "serve", "foundry", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(b'{"ready": true'), first
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


class SlowModel:
    """A stand-in for an SDK model whose load takes 2.5 s and grows the process by 8 MiB a step."""

    def __init__(self) -> None:
        self.held: list[bytearray] = []

    def load(self) -> None:
        for _ in range(5):
            self.held.append(bytearray(os.urandom(8 * MOVED_BYTES)))  # touched pages: resident
            time.sleep(0.5)


def test_a_long_load_reports_growing_memory_each_second_and_is_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.servers.foundry import _load

    monkeypatch.setenv(PROGRESS_ENV, "1")
    _load(SlowModel(), "slow:1")
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["state"] == "start" and events[-1]["state"] == "done"
    running = [e for e in events if e["state"] == "running"]
    assert len(running) >= 2
    # What a waiting parent makes of them: each running report moved (memory grew by a step).
    clock = Clock()
    watch = StartWatch("foundry", 60, clock=clock)
    for e in events:
        before = watch.deadline()
        clock.t += 1
        watch.progress(e)
        assert watch.deadline() > before, e
    assert events[-1]["rss_bytes"] - events[0]["rss_bytes"] >= 30 * MOVED_BYTES
    assert 2.4 <= events[-1]["elapsed_s"] < 30
    # Over SHOW_AFTER_S: the person at the terminal is told.
    assert "foundry: loaded slow:1: " in err and "resident" in err
