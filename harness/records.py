"""Per-request records: the one data type every later stage reads.

A `Record` is one line of `records.jsonl`, and this class is the one place its fields are defined
(meanings and formulas: docs/metrics.md). Durations are measured with one
monotonic clock (`time.perf_counter_ns`) by the client and converted to milliseconds only here,
at the edge; wall-clock fields (`*_unix_ns`) only place requests in time across workers.

Where records are written (the run folder's `records.jsonl`, worker spools) is `harness.rundir`'s.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from harness.client.chat import ChatResult
from harness.client.policy import DEFAULT_CONNECTION_POLICY
from harness.request_metrics import dispatch_delay_ms, e2e_ms, event_offsets_us, tpot_ms, ttfb_ms, ttft_ms

__all__ = [
    "ERROR_CATEGORIES",
    "REQUIRED_KEYS",
    "Record",
    "read_records",
    "record_from_result",
    "worker_id",
]

#: Error categories of the `error` field, in the order a request can meet them.
ERROR_CATEGORIES = (
    "connect",
    "timeout",
    "http_4xx",
    "http_429",
    "http_5xx",
    "stream_cut",
    "bad_event",
    "stall",
    "stopped",
)


def worker_id() -> str:
    """`hostname:pid` of this process, as records name their sender."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class Record:
    """One request that was sent, successful or not. Field meanings: docs/metrics.md."""

    run_id: str
    worker: str
    host: str
    model: str
    stage: str
    prompt_id: str
    warmup: bool
    ok: bool
    error: str | None
    error_detail: str | None
    http_status: int | None
    sched_unix_ns: int
    sent_unix_ns: int
    dispatch_delay_ms: float
    ttfb_ms: float | None
    ttft_ms: float | None
    e2e_ms: float | None
    tpot_ms: float | None
    event_offsets_us: list[int]
    input_tokens: int | None
    output_tokens: int | None
    tokens_source: str
    finish_reason: str | None
    users: int
    # --- beyond the contract's required keys ---
    seq: int = 0
    """Per-worker sequence number: (worker, seq) identifies a record across spools and the master."""
    stream: bool = True
    max_tokens: int | None = None
    connection: str = DEFAULT_CONNECTION_POLICY
    """Connection policy: one of `harness.client.policy.CONNECTION_POLICIES`."""
    conn_reused: bool = False
    """True when the request went over a connection that had carried an earlier request."""
    connect_ms: float | None = None
    """Time to open the TCP connection, when this request opened one."""
    reads: int = 0
    """Socket reads that returned response bytes."""
    content_reads: int = 0
    """Socket reads that carried at least one content event (tokens per read = events / this)."""
    content_events: int = 0
    usage_output_tokens: int | None = None
    text: str | None = None
    """The answer's text, only when the scenario asks to keep it (quality scoring)."""
    session_id: str | None = None
    """The conversation this request belongs to (multi-turn workloads); None for single requests."""
    turn: int | None = None
    """1-based turn within `session_id`: the request carries turns 1..turn-1 and their replies."""
    requested_input_tokens: int | None = None
    """Prompt length the workload asked for (synthetic lengths), in the model's tokens; None: not set."""
    requested_output_tokens: int | None = None
    """Output length the workload asked for (its `max_tokens`); None: no workload length."""
    shared_prefix_tokens: int = 0
    """Tokens of the shared system prompt this request starts with (prefix-cache tests); 0: none."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        # orjson serialises dataclasses natively: ~20x faster than going through asdict(), which
        # copies the token list element by element (it runs on the load generator's event loop).
        return orjson.dumps(self)

    def to_dict(self) -> dict[str, Any]:
        """A shallow dict of the fields (lists shared, not copied)."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}


_FIELD_NAMES = tuple(f.name for f in fields(Record))
#: The keys every line of records.jsonl has (the run folder's contract): the fields before `seq`.
REQUIRED_KEYS: tuple[str, ...] = _FIELD_NAMES[: _FIELD_NAMES.index("seq")]


def read_records(paths: Path | Iterable[Path]) -> tuple[list[dict[str, Any]], int]:
    """Read records from one or more JSONL files; returns (records, broken_lines).

    A line that does not parse (a file cut mid-line by a crash) is skipped and counted, never fatal.
    """
    if isinstance(paths, Path):
        paths = [paths]
    out: list[dict[str, Any]] = []
    broken = 0
    for p in paths:
        for obj in _iter_lines(p):
            if obj is None:
                broken += 1
            else:
                out.append(obj)
    return out, broken


def _iter_lines(path: Path) -> Iterator[dict[str, Any] | None]:
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield None
                continue
            yield obj if isinstance(obj, dict) else None


def record_from_result(
    res: ChatResult,
    *,
    run_id: str,
    worker: str,
    host: str,
    model: str,
    stage: str,
    prompt_id: str,
    warmup: bool,
    sched_unix_ns: int | None,
    users: int,
    seq: int,
    stream: bool,
    max_tokens: int | None,
    connection: str,
    session_id: str | None = None,
    turn: int | None = None,
    requested_input_tokens: int | None = None,
    requested_output_tokens: int | None = None,
    shared_prefix_tokens: int = 0,
) -> Record:
    """Turn the client's nanosecond stamps into a record (milliseconds rounded to the microsecond).

    Every figure is a metric of `harness.request_metrics` (formulas: docs/metrics.md); a result with
    no send stamp (never sent) has no durations.
    """
    sent = res.sent_ns

    def ms(value: float | None) -> float | None:
        return None if value is None or not sent else round(value, 3)

    out_tokens = res.output_tokens
    tpot = tpot_ms(res.first_token_ns, res.last_token_ns, out_tokens)
    sent_unix = res.sent_unix_ns or time.time_ns()
    sched = sched_unix_ns if sched_unix_ns is not None else sent_unix
    return Record(
        run_id=run_id,
        worker=worker,
        host=host,
        model=model,
        stage=stage,
        prompt_id=prompt_id,
        warmup=warmup,
        ok=res.ok,
        error=res.error,
        error_detail=res.error_detail,
        http_status=res.http_status,
        sched_unix_ns=sched,
        sent_unix_ns=sent_unix,
        dispatch_delay_ms=round(dispatch_delay_ms(sched, sent_unix), 3),
        ttfb_ms=ms(ttfb_ms(sent, res.first_byte_ns)),
        ttft_ms=ms(ttft_ms(sent, res.first_token_ns)),
        e2e_ms=ms(e2e_ms(sent, res.end_ns)),
        tpot_ms=None if tpot is None else round(tpot, 4),
        event_offsets_us=event_offsets_us(sent, res.token_ns),
        input_tokens=res.input_tokens,
        output_tokens=out_tokens,
        tokens_source=res.tokens_source,
        finish_reason=res.finish_reason,
        users=users,
        seq=seq,
        stream=stream,
        max_tokens=max_tokens,
        connection=connection,
        conn_reused=res.conn_reused,
        connect_ms=None if res.connect_ns is None else round(res.connect_ns / 1e6, 3),
        reads=res.reads,
        content_reads=res.content_reads,
        content_events=res.content_events,
        usage_output_tokens=res.usage_output_tokens,
        text=res.text,
        session_id=session_id,
        turn=turn,
        requested_input_tokens=requested_input_tokens,
        requested_output_tokens=requested_output_tokens,
        shared_prefix_tokens=shared_prefix_tokens,
    )
