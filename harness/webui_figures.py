"""Live LLM figures for the web UI, from raw records: what the LLM tab and `/llm` show.

Owns the arithmetic only (no Locust, no Flask, no gevent), so it is tested with hand-made records.
`harness.locust.webui` feeds it every measured record (through `harness.locust.users.PROCESS.observers`)
and asks it for a snapshot when the browser polls.

Per (host, model), and over all of them:
- **since start**: every measured record since the test started (or stats were reset). TTFT and
  TPOT percentiles are exact, over the successful requests' values (linear interpolation between
  closest ranks, numpy's default, as `harness.metrics.dist` and the report); output tokens/s is
  Σ output tokens of successful requests / (last end − first send), the report's formula.
- **now**: the same figures over the records that *ended* in the last `window_s` seconds; tokens/s
  divides by the window (or by the time since start, while that is shorter). On a master, whose
  workers send records every few seconds, the window ends `lag_s` before now so it is complete.
- **series**: `bin_s`-second bins (by end time, from the start), for the live charts: per bin the
  requests that ended, the errors among them, output tokens/s (Σ output tokens of its successful
  requests / `bin_s`) and TTFT p50/p95 (exact, over its successful requests); only bins that are
  over (and, on a master, reported) are shown.

Never Locust's histograms: those round response times and cannot be merged exactly.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ALL",
    "SERIES_KEYS",
    "LiveFigures",
    "Span",
    "percentile",
    "table_rows",
    "table_structure",
]

#: Group key of the row over every host and model.
ALL = ("", "")

#: The per-bin values of a group's `series` (besides `t_s`, each bin's end in s since the start).
SERIES_KEYS = ("requests", "errors", "tokens_per_s", "ttft_p50_ms", "ttft_p95_ms")


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile of ascending values: linear interpolation between closest ranks
    (numpy's default method, the one `harness.metrics.dist` and the report use); None if empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    h = (n - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (h - lo)


def span_of(recs: Iterable[Any], seconds: float) -> Span:
    """The figures of a span of records (anything with `ok`, `tokens`, `ttft_ms`, `tpot_ms`,
    `error`): counts, output tokens and errors by category over all, TTFT p50/p95 and TPOT p50 over
    the successful ones. Shared by the LLM tab and `harness run`'s console progress
    (`harness.progress`), so both show the same figures for the same records."""
    span = Span(seconds=seconds)
    ttft: list[float] = []
    tpot: list[float] = []
    errors: Counter[str] = Counter()
    for r in recs:
        span.requests += 1
        if r.ok:
            span.ok += 1
            span.output_tokens += r.tokens
            if r.ttft_ms is not None:
                ttft.append(r.ttft_ms)
            if r.tpot_ms is not None:
                tpot.append(r.tpot_ms)
        else:
            errors[r.error or "unknown"] += 1
    ttft.sort()
    tpot.sort()
    span.errors = dict(sorted(errors.items()))
    span.ttft_p50_ms = percentile(ttft, 50)
    span.ttft_p95_ms = percentile(ttft, 95)
    span.tpot_p50_ms = percentile(tpot, 50)
    return span


@dataclass
class Span:
    """Figures over one span of records (a window, or since start) of one group."""

    requests: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    tpot_p50_ms: float | None = None
    output_tokens: int = 0
    tokens_per_s: float | None = None
    seconds: float | None = None
    """The time `tokens_per_s` divides by."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": dict(self.errors),
            "ttft_p50_ms": self.ttft_p50_ms,
            "ttft_p95_ms": self.ttft_p95_ms,
            "tpot_p50_ms": self.tpot_p50_ms,
            "output_tokens": self.output_tokens,
            "tokens_per_s": self.tokens_per_s,
            "seconds": self.seconds,
        }


@dataclass(slots=True)
class _Rec:
    end_s: float
    ok: bool
    ttft_ms: float | None
    tpot_ms: float | None
    tokens: int
    error: str | None


class _SortedValues:
    """Exact order statistics of a growing set of values, cheap at every size: sorted blocks of at
    most 2·BLOCK values. Adding is a bisect and an insert into one block; the k-th value is found by
    walking the block sizes. (Re-sorting a list of every TTFT at each poll would stall the event
    loop that also times the requests, by tens of ms an hour into a test.)"""

    BLOCK = 512

    def __init__(self) -> None:
        self._blocks: list[list[float]] = []
        self._maxes: list[float] = []
        self.n = 0

    def add(self, v: float) -> None:
        self.n += 1
        if not self._blocks:
            self._blocks.append([v])
            self._maxes.append(v)
            return
        i = min(bisect.bisect_left(self._maxes, v), len(self._blocks) - 1)
        block = self._blocks[i]
        bisect.insort(block, v)
        self._maxes[i] = block[-1]
        if len(block) > 2 * self.BLOCK:
            half = len(block) // 2
            self._blocks[i : i + 1] = [block[:half], block[half:]]
            self._maxes[i : i + 1] = [block[half - 1], block[-1]]

    def at(self, rank: int) -> float:
        """The value at this 0-based rank in ascending order."""
        for block in self._blocks:
            if rank < len(block):
                return block[rank]
            rank -= len(block)
        raise IndexError(rank)

    def percentile(self, q: float) -> float | None:
        """As `percentile` of the sorted values."""
        if self.n == 0:
            return None
        h = (self.n - 1) * q / 100
        lo = math.floor(h)
        a = self.at(lo)
        b = self.at(min(lo + 1, self.n - 1))
        return a + (b - a) * (h - lo)

    def values(self) -> list[float]:
        return [v for block in self._blocks for v in block]


@dataclass
class _Bin:
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)

    def values(self, bin_s: float) -> tuple[float | None, ...]:
        """This bin's values in `SERIES_KEYS` order. The group keeps them once the bin is over (again
        only when a late record lands in it), so a long test does not sort every bin at every poll
        (the event loop that serves the UI is the one that times the requests)."""
        ttft = sorted(self.ttft)
        return (
            self.requests,
            self.errors,
            self.tokens / bin_s,
            percentile(ttft, 50),
            percentile(ttft, 95),
        )


#: The values of a bin no record ended in.
_EMPTY_BIN = (0, 0, 0.0, None, None)


class _Group:
    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        """How far behind the newest end a record stays in `recent` (the window, the lag and a margin
        for a worker's late batch)."""
        self.requests = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.ttft = _SortedValues()
        self.tpot = _SortedValues()
        self.tokens = 0
        self.first_sent_s = math.inf
        self.last_end_s = -math.inf
        self.recent: deque[_Rec] = deque()
        self.bins: dict[int, _Bin] = {}
        self._t: list[float | None] = []
        self._columns: dict[str, list[float | None]] = {k: [] for k in SERIES_KEYS}
        """`t_s` and the values of the complete bins, kept (copied per poll, never rebuilt: the
        event loop that serves the UI times the requests); `_dirty` bins got records since."""
        self._dirty: set[int] = set()

    def add(self, rec: _Rec, sent_s: float, bin_index: int) -> None:
        self.requests += 1
        self.first_sent_s = min(self.first_sent_s, sent_s)
        self.last_end_s = max(self.last_end_s, rec.end_s)
        if rec.ok:
            self.ok += 1
            self.tokens += rec.tokens
            if rec.ttft_ms is not None:
                self.ttft.add(rec.ttft_ms)
            if rec.tpot_ms is not None:
                self.tpot.add(rec.tpot_ms)
        else:
            self.errors[rec.error or "unknown"] += 1
        self.recent.append(rec)
        # Records arrive about in end order (a worker's batch may be a few seconds late), so the
        # deque is trimmed from the left with a margin and filtered exactly when read.
        while self.recent and self.recent[0].end_s < self.last_end_s - self.keep_s:
            self.recent.popleft()
        b = self.bins.get(bin_index)
        if b is None:
            b = self.bins[bin_index] = _Bin()
        if 0 <= bin_index < len(self._t):
            self._dirty.add(bin_index)
        b.requests += 1
        if rec.ok:
            b.tokens += rec.tokens
            if rec.ttft_ms is not None:
                b.ttft.append(rec.ttft_ms)
        else:
            b.errors += 1

    def total(self) -> Span:
        seconds = self.last_end_s - self.first_sent_s if self.requests else None
        return Span(
            requests=self.requests,
            ok=self.ok,
            errors=dict(sorted(self.errors.items())),
            ttft_p50_ms=self.ttft.percentile(50),
            ttft_p95_ms=self.ttft.percentile(95),
            tpot_p50_ms=self.tpot.percentile(50),
            output_tokens=self.tokens,
            tokens_per_s=self.tokens / seconds if seconds and seconds > 0 else None,
            seconds=seconds,
        )

    def series(self, complete_bins: int, bin_s: float) -> dict[str, list[float | None]]:
        """`t_s` and each of `SERIES_KEYS` for every complete bin; a bin's values are computed once
        (again only when a late record lands in it)."""
        if complete_bins < len(self._t):  # the clock went back: start over
            self._t, self._dirty = [], set()
            self._columns = {k: [] for k in SERIES_KEYS}
        columns = [self._columns[k] for k in SERIES_KEYS]
        for i in sorted(self._dirty):
            for column, v in zip(columns, self.bins[i].values(bin_s), strict=True):
                column[i] = v
        self._dirty.clear()
        for i in range(len(self._t), complete_bins):
            b = self.bins.get(i)
            for column, v in zip(columns, b.values(bin_s) if b else _EMPTY_BIN, strict=True):
                column.append(v)
            self._t.append(round((i + 1) * bin_s, 3))
        return {"t_s": list(self._t)} | {k: list(c) for k, c in self._columns.items()}

    def window(self, lo: float, hi: float, seconds: float) -> Span:
        span = span_of((r for r in self.recent if lo <= r.end_s < hi), seconds)
        span.tokens_per_s = span.output_tokens / seconds if seconds > 0 else None
        return span


class LiveFigures:
    """Per (host, model) live figures from measured records; see the module docstring."""

    def __init__(
        self,
        *,
        window_s: float = 20.0,
        lag_s: float = 0.0,
        bin_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window_s = window_s
        self.lag_s = lag_s
        self.bin_s = bin_s
        self.clock = clock
        self.labels: dict[str, str] = {}
        """Host URL -> label shown (the plan's target labels)."""
        self.reset()

    def reset(self, *, reason: str = "start") -> None:
        self.t0 = self.clock()
        self.reason = reason
        self.groups: dict[tuple[str, str], _Group] = {ALL: self._group()}
        self.observed = 0

    def observe(self, record: Mapping[str, Any]) -> None:
        """Take one record (a dict with the keys of `harness.records.Record`); warm-up records are ignored."""
        if record.get("warmup"):
            return
        sent_s = int(record["sent_unix_ns"]) / 1e9
        e2e = record.get("e2e_ms")
        # The end on the wall clock, as `harness.metrics.end_unix_ns`: the send time if unknown.
        end_s = sent_s + (float(e2e) / 1000 if e2e is not None else 0.0)
        ok = bool(record.get("ok"))
        rec = _Rec(
            end_s=end_s,
            ok=ok,
            ttft_ms=_num(record.get("ttft_ms")),
            tpot_ms=_num(record.get("tpot_ms")),
            tokens=int(record.get("output_tokens") or 0),
            error=None if ok else str(record.get("error") or "unknown"),
        )
        bin_index = math.floor((end_s - self.t0) / self.bin_s)
        key = (str(record.get("host", "")), str(record.get("model", "")))
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = self._group()
        group.add(rec, sent_s, bin_index)
        self.groups[ALL].add(rec, sent_s, bin_index)
        self.observed += 1

    def _group(self) -> _Group:
        return _Group(keep_s=self.window_s + self.lag_s + 30.0)

    # --- reading
    def window_bounds(self, now: float | None = None) -> tuple[float, float, float]:
        """(lo, hi, seconds) of the "now" window: it ends `lag_s` before now and never reaches
        back before the start."""
        now = self.clock() if now is None else now
        hi = now - self.lag_s
        lo = max(hi - self.window_s, self.t0)
        return lo, hi, max(0.0, hi - lo)

    def snapshot(
        self, inflight: Mapping[tuple[str, str], int] | None = None, *, now: float | None = None
    ) -> dict[str, Any]:
        """Everything the UI shows, as plain JSON-able data. `inflight`: requests in flight per
        (host, model), with the total under `ALL`; None when unknown."""
        now = self.clock() if now is None else now
        lo, hi, seconds = self.window_bounds(now)
        complete_bins = max(0, math.floor((hi - self.t0) / self.bin_s))
        groups = []
        for key in sorted(self.groups, key=lambda k: (k == ALL, self.labels.get(k[0], k[0]), k[1])):
            g = self.groups[key]
            if key != ALL and g.requests == 0:
                continue
            host, model = key
            series = g.series(complete_bins, self.bin_s)
            groups.append(
                {
                    "host": host,
                    "label": "" if key == ALL else self.labels.get(host, host),
                    "model": model,
                    "all": key == ALL,
                    "inflight": None if inflight is None else int(inflight.get(key, 0)),
                    "now": g.window(lo, hi, seconds).as_dict(),
                    "total": g.total().as_dict(),
                    "series": series,
                }
            )
        return {
            "generated_unix": now,
            "since_unix": self.t0,
            "since_reason": self.reason,
            "window_s": self.window_s,
            "window_lo_unix": lo,
            "window_hi_unix": hi,
            "lag_s": self.lag_s,
            "bin_s": self.bin_s,
            "records": self.observed,
            "groups": groups,
        }


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


# --- the LLM tab's table -----------------------------------------------------------------------
#: Column keys are camelCase because Locust's UI camel-cases every key it receives.
_COLUMNS = (
    ("name", "model @ host"),
    ("span", "figures over"),
    ("requests", "requests"),
    ("inflight", "in flight"),
    ("ttftP50", "TTFT p50 ms"),
    ("ttftP95", "TTFT p95 ms"),
    ("tpotP50", "TPOT p50 ms"),
    ("tokensPerS", "output tok/s"),
    ("errors", "errors by category"),
)


def table_structure() -> list[dict[str, str]]:
    return [{"key": k, "title": t} for k, t in _COLUMNS]


def _r(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _errors_text(errors: Mapping[str, int]) -> str:
    n = sum(errors.values())
    return f"{n}: " + ", ".join(f"{k} {v}" for k, v in errors.items()) if n else "0"


def table_rows(snapshot: Mapping[str, Any], *, clock_format: Callable[[float], str]) -> list[dict[str, Any]]:
    """Two rows per group: "now" (the window, with in-flight requests) and "since start". The charts
    under the table are drawn in the browser from `/llm/stats.json`'s series (`assets/webui/llm.js`)."""
    lag = snapshot["lag_s"]
    now_label = f"last {snapshot['window_s']:g} s" + (f", to {lag:g} s ago" if lag else "")
    verb = "since start" if snapshot["since_reason"] == "start" else "since reset"
    since_label = f"{verb} {clock_format(snapshot['since_unix'])}"
    rows: list[dict[str, Any]] = []
    # With one host and one model the sum rows would repeat that group's rows.
    single = sum(1 for g in snapshot["groups"] if not g["all"]) == 1
    for g in snapshot["groups"]:
        if single and g["all"]:
            continue
        name = "∑ all hosts and models" if g["all"] else f"{g['model']} @ {g['label']}"
        for span_key, label in (("now", now_label), ("total", since_label)):
            s = g[span_key]
            rows.append(
                {
                    "name": name,
                    "span": label,
                    "requests": s["requests"],
                    "inflight": g["inflight"] if span_key == "now" else None,
                    "ttftP50": _r(s["ttft_p50_ms"], 1),
                    "ttftP95": _r(s["ttft_p95_ms"], 1),
                    "tpotP50": _r(s["tpot_p50_ms"], 2),
                    "tokensPerS": _r(s["tokens_per_s"], 1),
                    "errors": _errors_text(s["errors"]),
                }
            )
    return rows


def records_figures(records: Iterable[Mapping[str, Any]]) -> Span:
    """Since-start figures of a list of records, computed directly: the reference the tests hold
    `LiveFigures` to."""
    recs = [r for r in records if not r.get("warmup")]
    ok = [r for r in recs if r.get("ok")]
    ttft = sorted(float(r["ttft_ms"]) for r in ok if r.get("ttft_ms") is not None)
    tpot = sorted(float(r["tpot_ms"]) for r in ok if r.get("tpot_ms") is not None)
    tokens = sum(int(r.get("output_tokens") or 0) for r in ok)
    errors = Counter(str(r.get("error") or "unknown") for r in recs if not r.get("ok"))
    seconds = None
    if recs:
        first = min(int(r["sent_unix_ns"]) for r in recs) / 1e9
        last = max(int(r["sent_unix_ns"]) / 1e9 + float(r.get("e2e_ms") or 0) / 1000 for r in recs)
        seconds = last - first
    return Span(
        requests=len(recs),
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p95_ms=percentile(ttft, 95),
        tpot_p50_ms=percentile(tpot, 50),
        output_tokens=tokens,
        tokens_per_s=tokens / seconds if seconds else None,
        seconds=seconds,
    )
