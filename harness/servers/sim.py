"""The simulated OpenAI-compatible host: `harness serve sim`.

Owns a host whose timing is known exactly, shaped like Foundry Local's current web service, so the
rest of the harness can be tested and calibrated against it: `POST /v1/chat/completions` (streaming
and not), `GET /v1/models`, `GET /status`, `GET /models/loaded`, and `GET /sim/stats` (its own
counters). Faults are injected on demand, each with its own probability per request.

Wire format of a streamed reply (one HTTP chunk per event, TCP_NODELAY on unless `--nagle`):
  headers and `delta: {"role":"assistant","content":""}` at once, then one `delta.content` event per
  token, the first `ttft` after the request was admitted and the next ones every `itl` (scheduled
  at absolute times, so errors never accumulate), then `delta: {}` with `finish_reason`, then the
  usage chunk (`choices: []`) only when `stream_options.include_usage` is true, then `data: [DONE]`.
Jitter (`--jitter-ms J`) adds a uniform draw in [-J, +J] to every gap (TTFT and each ITL, never
below 0). With `--max-concurrency N` at most N replies generate at once; the others wait FIFO
after their role chunk went out, so queueing shows up as TTFT, as on a single-stream host;
`/sim/stats` counts it: `generating` and `queued` now, `max_generating` and `max_queued` at most,
`queued_total` replies that had to wait for a slot.

Faults (probabilities drawn independently, in a fixed order, from one generator seeded by
`--seed`; a response carrying any shows them in `x-sim-fault: kind[,kind...]` where headers are
sent, and `/sim/stats` counts them). Faults are drawn only for valid chat requests, except
`refuse`, drawn once per accepted connection. At most one of 500, 429, 404, empty-body applies
(first drawn in that order); the others combine:
  500           JSON error, type `server_error`
  429           JSON error and `Retry-After: --retry-after-s` (no such header with `--no-retry-after`)
  404           JSON "model not found", as for an unknown model
  empty-body    200, `Content-Length: 0`
  refuse        the connection is reset (SO_LINGER 0) before anything is read
  drop          FIN after k tokens, 1 <= k <= max(1, n-1), without finish chunk or chunked terminator
                (non-streaming: headers and half the body, then FIN)
  bad-event     one `data: {...` event that is not JSON, before token n//2; all n tokens still follow
                (non-streaming: the body is cut in half, with a matching Content-Length)
  stall         `--stall-s` of silence after the first token, then go on or (`--stall-then close`) FIN
  slow-headers  the whole response, headers included, starts `--slow-headers-ms` late
  no-usage      no usage chunk (no `usage` key when not streaming)
  split         every write cut into pieces 1 ms apart, cuts inside chunk-size lines, CRLFs and `\\n\\n`
  content-type  `Content-Type: application/json` over the normal SSE body (also for `stream: false`)
On a clean stop (SIGTERM/SIGINT) `serve sim` writes `sim: final stats {...}` (the `/sim/stats`
counters) as its last line on stderr.
`--down-after-s S` closes the listening socket S seconds after start, for `--down-for-s`, so new
connects are refused in that window (open connections go on).

Speed: pure asyncio protocols with a small hand-written HTTP/1.1 parser. Every timed action sits on
one heap woken by a Linux timerfd, because epoll (and libuv) round timeouts up to whole
milliseconds; everything due by the time it wakes is written in one pass, and scheduling a token
allocates nothing the garbage collector tracks. Measured here (benchmarks/bench_sim.py --rt, one
core each for server and client): 19.8k token events/s from 200 streams at ~45% of a core with
TTFT and lateness error p99 ~0.4 ms; 49k/s from 500 streams at ~75%; ~105k/s flat out. uvloop was
measured and gained nothing, so it is not used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import heapq
import os
import random
import re
import socket
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from harness.errors import InputError
from harness.servers.ready import install_stop_handlers, print_ready

__all__ = ["DEFAULT_MODELS", "FAULT_KINDS", "SimConfig", "SimServer", "add_arguments", "serve"]

DEFAULT_MODELS = ("qwen2.5-0.5b-instruct-generic-cpu:4", "phi-4-mini-instruct-generic-cpu:1")
_FAULT_HELP = {
    "refuse": "reset the connection (SO_LINGER 0) before reading it; drawn per connection",
    "500": "JSON error 500",
    "429": "JSON error 429 with Retry-After",
    "404": "JSON 404 model not found",
    "empty-body": "200 with an empty body",
    "slow-headers": "start the whole response --slow-headers-ms late",
    "drop": "close mid-stream after some tokens, without finish chunk or chunked terminator",
    "bad-event": "one event that is not JSON mid-stream, then the rest",
    "stall": "silence for --stall-s after the first token",
    "no-usage": "no usage chunk even when asked",
    "split": "every write in pieces 1 ms apart, cut inside chunk-size lines, CRLFs and blank lines",
    "content-type": "Content-Type application/json over an SSE body",
}
#: The fault kinds, in the order they are drawn; `SimConfig.fault_<kind with _>` holds each probability.
FAULT_KINDS = tuple(_FAULT_HELP)
_WHOLE_REPLY_FAULTS = ("500", "429", "404", "empty-body")

_WORD_RE = re.compile(r"\s*\S+")  # a token: a word with the white space before it
# Short printable words: their JSON form needs no escaping, and 32 of them keep text varied.
_VOCAB = tuple(
    _WORD_RE.findall(
        " lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore"
        " et magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea"
        " commodo"
    )
)
_CRLF_PIECES = re.compile(rb".*?\r\n|.+", re.S)  # a write cut after each CRLF
_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024
# Items due this close to now are handled in the pass already running instead of costing one more
# wake-up (a timerfd wake costs ~10 µs of loop overhead; sending 20 µs early is far below jitter).
_EARLY_NS = 20_000
_SPLIT_GAP_NS = 1_000_000
_SLOT_BITS = 24
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


@dataclass
class SimConfig:
    """Every option of the simulated host; `harness serve sim` builds one from its flags."""

    models: tuple[str, ...] = DEFAULT_MODELS
    ttft_ms: float = 100.0
    itl_ms: float = 10.0
    jitter_ms: float = 0.0
    #: model id -> (ttft_ms, itl_ms), overriding the global timing for that model
    model_timing: dict[str, tuple[float, float]] = field(default_factory=dict)
    context: int = 4096
    default_max_tokens: int = 2048
    max_concurrency: int = 0
    seed: int = 0
    answer: str | None = None
    #: substring of the last user message -> answer text; first match (in order) wins over `answer`
    answers: dict[str, str] = field(default_factory=dict)
    foundry_quirks: bool = False
    #: leave Nagle's algorithm on (no TCP_NODELAY), as Foundry Local's web service does
    nagle: bool = False
    fault_refuse: float = 0.0
    fault_500: float = 0.0
    fault_429: float = 0.0
    fault_404: float = 0.0
    fault_empty_body: float = 0.0
    fault_slow_headers: float = 0.0
    fault_drop: float = 0.0
    fault_bad_event: float = 0.0
    fault_stall: float = 0.0
    fault_no_usage: float = 0.0
    fault_split: float = 0.0
    fault_content_type: float = 0.0
    retry_after_s: float = 1.0
    stall_s: float = 30.0
    stall_then: str = "continue"
    slow_headers_ms: float = 2000.0
    #: send Retry-After with a 429 (off: the client must fall back to its own back-off)
    retry_after_header: bool = True
    down_after_s: float | None = None
    down_for_s: float = 5.0

    def fault_probability(self, kind: str) -> float:
        return float(getattr(self, "fault_" + kind.replace("-", "_")))

    def validate(self) -> None:
        """Raise InputError naming the first option that makes no sense."""
        if not self.models:
            raise InputError("sim: at least one --model is needed")
        for kind in FAULT_KINDS:
            if not 0.0 <= self.fault_probability(kind) <= 1.0:
                raise InputError(f"sim: --fault-{kind} must be a probability in 0..1")
        for name in ("ttft_ms", "itl_ms", "jitter_ms", "retry_after_s", "stall_s", "slow_headers_ms"):
            if getattr(self, name) < 0:
                raise InputError(f"sim: --{name.replace('_', '-')} must be >= 0")
        for model, (ttft, itl) in self.model_timing.items():
            if model not in self.models:
                raise InputError(f"sim: --model-timing names {model!r}, which is not a served --model")
            if ttft < 0 or itl < 0:
                raise InputError(f"sim: --model-timing for {model!r} must be >= 0")
        if self.context < 1 or self.default_max_tokens < 1 or self.max_concurrency < 0:
            raise InputError("sim: --context and the default max_tokens must be >= 1, --max-concurrency >= 0")
        if self.stall_then not in ("continue", "close"):
            raise InputError("sim: --stall-then must be 'continue' or 'close'")
        if self.down_after_s is not None and (self.down_after_s < 0 or self.down_for_s < 0):
            raise InputError("sim: --down-after-s and --down-for-s must be >= 0")


# --------------------------------------------------------------------------------------------
# Timers


class _TimeSpec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _ITimerSpec(ctypes.Structure):
    _fields_ = (("it_interval", _TimeSpec), ("it_value", _TimeSpec))


class _TimerFd:
    """A Linux timerfd on CLOCK_MONOTONIC (the clock of `time.monotonic_ns`), armed at absolute ns."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        clock_monotonic, tfd_nonblock_cloexec, self._abstime = 1, os.O_NONBLOCK | os.O_CLOEXEC, 1
        fd = libc.timerfd_create(clock_monotonic, tfd_nonblock_cloexec)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd: int = fd
        self._settime = libc.timerfd_settime
        self._spec = _ITimerSpec()
        self._value = self._spec.it_value
        self._ref = ctypes.byref(self._spec)

    def arm(self, due_ns: int) -> None:
        self._value.tv_sec, self._value.tv_nsec = divmod(due_ns, 1_000_000_000)
        self._settime(self.fd, self._abstime, self._ref, None)

    def close(self) -> None:
        os.close(self.fd)


class _Timers:
    """Every timed action of the server on one heap.

    Heap entries are plain ints, `due_ns << _SLOT_BITS | slot`, with the callback kept in a slot
    table: ints are not tracked by the garbage collector, so scheduling a token allocates nothing
    that makes it run (its pauses of several ms were the largest timing error left).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[int] = []
        self._callbacks: list[Callable[[], None] | None] = []
        self._free: list[int] = []
        self._armed = 0  # due time the wake-up is set for; 0 = none
        self._firing = False
        self._handle: asyncio.TimerHandle | None = None
        self._tfd: _TimerFd | None
        try:
            self._tfd = _TimerFd()
        except (OSError, AttributeError):  # not Linux: millisecond-grained loop timers instead
            self._tfd = None
        else:
            loop.add_reader(self._tfd.fd, self._fire)

    def at(self, due_ns: int, callback: Callable[[], None]) -> None:
        if self._free:
            slot = self._free.pop()
            self._callbacks[slot] = callback
        else:
            slot = len(self._callbacks)
            if slot > _SLOT_MASK:
                raise RuntimeError("sim: too many pending timers")
            self._callbacks.append(callback)
        heapq.heappush(self._heap, due_ns << _SLOT_BITS | slot)
        if not self._firing and (self._armed == 0 or due_ns < self._armed):
            self._arm(due_ns)

    def _arm(self, due_ns: int) -> None:
        self._armed = due_ns
        if self._tfd is not None:
            self._tfd.arm(due_ns)
        else:
            if self._handle is not None:
                self._handle.cancel()
            delay = max(0.0, (due_ns - time.monotonic_ns()) / 1e9)
            self._handle = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._armed = 0
        self._firing = True
        heap, callbacks, free = self._heap, self._callbacks, self._free
        pop = heapq.heappop
        clock = time.monotonic_ns
        # Everything due within _EARLY_NS of now runs in this pass: keys below `bound`.
        bound = (clock() + _EARLY_NS + 1) << _SLOT_BITS
        try:
            while heap:
                if heap[0] >= bound:
                    bound = (clock() + _EARLY_NS + 1) << _SLOT_BITS
                    if heap[0] >= bound:
                        break
                slot = pop(heap) & _SLOT_MASK
                callback = callbacks[slot]
                callbacks[slot] = None
                free.append(slot)
                callback()  # type: ignore[misc]  # a taken slot always holds one
        finally:
            self._firing = False
            if heap:
                self._arm(heap[0] >> _SLOT_BITS)  # re-arming also clears the timerfd's readiness
            elif self._tfd is not None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._tfd.fd, 8)

    def close(self) -> None:
        self._heap.clear()
        self._callbacks.clear()
        self._free.clear()
        if self._handle is not None:
            self._handle.cancel()
        if self._tfd is not None:
            self._loop.remove_reader(self._tfd.fd)
            self._tfd.close()
            self._tfd = None


# --------------------------------------------------------------------------------------------
# Helpers


def _nothing() -> None:
    pass


def _error_body(message: str, kind: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


def _text_of(content: Any) -> str:
    """Text of a message's content: a string, or a list of parts with `text`."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _HttpError(Exception):
    """Answered as a JSON error body, or as plain text where Foundry does so."""

    def __init__(self, status: int, message: str, *, plain: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.plain = plain

    def body(self) -> tuple[bytes, bytes]:
        if self.plain:
            return str(self).encode(), b"text/plain"
        return _error_body(str(self)), b"application/json"


# --------------------------------------------------------------------------------------------
# The server's state, shared by all connections (one event loop, so no locks)


class _Sim:
    def __init__(self, config: SimConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.timers = _Timers(loop)
        # Fault draws get a generator of their own, so they depend only on the order of requests.
        self.rng = random.Random(config.seed)
        self.aux_rng = random.Random(config.seed + 1)  # jitter, drop points, split points
        self.models = set(config.models)
        ms = 1_000_000
        self.timing = {m: (int(config.ttft_ms * ms), int(config.itl_ms * ms)) for m in config.models}
        for m, (ttft, itl) in config.model_timing.items():
            self.timing[m] = (int(ttft * ms), int(itl * ms))
        self.jitter_ns = int(config.jitter_ms * ms)
        self.probabilities = [(k, config.fault_probability(k)) for k in FAULT_KINDS[1:]]
        self.probabilities = [(k, p) for k, p in self.probabilities if p > 0]
        self.answer_tokens = _WORD_RE.findall(config.answer) if config.answer is not None else None
        self.answers = [(key, _WORD_RE.findall(text)) for key, text in config.answers.items()]
        self.token_json = {w: orjson.dumps(w) for w in _VOCAB}
        self.id_prefix = f"chatcmpl-{random.getrandbits(32):08x}"
        self.server: asyncio.Server | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.conns: set[_Conn] = set()
        self.waiting: deque[_Reply] = deque()
        self.active = 0
        self.stats: dict[str, Any] = {
            "requests": 0,
            "chat_requests": 0,
            "tokens": 0,
            "faults": {},
            "in_flight": 0,
            "max_in_flight": 0,
            "generating": 0,
            "max_generating": 0,
            "queued": 0,
            "queued_total": 0,
            "max_queued": 0,
            "connections": 0,
            "open_connections": 0,
        }

    async def listen(self, host: str, port: int) -> None:
        self.server = await self.loop.create_server(
            lambda: _Conn(self), host, port, reuse_address=True, backlog=4096
        )
        self.host, self.port = host, self.server.sockets[0].getsockname()[1]
        if self.config.down_after_s is not None:
            self.loop.call_later(self.config.down_after_s, self._go_down)

    def _go_down(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            self.count_fault("down")
            self.loop.call_later(self.config.down_for_s, lambda: self.loop.create_task(self._come_up()))

    async def _come_up(self) -> None:
        self.server = await self.loop.create_server(
            lambda: _Conn(self), self.host, self.port, reuse_address=True, backlog=4096
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in list(self.conns):
            conn.abort()
        self.timers.close()

    def count_fault(self, kind: str) -> None:
        faults = self.stats["faults"]
        faults[kind] = faults.get(kind, 0) + 1

    def draw_faults(self) -> list[str]:
        rng = self.rng
        drawn = [kind for kind, p in self.probabilities if rng.random() < p]
        whole = [k for k in drawn if k in _WHOLE_REPLY_FAULTS]
        if len(whole) > 1:
            drawn = [k for k in drawn if k not in _WHOLE_REPLY_FAULTS or k == whole[0]]
        for kind in drawn:
            self.count_fault(kind)
        return drawn

    def tokens_for(self, model: str, messages: list[Any], n: int) -> tuple[list[str], str]:
        """The reply's tokens and finish reason: a canned answer, or words drawn from the request."""
        answer = self.answer_tokens
        if self.answers:
            last_user = next(
                (
                    _text_of(m.get("content"))
                    for m in reversed(messages)
                    if isinstance(m, dict) and m.get("role") == "user"
                ),
                "",
            )
            answer = next((toks for key, toks in self.answers if key in last_user), answer)
        if answer is not None:
            return answer[:n], "stop" if len(answer) <= n else "length"
        key = orjson.dumps([model, messages])
        rng = random.Random(zlib.crc32(key) ^ self.config.seed)
        return rng.choices(_VOCAB, k=n), "length"

    def json_token(self, token: str) -> bytes:
        cached = self.token_json.get(token)
        if cached is None:
            cached = self.token_json[token] = orjson.dumps(token)
        return cached

    def admit(self, reply: _Reply) -> None:
        limit = self.config.max_concurrency
        stats = self.stats
        if limit and self.active >= limit:
            self.waiting.append(reply)
            stats["queued"] = len(self.waiting)
            stats["queued_total"] += 1
            stats["max_queued"] = max(stats["max_queued"], stats["queued"])
            return
        self.active += 1
        stats["generating"] = self.active
        stats["max_generating"] = max(stats["max_generating"], self.active)
        reply.start(time.monotonic_ns())

    def release(self) -> None:
        self.active -= 1
        while self.waiting:
            reply = self.waiting.popleft()
            if reply.conn.closed:
                reply.finish()
                continue
            self.active += 1
            reply.start(time.monotonic_ns())
            break
        self.stats["generating"] = self.active
        self.stats["max_generating"] = max(self.stats["max_generating"], self.active)
        self.stats["queued"] = len(self.waiting)

    def stats_snapshot(self) -> dict[str, Any]:
        return {**self.stats, "faults": dict(self.stats["faults"])}


# --------------------------------------------------------------------------------------------
# One connection: parses requests one after the other (keep-alive), one reply at a time


class _Conn(asyncio.Protocol):
    def __init__(self, sim: _Sim) -> None:
        self.sim = sim
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.keep_alive = True
        self.continued = False
        self.split = False
        self.pending: deque[bytes | None] = deque()
        self.nagle_writes = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A socket transport (asyncio's or uvloop's), though typed as the base class.
        self.transport = tr = cast(asyncio.Transport, transport)
        sim = self.sim
        sim.stats["connections"] += 1
        sock = tr.get_extra_info("socket")
        p = sim.config.fault_refuse
        if p > 0 and sim.rng.random() < p:
            sim.count_fault("refuse")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.closed = True
            tr.abort()
            return
        # asyncio switches Nagle off on every TCP transport already; `--nagle` switches it back on.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0 if sim.config.nagle else 1)
        sim.conns.add(self)
        sim.stats["open_connections"] = len(sim.conns)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sim.conns.discard(self)
        self.sim.stats["open_connections"] = len(self.sim.conns)

    # writing

    def send(self, data: bytes) -> None:
        if self.nagle_writes and self.transport is not None and not self.split and not self.pending:
            # As Foundry's server (oatpp) writes a stream: the headers, then each chunk-size line and
            # each chunk in a write of its own. With Nagle on, every small write waits for the ACK
            # of the one before; a client that delays its ACKs then gets the stream ~40 ms late.
            for piece in _CRLF_PIECES.findall(data):
                self.transport.write(piece)
            return
        if self.split:
            self._queue_pieces(data)
        elif self.pending:  # behind pieces of a split reply still going out
            self.pending.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """Close after whatever is queued (FIN, not RST)."""
        self.closed = True
        if self.pending:
            self.pending.append(None)
        elif self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _queue_pieces(self, data: bytes) -> None:
        """Queue `data` cut inside its first line, CRLF and blank line and at one random byte."""
        cuts = {1, self.sim.aux_rng.randrange(1, len(data)) if len(data) > 1 else 1}
        for sep in (b"\n\n", b"\r\n"):
            i = data.find(sep, 1)
            if i >= 0:
                cuts.add(i + 1)
        ends = sorted(c for c in cuts if 0 < c < len(data))
        idle = not self.pending
        self.pending.extend(data[a:b] for a, b in zip([0, *ends], [*ends, len(data)], strict=True))
        if idle:
            self._drain()

    def _drain(self) -> None:
        piece = self.pending.popleft()
        transport = self.transport
        if transport is None or transport.is_closing():
            self.pending.clear()
            return
        if piece is None:
            self.pending.clear()
            transport.close()
            return
        transport.write(piece)
        if self.pending:
            self.sim.timers.at(time.monotonic_ns() + _SPLIT_GAP_NS, self._drain)

    def respond(
        self, status: int, body: bytes, ctype: bytes = b"application/json", extra: bytes = b""
    ) -> None:
        self.send(self.response(status, body, ctype, extra))

    def response(
        self, status: int, body: bytes, ctype: bytes = b"application/json", extra: bytes = b""
    ) -> bytes:
        """A complete response with a Content-Length body; `extra` is more header lines."""
        return (
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\nServer: harness-sim\r\n%b\r\n%b"
            % (
                status,
                _REASONS[status].encode(),
                ctype,
                len(body),
                b"keep-alive" if self.keep_alive else b"close",
                extra,
                body,
            )
        )

    # reading

    def next_request(self) -> None:
        """Handle every complete request in the buffer, stopping at one whose reply takes time."""
        while not self.busy and not self.closed:
            try:
                request = self._parse()
            except _HttpError as exc:
                self.keep_alive = False
                self.respond(exc.status, *exc.body())
                self.close()
                return
            if request is None:
                return
            method, path, body = request
            self.sim.stats["requests"] += 1
            self.busy = True
            try:
                self._route(method, path, body)
            except _HttpError as exc:
                self.respond(exc.status, *exc.body())
                self.reply_done()

    def reply_done(self) -> None:
        self.busy = False
        self.split = False
        if not self.keep_alive:
            self.close()
        elif self.buf:
            self.next_request()

    def _parse(self) -> tuple[str, str, bytes] | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise _HttpError(431, "request head too large")
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _HttpError(411, "chunked request bodies are not supported; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _HttpError(400, "bad Content-Length") from None
        if length < 0 or length > _MAX_BODY:
            raise _HttpError(413, "request body too large")
        total = end + 4 + length
        if len(buf) < total:
            if not self.continued and headers.get("expect", "").lower() == "100-continue":
                self.continued = True
                self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        self.continued = False
        connection = headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        return method, target.partition("?")[0], body

    def _route(self, method: str, path: str, body: bytes) -> None:
        sim = self.sim
        if method == "POST" and path == "/v1/chat/completions":
            sim.stats["chat_requests"] += 1
            _Reply(self, body).begin()
            return
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "harness-sim"} for m in sim.config.models]
            payload = orjson.dumps({"object": "list", "data": data})
        elif method == "GET" and path == "/status":
            payload = orjson.dumps(
                {
                    "endpoints": [f"http://{sim.host}:{sim.port}"],
                    "modelCachePath": "/nonexistent/harness-sim/models",
                    "pid": os.getpid(),
                }
            )
        elif method == "GET" and path == "/models/loaded":
            payload = orjson.dumps(list(sim.config.models))
        elif method == "GET" and path == "/sim/stats":
            payload = orjson.dumps(sim.stats_snapshot())
        else:
            raise _HttpError(404, f"no route for {method} {path}")
        self.respond(200, payload)
        self.reply_done()


# --------------------------------------------------------------------------------------------
# One chat completion reply


class _Reply:
    """A chat completion from request to last byte; its steps run from the timer heap."""

    __slots__ = (
        "bad_at",
        "conn",
        "created",
        "done",
        "drop_at",
        "due",
        "faults",
        "finish_reason",
        "frame",
        "head",
        "holds_slot",
        "id",
        "include_usage",
        "itl_ns",
        "k",
        "model",
        "n",
        "prompt_tokens",
        "sim",
        "step",
        "stream",
        "tail",
        "tokens",
        "ttft_ns",
        "words",
    )

    def __init__(self, conn: _Conn, body: bytes) -> None:
        """Validate the request as Foundry does (raises _HttpError) and draw its faults."""
        sim = conn.sim
        config = sim.config
        if not body:
            # Foundry answers an empty body with a plain-text 500.
            raise _HttpError(500, "empty request body", plain=True)
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _HttpError(400, "Invalid JSON in request body") from None
        if not isinstance(req, dict):
            raise _HttpError(400, "request body must be a JSON object")
        model = req.get("model")
        if not isinstance(model, str) or not model:
            raise _HttpError(400, "'model' is required")
        if model not in sim.models:
            raise _HttpError(404, f"Model not found: {model}")
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _HttpError(400, "'messages' must be a non-empty array")
        max_tokens = req.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = req.get("max_tokens")
        n = config.default_max_tokens if max_tokens is None else max_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise _HttpError(400, "'max_tokens' must be a positive integer")
        chars = sum(len(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
        self.prompt_tokens = max(1, (chars + 3) // 4)
        if n > config.context - self.prompt_tokens:
            raise _HttpError(
                400,
                f"max_tokens {n} exceeds the model's context of {config.context} tokens "
                f"less the prompt's {self.prompt_tokens} tokens",
            )
        options = req.get("stream_options")
        self.conn, self.sim, self.model = conn, sim, model
        self.stream = req.get("stream") is True
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self.words, self.finish_reason = sim.tokens_for(model, messages, n)
        self.n = len(self.words)
        self.ttft_ns, self.itl_ns = sim.timing[model]
        self.k = self.due = 0
        self.holds_slot = self.done = False
        self.step = self._step
        self.created = int(time.time())
        self.id = f"{sim.id_prefix}{sim.stats['chat_requests']:08x}"
        self.faults = sim.draw_faults()
        self.drop_at = sim.aux_rng.randint(1, max(1, self.n - 1)) if "drop" in self.faults else -1
        self.bad_at = self.n // 2 if "bad-event" in self.faults else -1

    def begin(self) -> None:
        sim = self.sim
        stats = sim.stats
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        if "slow-headers" in self.faults:
            sim.timers.at(time.monotonic_ns() + int(sim.config.slow_headers_ms * 1e6), self._respond)
        else:
            self._respond()

    def _fault_header(self) -> bytes:
        return b"x-sim-fault: %s\r\n" % ",".join(self.faults).encode() if self.faults else b""

    def _respond(self) -> None:
        """Headers (and the role chunk) go out now; generation waits for a slot."""
        conn, sim = self.conn, self.sim
        if conn.closed:
            self.finish()
            return
        conn.split = "split" in self.faults
        whole = next((k for k in self.faults if k in _WHOLE_REPLY_FAULTS), None)
        if whole is not None:
            self._respond_whole_fault(whole)
            return
        if self.stream:
            parts = (self.id.encode(), self.created, orjson.dumps(self.model))
            self.head = b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,' % parts
            self.head += b'"choices":[{"index":0,"delta":{"content":'
            self.tail = b'},"finish_reason":null}]}\n\n'
            self.frame = len(self.head) + len(self.tail)
            self.tokens = [sim.json_token(w) for w in self.words]
            ctype = b"application/json" if "content-type" in self.faults else b"text/event-stream"
            connection = b"keep-alive" if conn.keep_alive else b"close"
            copies = 2 if sim.config.foundry_quirks else 1
            head = [b"HTTP/1.1 200 OK\r\n"]
            for name, value in (
                (b"Content-Type", ctype),
                (b"Cache-Control", b"no-cache"),
                (b"Connection", connection),
            ):
                head.append(b"%s: %s\r\n" % (name, value) * copies)
            head.append(b"Transfer-Encoding: chunked\r\nServer: harness-sim\r\n%b\r\n" % self._fault_header())
            role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            if sim.config.nagle:
                conn.nagle_writes = True
                conn.send(b"".join(head))
                conn.send(_chunk(self._event(role)))
            else:
                conn.send(b"".join(head) + _chunk(self._event(role)))
        sim.admit(self)

    def _respond_whole_fault(self, kind: str) -> None:
        self.finish()
        conn, extra = self.conn, self._fault_header()
        if kind == "500":
            conn.respond(500, _error_body("simulated server error", "server_error"), extra=extra)
        elif kind == "429":
            if self.sim.config.retry_after_header:
                extra += b"Retry-After: %d\r\n" % round(self.sim.config.retry_after_s)
            conn.respond(429, _error_body("simulated rate limit", "rate_limit_error"), extra=extra)
        elif kind == "404":
            conn.respond(404, _error_body(f"Model not found: {self.model}"), extra=extra)
        else:
            conn.respond(200, b"", b"text/event-stream" if self.stream else b"application/json", extra)
        conn.reply_done()

    def _event(self, choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice] if choice is not None else [],
        }
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        p = self.prompt_tokens
        return {
            "prompt_tokens": p,
            "completion_tokens": completion_tokens,
            "total_tokens": p + completion_tokens,
        }

    def start(self, now: int) -> None:
        """Called once a generation slot is ours: schedule the first token (or the whole body)."""
        self.holds_slot = True
        if self.stream:
            self.due = now + self._jitter(self.ttft_ns)
            self.sim.timers.at(self.due, self.step)
            return
        gap = self.ttft_ns + max(0, self.n - 1) * self.itl_ns
        if "stall" in self.faults:
            gap += int(self.sim.config.stall_s * 1e9)
        self.due = now + self._jitter(gap)
        self.sim.timers.at(self.due, self._complete)

    def _jitter(self, gap: int) -> int:
        j = self.sim.jitter_ns
        return gap if not j else max(0, gap + self.sim.aux_rng.randint(-j, j))

    def _step(self) -> None:
        """Send the next token; the last one carries the end of the stream in the same write."""
        conn = self.conn
        if conn.closed:
            self.finish()
            return
        k = self.k
        if k < self.n:
            tok = self.tokens[k]
            data = b"%x\r\n%b%b%b\r\n" % (self.frame + len(tok), self.head, tok, self.tail)
            k = self.k = k + 1
            self.sim.stats["tokens"] += 1
        else:
            data = b""
        if self.faults:
            if k - 1 == self.bad_at:
                data = (
                    _chunk(b'data: {"id":"%s","choices":[{"delta":{"content":\n\n' % self.id.encode()) + data
                )
            if k == self.drop_at:
                self.finish()
                conn.send(data)
                conn.close()
                return
        # Counters are settled before the last write: a client that saw the end sees them too.
        if k >= self.n:
            self.finish()
            conn.send(data + self._end_of_stream())
            conn.reply_done()
            return
        conn.send(data)
        self.due += self._jitter(self.itl_ns)
        if k == 1 and "stall" in self.faults:
            self.due += int(self.sim.config.stall_s * 1e9)
            if self.sim.config.stall_then == "close":
                self.sim.timers.at(self.due, self._stall_close)
                return
        self.sim.timers.at(self.due, self.step)

    def _stall_close(self) -> None:
        self.finish()
        self.conn.close()

    def _end_of_stream(self) -> bytes:
        end = _chunk(self._event({"index": 0, "delta": {}, "finish_reason": self.finish_reason}))
        if self.include_usage and "no-usage" not in self.faults:
            end += _chunk(self._event(None, self._usage(self.k)))
        return end + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    def _complete(self) -> None:
        """Non-streaming: the whole body at once, after ttft + (n - 1) * itl."""
        conn, sim = self.conn, self.sim
        if conn.closed:
            self.finish()
            return
        if "stall" in self.faults and sim.config.stall_then == "close":
            self._stall_close()
            return
        sim.stats["tokens"] += self.n
        ctype = b"application/json"
        if "content-type" in self.faults:
            body = b"".join(
                self._event({"index": 0, "delta": {"content": w}, "finish_reason": None}) for w in self.words
            )
            body += self._event({"index": 0, "delta": {}, "finish_reason": self.finish_reason})
            body += b"data: [DONE]\n\n"
        else:
            message = {"role": "assistant", "content": "".join(self.words)}
            obj: dict[str, Any] = {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            }
            if "no-usage" not in self.faults:
                obj["usage"] = self._usage(self.n)
            body = orjson.dumps(obj)
        if "bad-event" in self.faults:
            body = body[: len(body) // 2]
        response = conn.response(200, body, ctype, self._fault_header())
        self.finish()
        if "drop" in self.faults:
            conn.send(response[: len(response) - len(body) // 2])
            conn.close()
            return
        conn.send(response)
        conn.reply_done()

    def finish(self) -> None:
        """Give back the generation slot (or the queue place) and the in-flight count, once."""
        if self.done:
            return
        self.done = True
        self.step = _nothing  # breaks the reply <-> bound method cycle: freed without the collector
        sim = self.sim
        sim.stats["in_flight"] -= 1
        if self.holds_slot:
            self.holds_slot = False
            sim.release()
        elif self in sim.waiting:
            sim.waiting.remove(self)
            sim.stats["queued"] = len(sim.waiting)


# --------------------------------------------------------------------------------------------
# Running it


class SimServer:
    """The simulated host on its own event loop: `start()` in a background thread (tests), or
    `serve_forever()` in the calling thread (the CLI). Use as a context manager to stop it."""

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config if config is not None else SimConfig()
        self.config.validate()
        self.host, self.port = host, port
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sim: _Sim | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def models(self) -> list[str]:
        return list(self.config.models)

    def start(self, timeout_s: float = 10.0) -> str:
        """Serve from a daemon thread of this process; returns the base URL (`http://H:P/v1`)."""
        self._thread = threading.Thread(target=self._run_in_thread, name="harness-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("simulated host did not start in time")
        if self._error is not None:
            raise self._error
        return self.base_url

    def _run_in_thread(self) -> None:
        try:
            self.serve_forever()
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve in this thread until `stop()`; `on_ready(base_url)` once it takes requests."""
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop, on_ready))
        finally:
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop, on_ready: Callable[[str], None] | None) -> None:
        sim = _Sim(self.config, loop)
        try:
            await sim.listen(self.host, self.port)
        except OSError as exc:
            sim.timers.close()
            raise InputError(
                f"sim: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        self.port = sim.port
        shown = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        self.base_url = f"http://{shown}:{self.port}/v1"
        self._stop = asyncio.Event()
        self._sim, self._loop = sim, loop
        if self._stop_requested:
            self._stop.set()
        self._ready.set()
        if on_ready is not None:
            on_ready(self.base_url)
        try:
            await self._stop.wait()
        finally:
            await sim.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving (safe from a signal handler and from other threads); joins the thread."""
        self._stop_requested = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(stop.set)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def stats(self) -> dict[str, Any]:
        """The counters `/sim/stats` serves (a copy)."""
        return self._sim.stats_snapshot() if self._sim is not None else {}

    def __enter__(self) -> SimServer:
        if not self.base_url:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in 0..1")
    return value


def _model_timing(text: str) -> tuple[str, float, float]:
    model, _, timing = text.rpartition("=")
    try:
        ttft, itl = (float(x) for x in timing.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ID=TTFT_MS,ITL_MS") from None
    if not model:
        raise argparse.ArgumentTypeError(f"{text!r} is not ID=TTFT_MS,ITL_MS")
    return model, ttft, itl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SimConfig()
    a = parser.add_argument
    a(
        "--model",
        action="append",
        metavar="ID",
        help=f"model id to serve (repeatable; default {', '.join(d.models)})",
    )
    a(
        "--ttft-ms",
        type=float,
        default=d.ttft_ms,
        help="time to first token after admission (default %(default)s)",
    )
    a("--itl-ms", type=float, default=d.itl_ms, help="time between tokens (default %(default)s)")
    a("--jitter-ms", type=float, default=d.jitter_ms, help="uniform ± jitter on every gap (default 0)")
    a(
        "--model-timing",
        action="append",
        type=_model_timing,
        default=[],
        metavar="ID=TTFT_MS,ITL_MS",
        help="per-model timing overriding --ttft-ms/--itl-ms (repeatable)",
    )
    a("--context", type=int, default=d.context, help="context length in tokens (default %(default)s)")
    a(
        "--max-concurrency",
        type=int,
        default=0,
        metavar="N",
        help="replies generating at once, others queue FIFO (0 = no limit)",
    )
    a("--seed", type=int, default=d.seed, help="seed for token text, jitter and fault draws (default 0)")
    a("--answer", metavar="TEXT", help="every reply is this text, one token per word")
    a(
        "--answers-file",
        type=Path,
        metavar="JSON",
        help="{substring of the last user message: answer}; first match wins",
    )
    a(
        "--foundry-quirks",
        action="store_true",
        help="send Content-Type, Cache-Control and Connection twice on streams, as oatpp does",
    )
    a(
        "--nagle",
        action="store_true",
        help="leave Nagle's algorithm on (no TCP_NODELAY), as Foundry Local does: a client that reuses "
        "connections and delays its ACKs sees the first token on the ~40 ms delayed-ACK floor",
    )
    g = parser.add_argument_group("faults (probability per request, 0..1)")
    for kind in FAULT_KINDS:
        g.add_argument(f"--fault-{kind}", type=_probability, default=0.0, metavar="P", help=_FAULT_HELP[kind])
    g.add_argument(
        "--retry-after-s", type=float, default=d.retry_after_s, help="Retry-After of a 429 (default 1)"
    )
    g.add_argument("--no-retry-after", action="store_true", help="answer a 429 without a Retry-After header")
    g.add_argument("--stall-s", type=float, default=d.stall_s, help="length of a stall (default 30)")
    g.add_argument(
        "--stall-then",
        choices=("continue", "close"),
        default=d.stall_then,
        help="after a stall (default continue)",
    )
    g.add_argument(
        "--slow-headers-ms",
        type=float,
        default=d.slow_headers_ms,
        help="delay of slow headers (default 2000)",
    )
    g.add_argument(
        "--down-after-s",
        type=float,
        metavar="S",
        help="stop listening S seconds after start (connects refused)",
    )
    g.add_argument(
        "--down-for-s",
        type=float,
        default=d.down_for_s,
        metavar="S",
        help="how long it stays down (default 5)",
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The SimConfig that `harness serve sim` flags describe (raises InputError on a bad one)."""
    answers: dict[str, str] = {}
    if args.answers_file is not None:
        try:
            answers = orjson.loads(args.answers_file.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InputError(f"sim: --answers-file {args.answers_file}: {exc}") from None
        if not isinstance(answers, dict) or not all(isinstance(v, str) for v in answers.values()):
            raise InputError(f"sim: --answers-file {args.answers_file} must hold one JSON object of strings")
    faults = {
        "fault_" + k.replace("-", "_"): getattr(args, "fault_" + k.replace("-", "_")) for k in FAULT_KINDS
    }
    config = SimConfig(
        models=tuple(args.model) if args.model else DEFAULT_MODELS,
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        jitter_ms=args.jitter_ms,
        model_timing={m: (t, i) for m, t, i in args.model_timing},
        context=args.context,
        max_concurrency=args.max_concurrency,
        seed=args.seed,
        answer=args.answer,
        answers=answers,
        foundry_quirks=args.foundry_quirks,
        nagle=args.nagle,
        retry_after_s=args.retry_after_s,
        stall_s=args.stall_s,
        stall_then=args.stall_then,
        slow_headers_ms=args.slow_headers_ms,
        retry_after_header=not args.no_retry_after,
        down_after_s=args.down_after_s,
        down_for_s=args.down_for_s,
        **faults,
    )
    config.validate()
    return config


def serve(args: argparse.Namespace) -> int:
    """`harness serve sim`: print the ready line when listening, exit 0 on SIGTERM/SIGINT."""
    config = config_from_args(args)
    server = SimServer(config, host=args.host, port=args.port)
    install_stop_handlers(server.stop)
    # Objects alive now never die: keep them out of the collector's full passes (fewer pauses).
    gc.freeze()
    server.serve_forever(on_ready=lambda url: print_ready(url, config.models))
    # The host's own count of what it received, in its log (an embedded host's log is in the run
    # folder): the independent count tests check a run's records against.
    sys.stderr.write("sim: final stats " + orjson.dumps(server.stats()).decode() + "\n")
    sys.stderr.flush()
    return 0
