"""Streaming chat completions over one HTTP/1.1 connection, timed per socket read.

This module knows nothing of Locust. It uses the standard `socket` module, so inside a Locust
process (where gevent has patched `socket`) it runs on gevent's cooperative sockets, and anywhere
else (benchmarks, `harness hosts`, warm-up) on plain blocking ones.

Why a hand-written HTTP/1.1 client: measured here (benchmarks/README.md), reading the socket
directly costs the least per event and is the only way to control the connection itself: a stamp
for every read taken before any parsing, `TCP_QUICKACK` before every read (the `reuse-quickack`
policy), and a connection per request (`new`), with connect time apart.

Stamps: on Linux (plain TCP) each read is `recvmsg` with the kernel's receive timestamp
(`SO_TIMESTAMPNS`), mapped onto the `perf_counter_ns` clock, so a busy event loop that reads late
does not make tokens look late; elsewhere (and over TLS) `perf_counter_ns()` right after `recv`.
A read's kernel stamp is that of its last segment, and unread segments merge in the kernel's queue,
so between the headers and the first token a thread (`firsttoken.py`) watches the socket and notes
when each byte run arrived; a late read is split at those runs, so the first token keeps its own
arrival time when a busy loop reads it together with the second.

Timing rules (docs/metrics.md): TTFT is the first event whose delta has non-empty `content`,
`reasoning_content`/`reasoning` or `tool_calls` (never the empty role chunk Foundry Local sends
first); TTFB is the first response byte; the end is the read that carried `[DONE]` (or the end of the
body). Output tokens come from `usage.completion_tokens` when the server sends it, else from the
count of content events (`tokens_source` says which).
"""

from __future__ import annotations

import errno
import platform
import socket
import ssl
import struct
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from harness.client import firsttoken
from harness.client.policy import CONNECTION_POLICIES, DEFAULT_CONNECTION_POLICY, Timeouts
from harness.client.sse import ChunkedDecoder, ProtocolError, SSEParser

__all__ = [
    "CONNECTION_POLICIES",
    "ChatResult",
    "Connection",
    "Timeouts",
    "chat_body",
]

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
# Linux: the kernel stamps each received packet (SO_TIMESTAMPNS); read with recvmsg, the stamp says
# when the bytes arrived, however late a busy event loop got round to reading them.
# Python does not export the constant; 35 is SO_TIMESTAMPNS on Linux's generic and x86 ABIs, where
# the stamp is a 64-bit struct timespec.
_LINUX_64 = sys.platform.startswith("linux") and platform.machine() in (
    "x86_64",
    "aarch64",
    "arm64",
    "riscv64",
)
_SO_TIMESTAMPNS: int | None = getattr(socket, "SO_TIMESTAMPNS", 35 if _LINUX_64 else None)
_SCM_TIMESTAMPNS: int | None = getattr(socket, "SCM_TIMESTAMPNS", _SO_TIMESTAMPNS)
_ANC_SIZE = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0
_RECV_SIZE = 65536
_MAX_ERROR_BODY = 65536


@dataclass(slots=True)
class ChatResult:
    """What one request did, in `perf_counter_ns` stamps of this process (None where not reached)."""

    ok: bool = False
    error: str | None = None
    error_detail: str | None = None
    http_status: int | None = None
    sent_ns: int = 0
    sent_unix_ns: int = 0
    first_byte_ns: int | None = None
    first_event_ns: int | None = None
    first_token_ns: int | None = None
    last_token_ns: int | None = None
    end_ns: int | None = None
    token_ns: list[int] = field(default_factory=list)
    """Read stamp of each content-bearing event, in order."""
    reads: int = 0
    content_reads: int = 0
    input_tokens: int | None = None
    usage_output_tokens: int | None = None
    finish_reason: str | None = None
    text: str | None = None
    connect_ns: int | None = None
    conn_reused: bool = False
    retry_after_s: float | None = None

    @property
    def content_events(self) -> int:
        return len(self.token_ns)

    @property
    def output_tokens(self) -> int | None:
        if self.usage_output_tokens is not None:
            return self.usage_output_tokens
        return len(self.token_ns) if self.token_ns or self.ok else None

    @property
    def tokens_source(self) -> str:
        return "usage" if self.usage_output_tokens is not None else "events"

    def fail(self, category: str, detail: str) -> None:
        """Record the first failure only: later symptoms of the same fault add nothing."""
        if self.error is None:
            self.error = category
            self.error_detail = detail[:300]
        self.ok = False


def chat_body(
    model: str,
    messages: list[dict[str, Any]],
    *,
    max_tokens: int,
    temperature: float | None = None,
    stream: bool = True,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The request body the harness sends: always `max_tokens` (Foundry Local's default of 2048 fails
    on small contexts), and for streams always `stream_options.include_usage`."""
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream}
    if temperature is not None:
        body["temperature"] = temperature
    if stream:
        body["stream_options"] = {"include_usage": True}
    if extra:
        body.update(extra)
    return orjson.dumps(body)


class _Closed(Exception):
    """The peer closed the connection (EOF or reset)."""

    def __init__(self, detail: str, reset: bool = False) -> None:
        super().__init__(detail)
        self.reset = reset


class Connection:
    """One HTTP/1.1 connection to a host's base URL (e.g. `http://127.0.0.1:5273/v1`).

    `policy` is `reuse` (keep-alive, as SDKs do), `new` (a fresh connection for every request,
    connect time recorded apart) or `reuse-quickack` (keep-alive, and `TCP_QUICKACK` before every
    read so a server that leaves Nagle on shows its own timing). Not safe for concurrent use: one
    connection per user, as one application thread would hold.
    """

    def __init__(
        self,
        base_url: str,
        *,
        policy: str = DEFAULT_CONNECTION_POLICY,
        timeouts: Timeouts | None = None,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        kernel_stamps: bool = True,
    ) -> None:
        if policy not in CONNECTION_POLICIES:
            raise ValueError(
                f"connection policy must be one of {', '.join(CONNECTION_POLICIES)}, not {policy!r}"
            )
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"host URL must be http(s)://HOST[:PORT][/PATH], not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.timeouts = timeouts or Timeouts()
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._quickack = policy == "reuse-quickack" and _TCP_QUICKACK is not None
        host_header = self._host if parts.port is None else f"{self._host}:{self._port}"
        if ":" in self._host and not self._host.startswith("["):
            host_header = f"[{self._host}]:{self._port}"
        head = [f"Host: {host_header}", "User-Agent: llm-load-harness", "Content-Type: application/json"]
        if api_key:
            head.append(f"Authorization: Bearer {api_key}")
        for k, v in (headers or {}).items():
            head.append(f"{k}: {v}")
        if policy == "new":
            head.append("Connection: close")
        self._head = "\r\n".join(head)
        self._want_kernel_stamps = kernel_stamps
        self._kernel_stamps = False
        self._sock: socket.socket | None = None
        self._watcher: Any = None  # this process's first-token watcher, for kernel-stamped sockets
        self._watch: firsttoken.Watch | None = None
        self._unwatch: weakref.finalize | None = None
        self._requests_on_sock = 0
        self._leftover = b""

    @property
    def kernel_stamps(self) -> bool:
        """Whether the current socket's reads are stamped by the kernel (see the module docstring)."""
        return self._kernel_stamps

    @property
    def first_token_watch(self) -> bool:
        """Whether the first-token watcher looks after the current socket (`firsttoken.py`): then a
        late read does not move the first token's stamp either. For the client-health report."""
        return self._watcher is not None

    # --- connection management -------------------------------------------------------------
    def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()  # detaches the watch (once), as it would if the connection were dropped
            self._unwatch = self._watch = None
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._leftover = b""

    def _connect(self) -> int:
        """Open the socket; returns the connect time in ns."""
        t0 = time.perf_counter_ns()
        sock = socket.create_connection((self._host, self._port), timeout=self.timeouts.connect_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._kernel_stamps = False
        if self._tls:
            ctx = ssl.create_default_context()
            sock = ctx.wrap_socket(sock, server_hostname=self._host)
        elif self._want_kernel_stamps and _SO_TIMESTAMPNS is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._kernel_stamps = True
            except OSError:
                pass
        # The first-token watcher needs the kernel's stamps: it compares them with the reads'.
        self._watcher = firsttoken.watcher() if self._kernel_stamps and firsttoken.enabled() else None
        self._sock = sock
        self._requests_on_sock = 0
        return time.perf_counter_ns() - t0

    # --- requests ---------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """A plain GET of `base_url + path` (probing, model lists); raises OSError on network errors."""
        res = ChatResult()
        raw = self._exchange(f"GET {self._prefix}{path} HTTP/1.1\r\n{self._head}\r\n\r\n".encode(), res, None)
        return raw

    def chat(
        self, body: bytes, *, stream: bool = True, keep_text: bool = False, result: ChatResult | None = None
    ) -> ChatResult:
        """Send one chat completion (body from `chat_body`) and time its response.

        Pass `result` to keep what was measured so far if the caller is interrupted (a Locust user
        stopped mid-stream records the partial request as `stopped`)."""
        res = result if result is not None else ChatResult()
        req = (
            f"POST {self._prefix}/chat/completions HTTP/1.1\r\n{self._head}\r\n"
            f"Accept: {'text/event-stream' if stream else 'application/json'}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        try:
            self._exchange(req, res, (stream, keep_text))
        except BaseException as exc:
            # Anything not handled inside (e.g. the greenlet being killed at stop) leaves the
            # connection in an unknown state: never reuse it.
            self.close()
            if isinstance(exc, Exception):
                res.fail("connect", f"{type(exc).__name__}: {exc}")
            else:
                raise
        if self.policy == "new":
            self.close()
        return res

    def _exchange(
        self, req: bytes, res: ChatResult, chat: tuple[bool, bool] | None
    ) -> tuple[int, dict[str, str], bytes]:
        # A kept-alive socket may have been closed by the server while idle; the first failure on a
        # reused socket before any response byte is retried once on a new socket, as HTTP clients do.
        for attempt in (0, 1):
            reused = self._sock is not None
            if not reused:
                try:
                    res.connect_ns = self._connect()
                except OSError as exc:
                    res.fail(
                        "timeout" if isinstance(exc, TimeoutError) else "connect", _os_detail(exc, "connect")
                    )
                    if chat is None:
                        raise
                    return 0, {}, b""
            res.conn_reused = reused
            sock = self._sock
            assert sock is not None
            res.sent_unix_ns = time.time_ns()
            res.sent_ns = time.perf_counter_ns()
            try:
                sock.sendall(req)
                return self._read_response(sock, res, chat)
            except _Closed as exc:
                self.close()
                if reused and attempt == 0 and res.first_byte_ns is None:
                    res.connect_ns = None
                    continue
                if chat is None:
                    raise ConnectionError(str(exc)) from None
                if res.first_byte_ns is None:
                    res.fail("connect" if exc.reset else "stream_cut", str(exc))
                else:
                    res.fail("stream_cut", str(exc))
                res.end_ns = time.perf_counter_ns()
                return 0, {}, b""
            except TimeoutError as exc:
                self.close()
                if chat is None:
                    raise
                res.fail("stall" if res.first_token_ns is not None else "timeout", str(exc) or "timed out")
                res.end_ns = time.perf_counter_ns()
                return 0, {}, b""
            except OSError as exc:
                self.close()
                if reused and attempt == 0 and res.first_byte_ns is None:
                    res.connect_ns = None
                    continue
                if chat is None:
                    raise
                res.fail(
                    "stream_cut" if res.first_byte_ns is not None else "connect", _os_detail(exc, "read")
                )
                res.end_ns = time.perf_counter_ns()
                return 0, {}, b""
            except ProtocolError as exc:
                self.close()
                if chat is None:
                    raise ConnectionError(str(exc)) from None
                res.fail("bad_event", f"malformed HTTP framing: {exc}")
                res.end_ns = time.perf_counter_ns()
                return 0, {}, b""
        raise AssertionError("unreachable")

    def _read_response(
        self, sock: socket.socket, res: ChatResult, chat: tuple[bool, bool] | None
    ) -> tuple[int, dict[str, str], bytes]:
        t = self.timeouts
        deadline = res.sent_ns + int(t.total_s * 1e9)
        first_deadline = res.sent_ns + int(t.first_token_s * 1e9)
        quickack = self._quickack
        kernel = self._kernel_stamps
        recv = sock.recv
        perf = time.perf_counter_ns
        watch = self._watch
        wt = self._watcher
        watching = False
        track = wt is not None  # keep the reads' ancillary data while the watcher may be needed
        last_anc: list[tuple[int, int, bytes]] = []
        prev_raw: int | None = None

        def read() -> tuple[bytes, int]:
            nonlocal last_anc
            now = perf()
            limit = min(deadline, first_deadline) if res.first_token_ns is None else deadline
            wait_s = (limit - now) / 1e9
            if res.first_token_ns is not None:
                wait_s = min(wait_s, t.idle_s)
            if wait_s <= 0:
                raise TimeoutError("total time limit reached" if now >= deadline else "no token in time")
            sock.settimeout(wait_s)
            if quickack:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK or 12, 1)
            try:
                if kernel:
                    data, ancillary, _flags, _addr = sock.recvmsg(_RECV_SIZE, _ANC_SIZE)
                else:
                    data = recv(_RECV_SIZE)
            except TimeoutError:
                raise TimeoutError(_timeout_detail(res, t)) from None
            except ConnectionResetError:
                raise _Closed("connection reset by peer", reset=True) from None
            stamp = perf()
            if kernel:
                stamp = _kernel_stamp(ancillary, stamp, res.sent_ns)
                if track:
                    last_anc = ancillary
            if not data:
                raise _Closed("connection closed by peer")
            res.reads += 1
            if res.first_byte_ns is None:
                res.first_byte_ns = stamp
            return data, stamp

        # --- status line and headers
        buf = self._leftover
        self._leftover = b""
        stamp = res.sent_ns
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > 65536:
                raise ProtocolError("response headers larger than 64 KiB")
            data, stamp = read()
            buf += data
        head, body = buf[:end], buf[end + 4 :]
        lines = head.split(b"\r\n")
        status_parts = lines[0].split(b" ", 2)
        if len(status_parts) < 2 or not status_parts[0].startswith(b"HTTP/"):
            raise ProtocolError(f"not an HTTP response: {lines[0][:60]!r}")
        try:
            status = int(status_parts[1])
        except ValueError:
            raise ProtocolError(f"bad status line {lines[0][:60]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower().decode("latin-1")
            val = value.strip().decode("latin-1")
            # Foundry Local sends some headers twice: keep all values, comma-joined.
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        res.http_status = status
        self._requests_on_sock += 1

        keep_alive = "close" not in headers.get("connection", "").lower() and status_parts[0] != b"HTTP/1.0"
        te = headers.get("transfer-encoding", "").lower()
        chunked = "chunked" in te
        length: int | None = None
        if not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"].split(",")[0])
            except ValueError:
                raise ProtocolError(f"bad Content-Length {headers['content-length']!r}") from None
        decoder = ChunkedDecoder() if chunked else None
        received = 0

        def framing_done() -> bool:
            if decoder is not None:
                return decoder.done
            return length is not None and received >= length

        def payload_of(data: bytes) -> bytes:
            nonlocal received
            if decoder is not None:
                return decoder.feed(data)
            if length is not None:
                take = data[: max(0, length - received)]
                received += len(data)
                if received > length:
                    # Bytes past this response belong to the next one (pipelining): keep them.
                    self._leftover = data[len(take) :]
                    received = length
                return take
            received += len(data)
            return data

        want_stream = chat is not None and chat[0] and status == 200
        is_sse = "text/event-stream" in headers.get("content-type", "").lower()

        if not want_stream:
            parts = [payload_of(body)] if body else []
            size = len(parts[0]) if parts else 0
            limit = _MAX_ERROR_BODY if status >= 400 else 1 << 30
            while not framing_done():
                try:
                    data, stamp = read()
                except _Closed:
                    if decoder is None and length is None:  # body delimited by close
                        keep_alive = False
                        break
                    raise
                chunk = payload_of(data)
                size += len(chunk)
                if size <= limit:
                    parts.append(chunk)
            payload = b"".join(parts)
            res.end_ns = stamp
            if not keep_alive:
                self.close()
            if chat is not None:
                self._finish_plain(res, status, headers, payload, keep_text=chat[1])
            return status, headers, payload

        # --- streaming body
        keep_text = chat is not None and chat[1]
        texts: list[str] = []
        parser = SSEParser()
        done = False
        non_sse = b"" if not is_sse else None
        body_bytes = 0
        data = body
        more: list[tuple[bytes, int]] = []  # the rest of a read the first-token watcher split
        while True:
            if data:
                payload = payload_of(data)
                if payload:
                    body_bytes += len(payload)
                    if non_sse is not None:
                        non_sse += payload[:512]
                    else:
                        for ev in parser.feed(payload):
                            done = self._on_event(ev, stamp, res, texts if keep_text else None) or done
            if more:
                data, stamp = more.pop(0)
                continue
            if framing_done():
                break
            if wt is not None:
                # Watch the socket from the headers until the first token (see firsttoken.py).
                if res.first_token_ns is None:
                    try:
                        if watch is None:
                            watch = self._watch = wt.attach(sock)
                            # A connection dropped without close() must not keep its socket open.
                            self._unwatch = weakref.finalize(self, wt.detach, watch)
                        wt.arm(watch)  # before every read until the first token: one peek each
                        if not watching:
                            watching = True
                            prev_raw = _kernel_ns(last_anc)
                    except OSError:  # no descriptor to spare: measure as without the watcher
                        wt = None
                        watching = track = False
                else:
                    if watching:
                        wt.disarm(watch)
                    watching = track = False
                    wt = None
            try:
                if watching:
                    data, stamp = read()
                    obs, watch.obs = watch.obs, []  # type: ignore[union-attr]
                    prev_raw, more = _split(data, stamp, obs, last_anc, prev_raw, res.sent_ns)
                    if more:
                        data, stamp = more.pop(0)
                else:
                    data, stamp = read()
            except _Closed as exc:
                if decoder is None and length is None:  # body ends at close: a legal end
                    keep_alive = False
                    break
                raise _Closed(f"{exc} mid-stream") from None
        if watching:
            wt.disarm(watch)
        if non_sse is None:
            for ev in parser.flush():
                done = self._on_event(ev, stamp, res, texts if keep_text else None) or done
        if res.end_ns is None:
            res.end_ns = stamp
        if not keep_alive:
            self.close()
        if non_sse is not None:
            ctype = headers.get("content-type", "") or "no content type"
            res.fail("bad_event", f"expected text/event-stream, got {ctype!r}: {non_sse[:80]!r}")
        elif res.error is None:
            if res.finish_reason is not None:
                res.ok = True
            elif body_bytes == 0:
                res.fail("bad_event", "empty response body")
            else:
                res.fail("bad_event", "stream ended without a finish_reason")
        if keep_text:
            res.text = "".join(texts)
        return status, headers, b""

    @staticmethod
    def _on_event(ev: bytes, stamp: int, res: ChatResult, texts: list[str] | None) -> bool:
        """Account one SSE event; returns True for `[DONE]`."""
        if res.first_event_ns is None:
            res.first_event_ns = stamp
        if ev == b"[DONE]":
            res.end_ns = stamp
            return True
        try:
            obj = orjson.loads(ev)
        except orjson.JSONDecodeError:
            res.fail("bad_event", f"event is not JSON: {ev[:80]!r}")
            return False
        if not isinstance(obj, dict):
            res.fail("bad_event", f"event is not a JSON object: {ev[:80]!r}")
            return False
        choices = obj.get("choices")
        if choices:  # Foundry sends `choices: []` with usage (issue #905): never index blindly
            c0 = choices[0]
            delta = c0.get("delta") or c0.get("message")
            if delta:
                content = delta.get("content")
                if (
                    content
                    or delta.get("reasoning_content")
                    or delta.get("reasoning")
                    or delta.get("tool_calls")
                ):
                    tokens = res.token_ns
                    if not tokens or tokens[-1] != stamp:
                        res.content_reads += 1
                    tokens.append(stamp)
                    if res.first_token_ns is None:
                        res.first_token_ns = stamp
                    res.last_token_ns = stamp
                    if texts is not None and isinstance(content, str):
                        texts.append(content)
            fr = c0.get("finish_reason")
            if fr:
                res.finish_reason = fr
        usage = obj.get("usage")
        if isinstance(usage, dict):
            _take_usage(res, usage)
        err = obj.get("error")
        if err and not choices:
            msg = err.get("message") if isinstance(err, dict) else err
            res.fail("bad_event", f"error event in stream: {str(msg)[:200]}")
        return False

    @staticmethod
    def _finish_plain(
        res: ChatResult, status: int, headers: dict[str, str], payload: bytes, *, keep_text: bool
    ) -> None:
        if status >= 400:
            category = "http_429" if status == 429 else "http_4xx" if status < 500 else "http_5xx"
            res.fail(category, f"HTTP {status}: {_error_message(payload)}")
            if status == 429:
                res.retry_after_s = _retry_after(headers.get("retry-after"))
            return
        if status != 200:
            res.fail("bad_event", f"unexpected HTTP {status}")
            return
        if not payload:
            res.fail("bad_event", "empty response body")
            return
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            res.fail("bad_event", f"response is not JSON: {payload[:80]!r}")
            return
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not choices:
            res.fail("bad_event", "response has no choices")
            return
        c0 = choices[0]
        message = c0.get("message") or {}
        res.finish_reason = c0.get("finish_reason")
        usage = obj.get("usage")
        if isinstance(usage, dict):
            _take_usage(res, usage)
        if keep_text:
            content = message.get("content")
            res.text = content if isinstance(content, str) else None
        res.ok = res.finish_reason is not None
        if not res.ok:
            res.fail("bad_event", "response has no finish_reason")


def _kernel_stamp(ancillary: list[tuple[int, int, bytes]], user_stamp: int, sent_ns: int) -> int:
    """The read's arrival time on the perf_counter clock, from the kernel's receive timestamp.

    The kernel stamps with the real-time clock; its offset from perf_counter is taken right now, so
    no drift accumulates. Never later than the user-space stamp, never before the send."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            offset = time.time_ns() - time.perf_counter_ns()
            return max(sent_ns, min(user_stamp, sec * 1_000_000_000 + nsec - offset))
    return user_stamp


def _kernel_ns(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receive timestamp of a read (real-time ns), None if it carried none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack_from("qq", data)
            return int(sec * 1_000_000_000 + nsec)
    return None


def _split(
    data: bytes,
    stamp: int,
    obs: list[tuple[int, int]],
    ancillary: list[tuple[int, int, bytes]],
    prev_raw: int | None,
    sent_ns: int,
) -> tuple[int | None, list[tuple[bytes, int]]]:
    """Split one read at the first-token watcher's observations (kernel ns W: the first L bytes
    were all there): each part takes the stamp of the first observation that held it, the rest the
    read's own. An observation counts only if it saw these bytes, i.e. it came after the previous
    read and before this one (prev < W < this read's stamp) and L fits. Returns this read's kernel
    stamp (the next read's `prev_raw`) and the parts, empty when the read stays whole."""
    raw = _kernel_ns(ancillary)
    if not obs or raw is None:
        return raw, []
    offset = time.time_ns() - time.perf_counter_ns()
    parts: list[tuple[bytes, int]] = []
    start = 0
    for w_ns, size in obs:
        if size <= start or size >= len(data) or w_ns >= raw or (prev_raw is not None and w_ns <= prev_raw):
            continue
        parts.append((data[start:size], max(sent_ns, min(stamp, w_ns - offset))))
        start = size
    if parts:
        parts.append((data[start:], stamp))
    return raw, parts


def _take_usage(res: ChatResult, usage: dict[str, Any]) -> None:
    completion = usage.get("completion_tokens")
    prompt = usage.get("prompt_tokens")
    if isinstance(completion, int):
        res.usage_output_tokens = completion
    if isinstance(prompt, int):
        res.input_tokens = prompt


def _error_message(payload: bytes) -> str:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:200].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:200]
        return str(err)[:200]
    return str(obj)[:200]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value.split(",")[0]))
    except ValueError:
        return None


def _timeout_detail(res: ChatResult, t: Timeouts) -> str:
    if res.first_byte_ns is None:
        return f"no response within {t.first_token_s:g} s"
    if res.first_token_ns is None:
        return f"no first token within {t.first_token_s:g} s"
    return f"no token for {t.idle_s:g} s after {len(res.token_ns)} tokens"


def _os_detail(exc: OSError, what: str) -> str:
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return f"{what}: {name} {exc.strerror or exc}".strip()
