"""The ready line both `serve` commands print, and the parent side that waits for it.

Contract: when ready to take requests a server prints exactly one JSON line to stdout,
`{"ready": true, "base_url": "http://127.0.0.1:PORT/...v1", "models": [...], "pid": N}`,
and stops cleanly on SIGTERM and SIGINT.

Start-up progress: a parent that waits sets `HARNESS_READY_PROGRESS=1` in the child's environment;
a server that can tell (the Foundry host: model download and load) then prints progress lines on
stdout before its ready line, `{"progress": "download"|"load", "model": ID, ...}` with `percent`
(download) or `state` (`start`, `running`, `done`) and the process's `rss_bytes`/`read_bytes`
(load). Without that variable stdout holds the ready line alone. The parent (`StartWatch`) waits
`timeout_s` after the start or after the last progress, whichever is later, so a long download
or load that moves is waited for, and one that stops fails with one line saying where it stopped;
steps that take a while are shown on stderr.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from harness.errors import HostError

__all__ = [
    "PROGRESS_ENV",
    "ChildHost",
    "StartWatch",
    "describe_progress",
    "install_stop_handlers",
    "print_progress",
    "print_ready",
    "start_child_command",
    "start_child_host",
]

#: Set to "1" by a waiting parent: the child may print progress lines before its ready line.
PROGRESS_ENV = "HARNESS_READY_PROGRESS"
#: Growth of a loading host's memory or bytes read that counts as progress (page-sized noise does not).
MOVED_BYTES = 1 << 20
#: A step shorter than this is not shown (a 0.2 s load says nothing worth a line).
SHOW_AFTER_S = 2.0
#: Seconds between two lines about the same running step.
SHOW_EVERY_S = 5.0


def print_ready(base_url: str, models: Sequence[str], **extra: Any) -> None:
    """Print the ready line (and flush): the one line a parent process waits for."""
    line = {"ready": True, "base_url": base_url, "models": list(models), "pid": os.getpid(), **extra}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def print_progress(step: str, model: str, **figures: Any) -> None:
    """Print one start-up progress line for a waiting parent (only when it asked: PROGRESS_ENV)."""
    if os.environ.get(PROGRESS_ENV) != "1":
        return
    line = json.dumps({"progress": step, "model": model, **figures}) + "\n"
    with _STDOUT_LOCK:  # a heartbeat thread and the main thread: whole lines only
        sys.stdout.write(line)
        sys.stdout.flush()


_STDOUT_LOCK = threading.Lock()


def _gib(n: Any) -> str:
    return f"{int(n) / (1 << 30):.2f} GiB"


def describe_progress(event: dict[str, Any]) -> str:
    """`downloading qwen2.5-0.5b: 42.0 %`, `loading tiny:1: 12 s, 0.41 GiB resident, 0.38 GiB read`."""
    step, model = event.get("progress"), event.get("model")
    if step == "download":
        pct = event.get("percent")
        return f"downloading {model}" + ("" if pct is None else f": {float(pct):.1f} %")
    parts = []
    if event.get("elapsed_s") is not None:
        parts.append(f"{float(event['elapsed_s']):.0f} s")
    if event.get("rss_bytes") is not None:
        parts.append(f"{_gib(event['rss_bytes'])} resident")
    if event.get("read_bytes") is not None:
        parts.append(f"{_gib(event['read_bytes'])} read")
    verb = "loaded" if event.get("state") == "done" else "loading"
    return f"{verb} {model}" + (": " + ", ".join(parts) if parts else "")


class StartWatch:
    """How long to wait for a starting child's ready line: `stall_s` after the start or after the
    last progress it reported, whichever is later. Progress is a new step, a higher download
    percentage, or a loading process whose memory or bytes read grew by `MOVED_BYTES`; a heartbeat
    with nothing moved is not. Steps that last `SHOW_AFTER_S` are shown through `show`."""

    def __init__(
        self,
        kind: str,
        stall_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        show: Callable[[str], None] | None = None,
    ) -> None:
        self.kind = kind
        self.stall_s = stall_s
        self.clock = clock
        self.show = show
        self.started = self.last_progress = clock()
        self.last: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self._seen: dict[tuple[Any, Any], dict[str, Any]] = {}
        self._step_since: dict[tuple[Any, Any], float] = {}
        self._shown_at: dict[tuple[Any, Any], float] = {}
        self._lock = threading.Lock()

    def progress(self, event: dict[str, Any]) -> None:
        now = self.clock()
        key = (event.get("progress"), event.get("model"))
        with self._lock:
            prev = self._seen.get(key)
            if prev is None:
                self._step_since[key] = now
            if self._moved(prev, event):
                self.last_progress = now
            self._seen[key] = event
            self.last = event
            self.events.append(event)
        self._show(key, event, now)

    @staticmethod
    def _moved(prev: dict[str, Any] | None, event: dict[str, Any]) -> bool:
        if prev is None or prev.get("state") != event.get("state"):
            return True
        if event.get("percent") is not None and float(event["percent"]) > float(prev.get("percent") or -1):
            return True
        return any(
            event.get(k) is not None and int(event[k]) - int(prev.get(k) or 0) >= MOVED_BYTES
            for k in ("rss_bytes", "read_bytes")
        )

    def _show(self, key: tuple[Any, Any], event: dict[str, Any], now: float) -> None:
        if self.show is None or now - self._step_since[key] < SHOW_AFTER_S:
            return
        done = event.get("state") == "done" or float(event.get("percent") or 0) >= 100
        if not done and now - self._shown_at.get(key, -1e9) < SHOW_EVERY_S:
            return
        self._shown_at[key] = now
        self.show(f"{self.kind} host: {describe_progress(event)}")

    def deadline(self) -> float:
        with self._lock:
            return self.last_progress + self.stall_s

    def why(self) -> str:
        """Why the wait ended without a ready line, in words (for the one-line error)."""
        with self._lock:
            last = self.last
        if last is None:
            return f"did not print its ready line within {self.stall_s:g} s"
        waited = self.clock() - self.started
        return (
            f"made no progress for {self.stall_s:g} s while {describe_progress(last)} "
            f"({waited:.0f} s after it started)"
        )


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
    progress: list[dict[str, Any]] = field(default_factory=list)
    """The start-up progress lines it printed before its ready line."""

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
    show: Callable[[str], None] | None = None,
) -> ChildHost:
    """Start `python -m harness serve KIND ARGS...` and wait for its ready line.

    stderr goes to `log_path` (or is discarded); raises HostError naming the server when it exits
    or makes no progress for `timeout_s` (see `StartWatch`). Steps that take a while (a model
    download or load) are shown through `show`, by default on stderr.
    """
    cmd = [sys.executable, "-m", "harness", "serve", kind, *args]
    return start_child_command(kind, cmd, log_path=log_path, timeout_s=timeout_s, env=env, show=show)


def _say(line: str) -> None:
    sys.stderr.write(f"harness: {line}\n")
    sys.stderr.flush()


def start_child_command(
    kind: str,
    cmd: Sequence[str],
    *,
    log_path: Path | None = None,
    timeout_s: float = 60.0,
    env: dict[str, str] | None = None,
    show: Callable[[str], None] | None = None,
) -> ChildHost:
    """`start_child_host` for any command that keeps the ready-line contract (tests use it with a
    stand-in that reports progress)."""
    env = {**(os.environ if env is None else env), PROGRESS_ENV: "1"}
    watch = StartWatch(kind, timeout_s, show=show or _say)
    err: IO[bytes] | int
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        err = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    else:
        err = subprocess.DEVNULL
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True)
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
            if isinstance(obj, dict) and obj.get("progress"):
                watch.progress(obj)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    while t.is_alive() and time.monotonic() < watch.deadline() and proc.poll() is None:
        t.join(0.05)
    if "ready" not in box:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
            why = watch.why()
        else:
            why = f"exited with code {proc.returncode} before it was ready"
        where = f" (log: {log_path})" if log_path else ""
        raise HostError(f"embedded {kind} host {why}{where}")
    # Keep draining stdout so a chatty child never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout or []], daemon=True).start()
    r = box["ready"]
    return ChildHost(
        kind,
        proc,
        str(r["base_url"]),
        list(r.get("models", [])),
        int(r.get("pid", proc.pid)),
        r,
        log_path,
        watch.events,
    )
