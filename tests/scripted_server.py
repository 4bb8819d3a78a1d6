"""A TCP server for client tests that answers each request with scripted bytes, timings and closes.

Real sockets on 127.0.0.1, so the client's reads, stamps and error handling meet the real kernel;
what the server says is whatever the test wants, including what no sane server says.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson

# A step: bytes to write, ("sleep", seconds), ("close",), ("reset",)
Step = bytes | tuple


@dataclass
class Script:
    steps: list[Step]
    keep_open: bool = True


@dataclass
class ServerLog:
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0


def sse(obj: object) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n\n"


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


def delta(content: str | None = None, finish: str | None = None, **extra: object) -> dict:
    d: dict = {} if content is None else {"content": content}
    d.update(extra)
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


HEAD_SSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def foundry_stream(
    tokens: list[str], *, usage: bool = True, gap_s: float = 0.0, first_gap_s: float = 0.0
) -> list[Step]:
    """Shaped like Foundry Local: empty role chunk first, tokens, finish chunk, usage, [DONE]."""
    steps: list[Step] = [HEAD_SSE, chunk(sse(delta("", role="assistant")))]
    if first_gap_s:
        steps.append(("sleep", first_gap_s))
    for i, t in enumerate(tokens):
        if i and gap_s:
            steps.append(("sleep", gap_s))
        steps.append(chunk(sse(delta(t))))
    steps.append(chunk(sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})))
    if usage:
        u = {"prompt_tokens": 7, "completion_tokens": len(tokens), "total_tokens": 7 + len(tokens)}
        steps.append(chunk(sse({"choices": [], "usage": u})))
    steps.append(chunk(sse(b"[DONE]")))
    steps.append(b"0\r\n\r\n")
    return steps


def json_response(status: int, obj: object, headers: str = "") -> bytes:
    body = orjson.dumps(obj)
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode()
        + body
    )


def _read_request(conn: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, b""
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return None, b""
        rest += data
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


@contextmanager
def scripted_server(scripts: Callable[[int], Script] | list[Script]) -> Iterator[tuple[str, ServerLog]]:
    """Yields (base_url, log). Request number i (over all connections) gets `scripts[i]`."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    port = lsock.getsockname()[1]
    log = ServerLog()
    counter = iter(range(1_000_000))
    stop = threading.Event()

    def pick(i: int) -> Script:
        if callable(scripts):
            return scripts(i)
        return scripts[min(i, len(scripts) - 1)]

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while not stop.is_set():
                req, buf = _read_request(conn, buf)
                if req is None:
                    return
                log.requests.append(req)
                script = pick(next(counter))
                for step in script.steps:
                    if isinstance(step, bytes):
                        conn.sendall(step)
                    elif step[0] == "sleep":
                        time.sleep(step[1])
                    elif step[0] == "close":
                        conn.close()
                        return
                    elif step[0] == "reset":
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        conn.close()
                        return
                if not script.keep_open:
                    conn.close()
                    return
        except OSError:
            return

    def accept_loop() -> None:
        lsock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            log.connections += 1
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept_loop, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        stop.set()
        lsock.close()
        t.join(2)
