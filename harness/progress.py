"""Live progress of a headless `harness run`: a live table on a terminal, plain lines otherwise.

Owns reading the run folder while Locust runs and turning it into progress figures; nothing here
imports Locust or touches a process that measures.

Where the figures come from: the run folder's `records.jsonl` and `client_metrics.jsonl`, tailed
by the orchestrator (`harness run`'s own process, not a load generator). Whatever the topology,
those two files hold every process's output: a single Locust process writes them itself; with
local `--workers` or remote workers (`--master`) the master appends what each worker sends with
its stats report. Tailing a worker's spool would miss workers on other machines, and computing in
the master would put the arithmetic on an event loop that also times requests; tailing the merged
files costs the measuring processes nothing. The price is delay: a single process flushes every
0.5 s, a worker reports every 3 s (Locust's `WORKER_REPORT_INTERVAL`), so each window ends `lag_s`
before now and is shown once its records are in.

Figures of one window `[lo, hi)` (seconds since the load started), over the records that *ended*
in it (end = sent + E2E, the send time when E2E is unknown, as `harness.metrics.end_unix_ns`),
warm-up excluded:
- requests/s: successful requests / window seconds (the report's `requests_per_s`);
- output tokens/s: Σ output tokens of successful requests / window seconds;
- TTFT p50/p95 and TPOT p50: percentiles (linear interpolation, numpy's default, as the report)
  over the successful requests' values;
- errors: failed requests by category.
Users, in flight and the stage are the latest self-monitoring sample of each load-generator
process (`client_metrics.jsonl`, once a second per process), summed over processes.

Plain lines (`format_line`) are meant to be parsed: `tests/test_progress.py` recomputes them from
`records.jsonl`.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from harness.webui_figures import span_of

__all__ = [
    "ALL",
    "DEFAULT_INTERVAL_S",
    "Figures",
    "JsonlTail",
    "Progress",
    "ProgressState",
    "format_line",
    "lag_for",
]

#: Seconds between plain progress lines (and the width of the table's window) unless told.
DEFAULT_INTERVAL_S = 5.0
#: Locust's worker stats-report interval (locust.runners.WORKER_REPORT_INTERVAL): how often a
#: worker's records reach the master.
WORKER_REPORT_S = 3.0
#: The single process's spool flush interval (harness.rundir.Spool, harness.locust.users).
FLUSH_S = 0.5


def lag_for(distributed: bool) -> float:
    """How far behind now a window ends so that its records have reached the run folder: the
    flush or report interval, plus a margin for an event loop that is late under load."""
    return WORKER_REPORT_S + 1.5 if distributed else FLUSH_S + 1.5


class JsonlTail:
    """Reads the complete lines appended to a JSONL file since the last call (a line still being
    written waits for its newline); a file that does not exist yet reads as empty."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.path = path
        self.pos = path.stat().st_size if from_end and path.exists() else 0
        self.broken = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.pos += end + 1
        out = []
        for line in data[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.broken += 1
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


@dataclass(slots=True)
class _Rec:
    end_s: float
    key: tuple[str, str]
    ok: bool
    ttft_ms: float | None
    tpot_ms: float | None
    tokens: int
    error: str | None


@dataclass
class Figures:
    """One window's figures of one group (a host and model, or all of them)."""

    seconds: float
    requests: int = 0
    ok: int = 0
    output_tokens: int = 0
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    tpot_p50_ms: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    inflight: int | None = None

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0


def _figures(recs: Sequence[_Rec], seconds: float) -> Figures:
    span = span_of(recs, seconds)  # the LLM tab's arithmetic: the same figures for the same records
    return Figures(
        seconds=seconds,
        requests=span.requests,
        ok=span.ok,
        output_tokens=span.output_tokens,
        ttft_p50_ms=span.ttft_p50_ms,
        ttft_p95_ms=span.ttft_p95_ms,
        tpot_p50_ms=span.tpot_p50_ms,
        errors=span.errors,
    )


#: Group key of the figures over every host and model.
ALL = ("", "")


class ProgressState:
    """Records and self-monitoring samples seen so far, and the figures of any window.

    `t0` is the wall-clock start of the load (seconds); windows are in seconds since then."""

    def __init__(self, t0: float, *, keep_s: float = 120.0) -> None:
        self.t0 = t0
        self.keep_s = keep_s
        self.recent: deque[_Rec] = deque()
        self.newest_end_s = -math.inf
        self.samples: dict[str, dict[str, Any]] = {}
        """The latest client_metrics sample of each load-generator process."""
        self.seen = 0
        self.late = 0
        """Records that arrived after the window they belong to had been shown."""
        self.shown_to_s = -math.inf

    def add_record(self, obj: dict[str, Any]) -> None:
        if obj.get("warmup") or "sent_unix_ns" not in obj:
            return
        sent_s = int(obj["sent_unix_ns"]) / 1e9 - self.t0
        e2e = obj.get("e2e_ms")
        end_s = sent_s + (float(e2e) / 1000 if e2e is not None else 0.0)
        ok = bool(obj.get("ok"))
        ttft, tpot = obj.get("ttft_ms"), obj.get("tpot_ms")
        rec = _Rec(
            end_s=end_s,
            key=(str(obj.get("host", "")), str(obj.get("model", ""))),
            ok=ok,
            ttft_ms=None if ttft is None else float(ttft),
            tpot_ms=None if tpot is None else float(tpot),
            tokens=int(obj.get("output_tokens") or 0),
            error=None if ok else str(obj.get("error") or "unknown"),
        )
        self.seen += 1
        if end_s < self.shown_to_s:
            self.late += 1
        self.recent.append(rec)
        self.newest_end_s = max(self.newest_end_s, end_s)
        # Records arrive roughly in end order (a worker's batch a few seconds late): trim with a margin.
        while self.recent and self.recent[0].end_s < self.newest_end_s - self.keep_s:
            self.recent.popleft()

    def add_sample(self, obj: dict[str, Any]) -> None:
        worker = str(obj.get("worker", ""))
        prev = self.samples.get(worker)
        if prev is None or int(obj.get("t_unix_ns", 0)) >= int(prev.get("t_unix_ns", 0)):
            self.samples[worker] = obj

    def window(self, lo: float, hi: float) -> dict[tuple[str, str], Figures]:
        """Figures of the records that ended in [lo, hi), per (host, model) and under `ALL`."""
        groups: dict[tuple[str, str], list[_Rec]] = {ALL: []}
        for r in self.recent:
            if lo <= r.end_s < hi:
                groups[ALL].append(r)
                groups.setdefault(r.key, []).append(r)
        seconds = max(0.0, hi - lo)
        out = {k: _figures(v, seconds) for k, v in groups.items()}
        inflight = self.inflight_by()
        for k, f in out.items():
            f.inflight = inflight.get(k, 0) if inflight is not None else None
        return out

    def users(self) -> int | None:
        vals = [s.get("users") for s in self.samples.values()]
        return sum(int(v) for v in vals if v is not None) if vals else None

    def inflight_by(self) -> dict[tuple[str, str], int] | None:
        """Requests in flight now, per (host, model) and under `ALL`; None before any sample."""
        if not self.samples:
            return None
        out: Counter[tuple[str, str]] = Counter()
        for s in self.samples.values():
            out[ALL] += int(s.get("inflight") or 0)
            for host, model, n in s.get("inflight_by") or []:
                out[(str(host), str(model))] += int(n)
        return dict(out)

    def elapsed(self, now: float) -> float:
        """Seconds of the load so far on the load generators' own stage clock (the newest sample's,
        carried forward to `now`); the time since `t0` before any sample (Locust still starting)."""
        latest = max(
            (s for s in self.samples.values() if s.get("elapsed_s") is not None),
            key=lambda s: int(s.get("t_unix_ns", 0)),
            default=None,
        )
        if latest is None:
            return max(0.0, now - self.t0)
        return max(0.0, float(latest["elapsed_s"]) + now - int(latest["t_unix_ns"]) / 1e9)

    def stage(self) -> str | None:
        """The stage of the newest sample (processes share one stage clock)."""
        latest = sorted(
            (int(s.get("t_unix_ns", 0)), str(s["stage"])) for s in self.samples.values() if s.get("stage")
        )
        return latest[-1][1] if latest else None


def _ms(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _clock(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _errors(errors: dict[str, int]) -> str:
    n = sum(errors.values())
    return f"{n} (" + ", ".join(f"{k} {v}" for k, v in errors.items()) + ")" if n else "0"


def _stage_text(stage: str | None, stages: Sequence[str]) -> str:
    if stage is None:
        return f"stage -/{len(stages)} -"
    i = stages.index(stage) + 1 if stage in stages else 0
    return f"stage {i or '?'}/{len(stages)} {stage}"


def _figures_text(f: Figures) -> str:
    return (
        f"{f.requests} req, {f.requests_per_s:.2f} ok/s, {f.tokens_per_s:.1f} tok/s, "
        f"TTFT p50 {_ms(f.ttft_p50_ms)} p95 {_ms(f.ttft_p95_ms)} ms, TPOT p50 {_ms(f.tpot_p50_ms, 2)} ms, "
        f"errors {_errors(f.errors)}"
    )


def format_line(
    lo: float,
    hi: float,
    elapsed_s: float,
    total_s: float,
    stage: str | None,
    stages: Sequence[str],
    users: int | None,
    figures: dict[tuple[str, str], Figures],
    labels: dict[str, str],
) -> list[str]:
    """One plain progress line over all hosts and models, then one indented line per (host, model)
    when there are several. The window `[lo, hi)` is in seconds since `t0` (when `harness run`
    started Locust); `elapsed_s` is on the load generators' stage clock, which starts once Locust
    has (a second or two later)."""
    f = figures[ALL]
    head = (
        f"progress {_clock(elapsed_s)}/{_clock(total_s)} {_stage_text(stage, stages)}, "
        f"users {'-' if users is None else users}, in flight {'-' if f.inflight is None else f.inflight}"
    )
    lines = [f"{head} | window {lo:.2f}-{hi:.2f} s: {_figures_text(f)}"]
    groups = sorted((k for k in figures if k != ALL), key=lambda k: (labels.get(k[0], k[0]), k[1]))
    if len(groups) > 1:
        for k in groups:
            g = figures[k]
            lines.append(f"progress   {k[1]} @ {labels.get(k[0], k[0])}: {_figures_text(g)}")
    return lines


def _table(
    state: ProgressState,
    lo: float,
    hi: float,
    elapsed_s: float,
    behind_s: float,
    total_s: float,
    stages: Sequence[str],
    labels: dict[str, str],
) -> Any:
    from rich.console import JustifyMethod
    from rich.table import Table

    figures = state.window(lo, hi)
    users = state.users()
    title = (
        f"elapsed {_clock(elapsed_s)} / {_clock(total_s)}  ·  {_stage_text(state.stage(), stages)}  ·  "
        f"users {'-' if users is None else users}  ·  last {hi - lo:.0f} s, to {behind_s:.1f} s ago"
    )
    table = Table(title=title, title_justify="left", expand=False)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("model @ host", "left"),
        ("in flight", "right"),
        ("req/s ok", "right"),
        ("out tok/s", "right"),
        ("TTFT p50 ms", "right"),
        ("TTFT p95 ms", "right"),
        ("TPOT p50 ms", "right"),
        ("errors", "left"),
    )
    for name, justify in columns:
        table.add_column(name, justify=justify)
    keys = sorted((k for k in figures if k != ALL), key=lambda k: (labels.get(k[0], k[0]), k[1]))
    rows = [(f"{k[1]} @ {labels.get(k[0], k[0])}", k) for k in keys]
    if len(keys) != 1:
        rows.append(("all hosts and models", ALL))
    for name, key in rows:
        f = figures[key]
        n = f.inflight
        table.add_row(
            name,
            "-" if n is None else str(n),
            f"{f.requests_per_s:.2f}",
            f"{f.tokens_per_s:.1f}",
            _ms(f.ttft_p50_ms),
            _ms(f.ttft_p95_ms),
            _ms(f.tpot_p50_ms, 2),
            _errors(f.errors),
        )
    return table


class Progress:
    """Shows a run's progress from its run folder while Locust runs (a thread of the orchestrator).

    `mode`: "table" (a live `rich` table on the terminal `stream`, refreshed every second, over the
    last `interval_s` seconds), "lines" (one plain line per `interval_s` window, once its records
    are in), or "off"."""

    def __init__(
        self,
        records: Path,
        client_metrics: Path,
        *,
        stages: Sequence[str],
        total_s: float,
        labels: dict[str, str],
        interval_s: float,
        lag_s: float,
        mode: str,
        stream: IO[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mode = mode
        self.stream = stream
        # In 1/100 s, so the printed window bounds (2 decimals) are exact.
        self.interval_s = max(0.01, round(interval_s, 2))
        self.lag_s = lag_s
        self.stages = list(stages)
        self.total_s = total_s
        self.labels = labels
        self.clock = clock
        # Warm-up records are already in records.jsonl: the load's records come after them.
        self.records = JsonlTail(records, from_end=True)
        self.samples = JsonlTail(client_metrics, from_end=True)
        # Records are kept only as long as a window may still need them (a worker's batch is late).
        self.state = ProgressState(clock(), keep_s=self.interval_s + lag_s + 30.0)
        self.printed = 0
        """Windows printed (lines mode)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")
        self._live: Any = None
        self.cpu_s = 0.0
        """CPU time the display took (its thread and the last update): what it costs the machine."""

    def start(self) -> None:
        """Call when the load starts: windows are counted from now."""
        if self.mode == "off":
            return
        self.state.t0 = self.clock()
        if self.mode == "lines":
            # The start of the windows on the wall clock, so that a line can be checked against the
            # records (by their end time) of the same window.
            self.stream.write(
                f"harness: progress every {self.interval_s:g} s, by request end, each window shown "
                f"{self.lag_s:g} s after it ends; windows from t0_unix {self.state.t0:.3f}\n"
            )
            self.stream.flush()
        if self.mode == "table":
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream)
            # Redrawn by `_step` once a second, not by a refresh thread of rich's own.
            self._live = Live(console=console, auto_refresh=False, transient=False)
            self._live.start()
        self._thread.start()

    def _read(self) -> None:
        for obj in self.samples.read():
            self.state.add_sample(obj)
        for obj in self.records.read():
            self.state.add_record(obj)

    def _loop(self) -> None:
        cpu0 = time.thread_time()
        try:
            while not self._stop.wait(self._wait_s()):
                self._step(final=False)
        except Exception as exc:  # progress must never end a run
            self.stream.write(f"harness: progress display failed: {exc}\n")
        finally:
            self.cpu_s += time.thread_time() - cpu0

    def _wait_s(self) -> float:
        """Sleep until there is something to show: a second for the table, the next window's due
        time for lines (the files are read once per window, not polled)."""
        if self.mode == "table":
            return 1.0
        due = (self.printed + 1) * self.interval_s + self.lag_s
        return max(0.05, due - (self.clock() - self.state.t0))

    def _step(self, *, final: bool) -> None:
        self._read()
        now = self.clock()
        elapsed = now - self.state.t0
        shown = self.state.elapsed(now)
        if self.mode == "table":
            hi = elapsed if final else max(0.0, elapsed - self.lag_s)
            lo = max(0.0, hi - self.interval_s)
            table = _table(self.state, lo, hi, shown, elapsed - hi, self.total_s, self.stages, self.labels)
            self._live.update(table, refresh=True)
            return
        # Lines: every window whose end is `lag_s` behind now (at the end: every window begun).
        while True:
            lo = self.printed * self.interval_s
            hi = lo + self.interval_s
            if final:
                if lo >= elapsed:
                    return
                # Up to the next 1/100 s, so the printed bounds are the window's own.
                hi = min(hi, math.ceil(elapsed * 100) / 100)
            elif hi + self.lag_s > elapsed:
                return
            self.state.shown_to_s = hi
            figures = self.state.window(lo, hi)
            for line in format_line(
                lo,
                hi,
                shown,
                self.total_s,
                self.state.stage(),
                self.stages,
                self.state.users(),
                figures,
                self.labels,
            ):
                self.stream.write(f"harness: {line}\n")
            self.stream.flush()
            self.printed += 1

    def stop(self) -> None:
        """After Locust ended: every record is in, so the windows not yet shown are shown complete."""
        if self.mode == "off":
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._read()
        for sample in self.state.samples.values():
            # Locust has exited: nothing is in flight any more (the last samples were taken before).
            sample["inflight"], sample["inflight_by"] = 0, []
        cpu0 = time.thread_time()
        try:
            self._step(final=True)
        finally:
            if self._live is not None:
                self._live.stop()
            self.cpu_s += time.thread_time() - cpu0
        if self.state.late:
            self.stream.write(
                f"harness: progress: {self.state.late} record(s) reached the run folder after their "
                "window was shown (those windows showed fewer)\n"
            )
