"""Shared helpers for tests that run real harness processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from harness.servers.ready import ChildHost, start_child_host

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
#: Debian's chromium, driven by Playwright (the browser Playwright would download is never used).
CHROMIUM = Path("/usr/bin/chromium")
#: Headless, and nothing that would reach beyond this machine.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def harness(
    *args: str, cwd: Path | None = None, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m harness ARGS` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def sim_host(*args: str) -> Iterator[ChildHost]:
    host = start_child_host("sim", ["--port", "0", *args])
    try:
        yield host
    finally:
        host.stop()


def sim_stats(base_url: str) -> dict[str, Any]:
    """The simulated host's own counters (`GET /sim/stats`): what it received, counted by the host."""
    from harness.client import Connection

    root = base_url.rsplit("/v1", 1)[0]
    for _ in range(20):  # with --fault-refuse the host resets some connections, this one too
        conn = Connection(root)
        try:
            status, _, body = conn.get("/sim/stats")
        except ConnectionError:
            continue
        finally:
            conn.close()
        assert status == 200
        stats: dict[str, Any] = orjson.loads(body)
        return stats
    raise AssertionError("the sim refused every stats request")


def embedded_sim_stats(run_dir: Path) -> dict[int, dict[str, Any]]:
    """The final `/sim/stats` of each embedded sim host of a run, by its index in the scenario's
    hosts, from its log in the run folder (`hosts/N-sim.log`)."""
    out = {}
    for log in (run_dir / "hosts").glob("*-sim.log"):
        lines = [x for x in log.read_text().splitlines() if x.startswith(FINAL_STATS)]
        assert lines, f"{log} has no final stats line (did the host stop cleanly?)"
        out[int(log.name.split("-", 1)[0])] = final_stats(lines[-1])
    return out


FINAL_STATS = "sim: final stats "


def final_stats(line: str) -> dict[str, Any]:
    """The counters in the line `serve sim` writes to stderr when it stops cleanly."""
    stats: dict[str, Any] = orjson.loads(line.removeprefix(FINAL_STATS))
    return stats


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line) for line in (run_dir / "records.jsonl").read_bytes().splitlines() if line.strip()
    ]


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]
