"""Incremental decoders for what arrives on the wire: HTTP/1.1 chunked coding and Server-Sent Events.

Both are fed whatever one socket read returned, split anywhere (inside a chunk-size line, inside
`\\r\\n`, inside an event), and hand back only what is complete. They never look at the clock:
the caller stamps each read before feeding it, so every event carries the time of the read that
completed it.
"""

from __future__ import annotations

__all__ = ["ChunkedDecoder", "ProtocolError", "SSEParser"]


class ProtocolError(ValueError):
    """The bytes are not valid HTTP chunked coding."""


_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedDecoder:
    """Decodes `Transfer-Encoding: chunked`; `done` turns true at the terminating zero chunk."""

    __slots__ = ("_buf", "_remaining", "_state")

    def __init__(self) -> None:
        self._buf = b""
        self._remaining = 0
        self._state = _SIZE

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        state = self._state
        while pos < end:
            if state == _DATA:
                take = min(self._remaining, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    state = _DATA_END
            elif state == _DATA_END:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                pos += 2
                state = _SIZE
            elif state == _SIZE:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if end - pos > 1024:
                        raise ProtocolError("chunk-size line too long")
                    break
                size_text = buf[pos:nl].split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
                pos = nl + 2
                if size == 0:
                    state = _TRAILER
                else:
                    self._remaining = size
                    state = _DATA
            elif state == _TRAILER:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    break
                if nl == pos:
                    pos += 2
                    state = _DONE
                else:
                    pos = nl + 2  # a trailer field: ignored
            else:  # _DONE: bytes after the terminator belong to no response; drop them
                pos = end
        self._state = state
        self._buf = buf[pos:] if pos < end else b""
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)


class SSEParser:
    """Splits an event stream into events and returns each event's `data` (lines joined by `\\n`).

    Handles `\\n`, `\\r\\n` and `\\r` line ends, comments (`:`), multi-line `data:`, and events
    without data (ignored). Field names other than `data` are not needed by the harness and are
    skipped.
    """

    __slots__ = ("_buf", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            # A CR at the very end may be the first half of CRLF split across reads: keep it back.
            hold = buf.endswith(b"\r")
            if hold:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if hold:
                buf += b"\r"
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        events: list[bytes] = []
        pending = self._data
        for line in lines:
            if not line:
                if pending:
                    events.append(pending[0] if len(pending) == 1 else b"\n".join(pending))
                    pending = self._data = []
            elif line.startswith(b"data"):
                if line.startswith(b"data:"):
                    value = line[5:]
                    pending.append(value[1:] if value[:1] == b" " else value)
                elif line == b"data":
                    pending.append(b"")
            # comments (":...") and other fields (event, id, retry) carry nothing the harness uses
        return events

    def flush(self) -> list[bytes]:
        """At end of stream: an event not closed by a blank line is still dispatched."""
        events = self.feed(b"\n\n") if (self._buf or self._data) else []
        return events
