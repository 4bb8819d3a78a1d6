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


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line) for line in (run_dir / "records.jsonl").read_bytes().splitlines() if line.strip()
    ]


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]
