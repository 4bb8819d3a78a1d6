"""SSE and chunked decoding, fed byte strings split in every possible way."""

from __future__ import annotations

import pytest

from harness.client.sse import ChunkedDecoder, ProtocolError, SSEParser

STREAM = (
    b": comment line\n"
    b'data: {"a":1}\n\n'
    b"event: message\r\n"
    b'data: {"b":\r\n'
    b"data: 2}\r\n\r\n"
    b"id: 7\rdata: x\r\r"
    b"data\n\n"
    b"retry: 10\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [b'{"a":1}', b'{"b":\n2}', b"x", b"", b"[DONE]"]


def feed_all(parser: SSEParser, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for p in pieces:
        out += parser.feed(p)
    return out + parser.flush()


def test_sse_whole() -> None:
    assert feed_all(SSEParser(), [STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_sse_any_split(size: int) -> None:
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert feed_all(SSEParser(), pieces) == EXPECTED


def test_sse_every_two_way_split() -> None:
    for cut in range(len(STREAM) + 1):
        assert feed_all(SSEParser(), [STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_sse_event_without_blank_line_is_dispatched_at_end() -> None:
    p = SSEParser()
    assert p.feed(b"data: tail") == []
    assert p.flush() == [b"tail"]


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


def test_chunked_every_split() -> None:
    parts = [b"hello ", b"world", b"!" * 300]
    wire = b"".join(chunk(p) for p in parts) + b"0\r\nX-Trailer: 1\r\n\r\n"
    for cut in range(len(wire) + 1):
        d = ChunkedDecoder()
        got = d.feed(wire[:cut]) + d.feed(wire[cut:])
        assert got == b"".join(parts)
        assert d.done


def test_chunked_byte_by_byte_and_extensions() -> None:
    wire = b"5;ext=1\r\nabcde\r\n0\r\n\r\n"
    d = ChunkedDecoder()
    got = b"".join(d.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert got == b"abcde" and d.done


def test_chunked_not_done_before_terminator() -> None:
    d = ChunkedDecoder()
    assert d.feed(chunk(b"abc")) == b"abc"
    assert not d.done


@pytest.mark.parametrize("wire", [b"zz\r\nabc\r\n", b"3\r\nabcXY"])
def test_chunked_garbage_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(wire)
