"""The ready line both `serve` commands print, and the parent side that waits for it.

Contract: when ready to take requests a server prints exactly one JSON line to stdout,
`{"ready": true, "base_url": "http://127.0.0.1:PORT/...v1", "models": [...], "pid": N}`,
and stops cleanly on SIGTERM and SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from harness.errors import HostError

__all__ = ["ChildHost", "install_stop_handlers", "print_ready", "start_child_host"]


def print_ready(base_url: str, models: Sequence[str], **extra: Any) -> None:
    """Print the ready line (and flush): the one line a parent process waits for."""
    line = {"ready": True, "base_url": base_url, "models": list(models), "pid": os.getpid(), **extra}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def install_stop_handlers(stop: Callable[[], None]) -> None:
    """Call `stop()` once on SIGTERM or SIGINT (main thread only)."""
    fired = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if not fired.is_set():
            fired.set()
            stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@dataclass
class ChildHost:
    """A server started as a child process, with what its ready line said."""

    kind: str
    proc: subprocess.Popen[bytes]
    base_url: str
    models: list[str]
    pid: int
    ready: dict[str, Any]
    log_path: Path | None = None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL if it will not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_child_host(
    kind: str,
    args: Sequence[str],
    *,
    log_path: Path | None = None,
    timeout_s: float = 60.0,
    env: dict[str, str] | None = None,
) -> ChildHost:
    """Start `python -m harness serve KIND ARGS...` and wait for its ready line.

    stderr goes to `log_path` (or is discarded); raises HostError naming the server when it exits
    or stays silent past `timeout_s`.
    """
    cmd = [sys.executable, "-m", "harness", "serve", kind, *args]
    err: IO[bytes] | int
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        err = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    else:
        err = subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True)
    if log_path is not None and not isinstance(err, int):
        err.close()
    assert proc.stdout is not None
    box: dict[str, Any] = {}

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("ready"):
                box["ready"] = obj
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout_s
    while t.is_alive() and time.monotonic() < deadline and proc.poll() is None:
        t.join(0.05)
    if "ready" not in box:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
            why = f"did not print its ready line within {timeout_s:.0f} s"
        else:
            why = f"exited with code {proc.returncode} before it was ready"
        where = f" (log: {log_path})" if log_path else ""
        raise HostError(f"embedded {kind} host {why}{where}")
    # Keep draining stdout so a chatty child never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
    r = box["ready"]
    return ChildHost(
        kind, proc, str(r["base_url"]), list(r.get("models", [])), int(r.get("pid", proc.pid)), r, log_path
    )
