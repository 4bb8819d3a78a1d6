"""The simulated host (`harness.servers.sim`) on real sockets: wire format, errors, queueing, faults.

Timing bounds here are loose on purpose (shared, noisy machine); exact timing belongs to
`benchmarks/bench_sim.py`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from harness_helpers import sim_host, sim_stats

from harness.cli import build_parser
from harness.servers.sim import DEFAULT_MODELS, SimConfig, SimServer, config_from_args

MODEL = DEFAULT_MODELS[0]
FAST = {"ttft_ms": 1.0, "itl_ms": 0.2}


# --------------------------------------------------------------------------------------------
# A small raw HTTP/1.1 client that keeps every read and when each SSE event completed


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    events: list[tuple[float, bytes]] = field(default_factory=list)  # (perf_counter, event text)
    reads: list[bytes] = field(default_factory=list)
    complete: bool = False  # terminator (or full Content-Length) seen before EOF
    sent: float = 0.0
    first_byte: float = 0.0

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    def datas(self) -> list[bytes]:
        return [e[len(b"data: ") :] for _, e in self.events]

    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(d) for d in self.datas() if d != b"[DONE]"]

    def contents(self) -> list[str]:
        return [c["choices"][0]["delta"]["content"] for c in self.chunks() if _has_content(c)]

    def content_times(self) -> list[float]:
        return [t for t, e in self.events if b'"delta":{"content":"' in e and b'"content":""' not in e]


def _has_content(chunk: dict[str, Any]) -> bool:
    return bool(chunk["choices"]) and bool(chunk["choices"][0]["delta"].get("content"))


class Client:
    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        url = urlsplit(base_url)
        self.addr = (url.hostname or "127.0.0.1", url.port or 80)
        self.sock = socket.create_connection(self.addr, timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> float:
        data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(data)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        sent = time.perf_counter()
        self.sock.sendall(head.encode() + b"\r\n" + data)
        return sent

    def _read(self, resp: Response) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        if not resp.first_byte:
            resp.first_byte = time.perf_counter()
        resp.reads.append(data)
        self.buf += data
        return True

    def response(self, sent: float = 0.0) -> Response:
        resp = Response(sent=sent)
        while b"\r\n\r\n" not in self.buf:
            if not self._read(resp):
                return resp
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        resp.status = int(lines[0].split(" ")[1])
        for line in lines[1:]:
            k, _, v = line.partition(":")
            resp.headers.append((k.strip().lower(), v.strip()))
        if resp.header("transfer-encoding") == "chunked":
            self._chunked(resp)
        else:
            length = int(resp.header("content-length") or 0)
            while len(self.buf) < length:
                if not self._read(resp):
                    break
            resp.body, self.buf = self.buf[:length], self.buf[length:]
            resp.complete = len(resp.body) == length
        return resp

    def _chunked(self, resp: Response) -> None:
        sse = b""
        while True:
            while b"\r\n" not in self.buf:
                if not self._read(resp):
                    return
            size_line, rest = self.buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            while len(rest) < size + 2:
                if not self._read(resp):
                    return
                rest = self.buf.split(b"\r\n", 1)[1]
            chunk, self.buf = rest[:size], rest[size + 2 :]
            if size == 0:
                resp.complete = True
                return
            resp.body += chunk
            sse += chunk
            now = time.perf_counter()
            while b"\n\n" in sse:
                event, sse = sse.split(b"\n\n", 1)
                resp.events.append((now, event))

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        return self.response(self.send(method, path, body, headers))


def chat(
    n: int = 5, stream: bool = True, usage: bool = False, model: str = MODEL, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}
    if n:
        body["max_tokens"] = n
    if stream:
        body["stream"] = True
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


@contextmanager
def sim(**options: Any) -> Iterator[SimServer]:
    with SimServer(SimConfig(**{**FAST, **options})) as server:
        yield server


@dataclass
class SimProcess:
    """`harness serve sim` in a process of its own: what timing tests measure, so the test's own
    threads (its client, the GIL) cannot delay the host they time."""

    base_url: str
    models: list[str]
    port: int

    def stats(self) -> dict[str, Any]:
        return sim_stats(self.base_url)


@contextmanager
def sim_proc(
    *flags: str, ttft_ms: float = FAST["ttft_ms"], itl_ms: float = FAST["itl_ms"]
) -> Iterator[SimProcess]:
    with sim_host("--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), *flags) as host:
        yield SimProcess(host.base_url, host.models, int(urlsplit(host.base_url).port or 0))


@contextmanager
def client(server: SimServer | SimProcess) -> Iterator[Client]:
    c = Client(server.base_url)
    try:
        yield c
    finally:
        c.close()


def post(server: SimServer | SimProcess, body: Any, headers: dict[str, str] | None = None) -> Response:
    with client(server) as c:
        return c.call("POST", "/v1/chat/completions", body, headers)


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with sim() as s:
        yield s


# --------------------------------------------------------------------------------------------
# Wire format


def test_stream_events_in_foundry_order_with_usage(server: SimServer) -> None:
    r = post(server, chat(n=7, usage=True))
    assert r.status == 200 and r.complete
    assert r.header("content-type") == "text/event-stream"
    assert r.header("transfer-encoding") == "chunked"
    assert r.header("x-sim-fault") is None
    chunks = r.chunks()
    assert r.datas()[-1] == b"[DONE]"
    role, tokens, finish, usage = chunks[0], chunks[1:8], chunks[8], chunks[9]
    assert len(chunks) == 10
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["model"] == MODEL
        assert c["id"] == chunks[0]["id"] and isinstance(c["created"], int)
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    for c in tokens:
        (choice,) = c["choices"]
        assert choice["index"] == 0 and choice["finish_reason"] is None
        assert list(choice["delta"]) == ["content"] and choice["delta"]["content"].strip().isalpha()
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 7
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 7
    assert usage["usage"]["prompt_tokens"] >= 1


def test_usage_only_when_asked_and_max_completion_tokens(server: SimServer) -> None:
    r = post(server, chat(n=0, max_completion_tokens=4))
    assert r.complete and len(r.contents()) == 4
    assert all("usage" not in c for c in r.chunks())
    assert r.chunks()[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("n", [1, 33])
def test_exactly_max_tokens_content_events(server: SimServer, n: int) -> None:
    r = post(server, chat(n=n, usage=True))
    assert len(r.contents()) == n == r.chunks()[-1]["usage"]["completion_tokens"]


def test_text_is_deterministic_from_seed_and_request(server: SimServer) -> None:
    first, again = post(server, chat(n=12)).contents(), post(server, chat(n=12)).contents()
    assert first == again
    other = post(server, {**chat(n=12), "messages": [{"role": "user", "content": "something else"}]})
    assert other.contents() != first
    with sim(seed=7) as seeded:
        assert post(seeded, chat(n=12)).contents() != first


def test_non_streaming_body(server: SimServer) -> None:
    r = post(server, chat(n=6, stream=False))
    assert r.status == 200 and r.header("content-type") == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert len(choice["message"]["content"].split()) == 6
    assert body["usage"]["completion_tokens"] == 6


def test_default_max_tokens_is_2048_and_checked_against_context() -> None:
    with sim(itl_ms=0.0, context=4096) as s:
        r = post(s, chat(n=0, stream=False))
        assert r.json()["usage"]["completion_tokens"] == 2048
    with sim(context=2100) as s:
        long_prompt = {**chat(n=0), "messages": [{"role": "user", "content": "word " * 100}]}
        r = post(s, long_prompt)
        assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert "context" in r.json()["error"]["message"]
        assert post(s, {**long_prompt, "max_tokens": 10}).status == 200


def test_models_status_loaded_and_stats() -> None:
    with sim(models=("a-generic-cpu:1", "b-generic-cpu:2")) as s, client(s) as c:
        models = c.call("GET", "/v1/models").json()
        assert models["object"] == "list"
        assert [(m["id"], m["object"]) for m in models["data"]] == [
            ("a-generic-cpu:1", "model"),
            ("b-generic-cpu:2", "model"),
        ]
        assert all(m["owned_by"] for m in models["data"])
        status = c.call("GET", "/status").json()
        assert set(status) == {"endpoints", "modelCachePath", "pid"}
        assert status["endpoints"] == [s.base_url.removesuffix("/v1")]
        assert c.call("GET", "/models/loaded").json() == ["a-generic-cpu:1", "b-generic-cpu:2"]
        c.call("POST", "/v1/chat/completions", chat(n=3, model="b-generic-cpu:2"))
        stats = c.call("GET", "/sim/stats").json()
        assert stats["chat_requests"] == 1 and stats["tokens"] == 3 and stats["requests"] == 5
        assert stats["max_in_flight"] == 1 and stats["in_flight"] == 0 and stats["faults"] == {}
        assert s.stats()["tokens"] == 3


def test_default_models_are_foundry_style_ids(server: SimServer) -> None:
    assert all(":" in m and "-generic-cpu" in m for m in server.models)
    assert any(m.startswith("qwen2.5-0.5b") for m in server.models)


def test_foundry_quirks_duplicate_stream_headers() -> None:
    with sim(foundry_quirks=True) as s:
        r = post(s, chat(n=2))
        for name in ("content-type", "cache-control", "connection"):
            assert len(r.header_all(name)) == 2
        assert r.complete and len(r.contents()) == 2


# --------------------------------------------------------------------------------------------
# Errors


def _assert_error(r: Response, status: int) -> None:
    assert r.status == status and r.header("content-type") == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error" and err["param"] is None and err["code"] is None


def test_errors_like_foundry(server: SimServer) -> None:
    _assert_error(post(server, chat(model="qwen2.5-0.5b")), 404)  # an alias is not an id
    _assert_error(post(server, {**chat(), "model": "nope"}), 404)
    _assert_error(post(server, b'{"model": '), 400)
    _assert_error(post(server, {"messages": [{"role": "user", "content": "x"}]}), 400)
    _assert_error(post(server, {**chat(), "messages": []}), 400)
    _assert_error(post(server, chat(n=-1)), 400)
    with client(server) as c:
        _assert_error(c.call("GET", "/v1/nothing"), 404)
        _assert_error(c.call("GET", "/v1/chat/completions"), 404)
        empty = c.call("POST", "/v1/chat/completions", b"")
        assert empty.status == 500 and empty.header("content-type") == "text/plain"
        # The connection survives errors (keep-alive).
        assert c.call("POST", "/v1/chat/completions", chat(n=2)).complete


# --------------------------------------------------------------------------------------------
# Connections and concurrency


def test_keep_alive_and_connection_close(server: SimServer) -> None:
    with client(server) as c:
        first = c.call("POST", "/v1/chat/completions", chat(n=3))
        second = c.call("POST", "/v1/chat/completions", chat(n=4, stream=False))
        assert first.complete and second.complete and second.json()["usage"]["completion_tokens"] == 4
        last = c.call("POST", "/v1/chat/completions", chat(n=2), {"Connection": "close"})
        assert last.complete and last.header("connection") == "close"
        assert c.sock.recv(1) == b""  # the server closed its side
    with client(server) as c:  # pipelined requests are answered in order
        c.send("GET", "/models/loaded")
        c.send("POST", "/v1/chat/completions", chat(n=2))
        assert c.response().json() == server.models
        assert len(c.response().contents()) == 2


def test_no_nagle_delay_on_reused_connections() -> None:
    # TCP_NODELAY: with Nagle on, a token would wait for the client's delayed ACK (~40 ms).
    with sim_proc(ttft_ms=5.0, itl_ms=5.0) as s, client(s) as c:
        for _ in range(3):  # reused connection, where delayed ACKs matter
            r = c.call("POST", "/v1/chat/completions", chat(n=6))
            gaps = [b - a for a, b in itertools.pairwise(r.content_times())]
            # Below the 40 ms floor: the first token (held behind the headers' ACK with Nagle on)
            # and every gap.
            assert r.content_times()[0] - r.sent < 0.035 and max(gaps) < 0.035


def test_nagle_left_on_holds_the_first_token_for_the_delayed_ack() -> None:
    """`--nagle`, as Foundry Local: on a reused connection whose client delays its ACKs, the first
    token (due 5 ms after the request) waits for the ACK of the headers: the 40 ms delayed-ACK
    floor; the tokens made meanwhile come with it. A fresh connection ACKs at once: no wait."""
    with sim_proc("--nagle", ttft_ms=5.0, itl_ms=0.5) as s, client(s) as c:
        fresh = c.call("POST", "/v1/chat/completions", chat(n=16))
        reused = [c.call("POST", "/v1/chat/completions", chat(n=16)) for _ in range(5)]
    assert fresh.content_times()[0] - fresh.sent < 0.030
    late = sorted(r.content_times()[0] - r.sent for r in reused)
    assert late[len(late) // 2] >= 0.034, late  # the 40 ms floor, counted from the headers' arrival
    assert all(len(r.contents()) == 16 for r in reused)


def test_max_concurrency_queues_fifo_and_queue_time_is_ttft() -> None:
    with (
        sim_proc("--max-concurrency", "1", ttft_ms=40.0, itl_ms=10.0) as s,
        client(s) as c1,
        client(s) as c2,
    ):
        t1 = c1.send("POST", "/v1/chat/completions", chat(n=5))
        t2 = c2.send("POST", "/v1/chat/completions", chat(n=5))
        box: list[Response] = []
        reader = threading.Thread(target=lambda: box.append(c2.response(t2)))
        reader.start()
        r1 = c1.response(t1)
        reader.join(5)
        (r2,) = box
        assert r1.complete and r2.complete
        first_duration = r1.content_times()[-1] - t1
        # Both got their role chunk at once; the queued one's first token waits for the first stream.
        assert r2.first_byte - t2 < first_duration
        assert r2.content_times()[0] - t2 >= first_duration
        assert s.stats()["max_in_flight"] == 2


def test_max_concurrency_serves_n_at_once_and_counts_the_queue() -> None:
    """Five requests at once against `--max-concurrency 3`: three generate, two wait FIFO for a
    slot (their first token only after a first stream ended); the host counts both."""
    with sim_proc("--max-concurrency", "3", ttft_ms=40.0, itl_ms=10.0) as s:
        clients = [client(s) for _ in range(5)]
        with contextlib.ExitStack() as stack:
            cs = [stack.enter_context(c) for c in clients]
            sent = [c.send("POST", "/v1/chat/completions", chat(n=5)) for c in cs]
            box: dict[int, Response] = {}
            readers = [
                threading.Thread(target=lambda i=i: box.__setitem__(i, cs[i].response(sent[i])))
                for i in range(5)
            ]
            for t in readers:
                t.start()
            for t in readers:
                t.join(10)
        assert len(box) == 5 and all(r.complete for r in box.values())
        firsts = sorted(box[i].content_times()[0] - sent[i] for i in range(5))
        shortest_stream = min(box[i].content_times()[-1] - sent[i] for i in range(5))
        # Three start at once; the last two wait for a slot: their TTFT includes a whole stream.
        assert firsts[2] < shortest_stream <= firsts[3]
        stats = s.stats()
        assert stats["max_generating"] == 3 and stats["queued_total"] == 2 and stats["max_queued"] == 2
        assert stats["generating"] == 0 and stats["queued"] == 0 and stats["max_in_flight"] == 5


def test_client_gone_mid_stream_frees_its_slot() -> None:
    with sim(ttft_ms=1.0, itl_ms=5.0, max_concurrency=1) as s:
        c = Client(s.base_url)
        c.send("POST", "/v1/chat/completions", chat(n=200))
        c.sock.recv(1000)
        c.close()
        r = post(s, chat(n=3))  # waits for the slot the vanished stream held
        assert r.complete and len(r.contents()) == 3
        stats = s.stats()
        assert stats["in_flight"] == 0 and stats["generating"] == 0 and stats["tokens"] < 200 + 3


def test_jitter_varies_gaps_but_keeps_count_and_order() -> None:
    with sim_proc("--jitter-ms", "2", ttft_ms=2.0, itl_ms=3.0) as s:
        r = post(s, chat(n=20))
        times = r.content_times()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) == 20 and r.complete and min(gaps) >= 0
        assert max(gaps) - min(gaps) > 0.001


def test_timing_of_one_stream() -> None:
    """The sim in its own process, read by this test's plain client (user-space stamps, so 25 ms of
    slack above for a loaded machine reading late; never early, since the sim is never early)."""
    with sim_proc(ttft_ms=50.0, itl_ms=5.0) as s:
        r = post(s, chat(n=11))
        times = r.content_times()
        ttft = times[0] - r.sent
        assert 0.0495 <= ttft <= 0.075
        assert r.first_byte - r.sent < 0.030  # the role chunk does not wait for the TTFT
        mean_gap = (times[-1] - times[0]) / 10
        assert 0.004 <= mean_gap <= 0.0075


def test_per_model_timing_overrides_global() -> None:
    fast, slow = "fast-generic-cpu:1", "slow-generic-cpu:1"
    flags = ("--model", fast, "--model", slow, "--model-timing", f"{fast}=1,1")
    with sim_proc(*flags, ttft_ms=300.0, itl_ms=1.0) as s:
        r = post(s, chat(n=2, model=fast))
        assert r.content_times()[0] - r.sent < 0.2
        r = post(s, chat(n=1, model=slow))
        assert r.content_times()[0] - r.sent >= 0.2995


def test_answer_and_answers_file_mapping(tmp_path: Path) -> None:
    with sim(answer="Paris is the capital.") as s:
        r = post(s, chat(n=10, usage=True))
        assert r.contents() == ["Paris", " is", " the", " capital."]
        assert r.chunks()[-2]["choices"][0]["finish_reason"] == "stop"
        assert r.chunks()[-1]["usage"]["completion_tokens"] == 4
        cut = post(s, chat(n=2))
        assert (
            "".join(cut.contents()) == "Paris is"
            and cut.chunks()[-1]["choices"][0]["finish_reason"] == "length"
        )
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"Japan": "Tokyo", "France": "Paris"}))
    args = build_parser().parse_args(
        ["serve", "sim", "--answers-file", str(answers), "--answer", "I do not know"]
    )
    with SimServer(config_from_args(args)) as s:

        def ask(question: str) -> str:
            body = {**chat(n=20, stream=False), "messages": [{"role": "user", "content": question}]}
            return str(post(s, body).json()["choices"][0]["message"]["content"])

        assert ask("What is the capital of Japan?") == "Tokyo"
        assert ask("And of France?") == "Paris"
        assert ask("And of Peru?") == "I do not know"


def test_cli_flags_build_the_config() -> None:
    args = build_parser().parse_args(
        ["serve", "sim", "--model", "m:1", "--model", "n:2", "--model-timing", "m:1=5,0.5", "--ttft-ms", "7",
         "--fault-500", "0.25", "--fault-bad-event", "1", "--max-concurrency", "3", "--seed", "9",
         "--stall-then", "close", "--down-after-s", "2"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.models == ("m:1", "n:2") and config.model_timing == {"m:1": (5.0, 0.5)}
    assert config.ttft_ms == 7.0 and config.fault_500 == 0.25 and config.fault_bad_event == 1.0
    assert config.max_concurrency == 3 and config.seed == 9 and config.stall_then == "close"
    assert config.down_after_s == 2.0 and config.down_for_s == 5.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "sim", "--fault-drop", "1.5"])


def test_cli_serves_prints_ready_line_and_exits_0_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "serve", "sim", "--port", "0", "--ttft-ms", "1", "--itl-ms", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["ready"] is True and ready["pid"] == proc.pid
        assert ready["models"] == list(DEFAULT_MODELS)
        assert ready["base_url"].startswith("http://127.0.0.1:") and ready["base_url"].endswith("/v1")
        c = Client(ready["base_url"])
        assert len(c.call("POST", "/v1/chat/completions", chat(n=3)).contents()) == 3
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------
# Faults, each at probability 1


def test_fault_500_429_404_empty_body() -> None:
    with sim(fault_500=1.0) as s:
        r = post(s, chat())
        assert r.status == 500 and r.header("x-sim-fault") == "500"
        assert r.json()["error"]["type"] == "server_error"
        assert s.stats()["faults"] == {"500": 1}
    with sim(fault_429=1.0, retry_after_s=3) as s:
        r = post(s, chat())
        assert r.status == 429 and r.header("retry-after") == "3" and r.header("x-sim-fault") == "429"
        assert "error" in r.json()
    with sim(fault_404=1.0) as s:
        _assert_error(post(s, chat()), 404)
        assert post(s, chat(stream=False)).header("x-sim-fault") == "404"
    with sim(fault_empty_body=1.0) as s:
        r = post(s, chat())
        assert r.status == 200 and r.body == b"" and r.header("content-length") == "0"
        assert r.header("x-sim-fault") == "empty-body"
    with sim(fault_500=1.0, fault_429=1.0) as s:  # one whole-reply fault at most: the first drawn
        assert post(s, chat()).status == 500


def test_faults_are_not_drawn_for_other_routes_or_bad_requests() -> None:
    with sim(fault_500=1.0) as s, client(s) as c:
        assert c.call("GET", "/v1/models").status == 200
        assert c.call("POST", "/v1/chat/completions", {**chat(), "model": "x"}).status == 404
        assert s.stats()["faults"] == {}


def test_fault_refuse_resets_the_connection() -> None:
    with sim(fault_refuse=1.0) as s:
        # The reset may already reach connect(), else the first send or read.
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            sock = socket.create_connection(("127.0.0.1", s.port), 5)
            try:
                time.sleep(0.05)
                sock.sendall(b"GET /v1/models HTTP/1.1\r\n\r\n")
                sock.recv(100)
            finally:
                sock.close()
        assert s.stats()["faults"] == {"refuse": 1}


def test_down_window_refuses_connects_then_recovers() -> None:
    with sim(down_after_s=0.2, down_for_s=0.4) as s:
        with client(s) as c:
            assert c.call("GET", "/v1/models").status == 200
            time.sleep(0.35)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", s.port), 2)
            # A connection opened before the window goes on working.
            assert c.call("GET", "/v1/models").status == 200
        time.sleep(0.45)
        with client(s) as c:
            assert c.call("GET", "/v1/models").status == 200
        assert s.stats()["faults"] == {"down": 1}


def test_fault_drop_cuts_the_stream_without_terminator() -> None:
    with sim(fault_drop=1.0, itl_ms=1.0) as s:
        for _ in range(3):
            r = post(s, chat(n=10, usage=True))
            assert r.status == 200 and r.header("x-sim-fault") == "drop" and not r.complete
            assert 1 <= len(r.contents()) <= 9
            assert all(not c["choices"] or c["choices"][0]["finish_reason"] is None for c in r.chunks())
        r = post(s, chat(n=10, stream=False))
        assert not r.complete and 0 < len(r.body) < int(r.header("content-length") or 0)


def test_fault_bad_event_one_invalid_event_then_the_rest() -> None:
    with sim(fault_bad_event=1.0) as s:
        r = post(s, chat(n=8, usage=True))
        assert r.complete and r.header("x-sim-fault") == "bad-event"
        bad = []
        good = []
        for d in r.datas():
            try:
                good.append(json.loads(d) if d != b"[DONE]" else None)
            except ValueError:
                bad.append(d)
        assert len(bad) == 1 and bad[0].startswith(b"{")
        contents = [c for c in good if c and _has_content(c)]
        assert len(contents) == 8 and good[-2]["usage"]["completion_tokens"] == 8
        with pytest.raises(ValueError):
            post(s, chat(n=8, stream=False)).json()


def test_fault_stall_then_continue_or_close() -> None:
    with sim_proc("--fault-stall", "1", "--stall-s", "0.3", itl_ms=1.0) as s:
        r = post(s, chat(n=4))
        times = r.content_times()
        assert r.complete and r.header("x-sim-fault") == "stall" and len(times) == 4
        # From the send (a late read can only make it later): ttft + stall; then on at once.
        assert times[1] - r.sent >= 0.001 + 0.3 - 0.0005 and times[3] - times[1] < 0.2
    with sim_proc("--fault-stall", "1", "--stall-s", "0.2", "--stall-then", "close") as s:
        r = post(s, chat(n=4))
        assert not r.complete and len(r.contents()) == 1
        assert time.perf_counter() - r.sent >= 0.1995


def test_fault_slow_headers_delays_the_whole_response() -> None:
    with sim_proc("--fault-slow-headers", "1", "--slow-headers-ms", "250") as s:
        r = post(s, chat(n=2))
        assert r.first_byte - r.sent >= 0.2495 and r.complete and r.header("x-sim-fault") == "slow-headers"


def test_fault_no_usage_omits_usage_even_when_asked() -> None:
    with sim(fault_no_usage=1.0) as s:
        r = post(s, chat(n=3, usage=True))
        assert r.complete and r.header("x-sim-fault") == "no-usage"
        assert all("usage" not in c for c in r.chunks()) and len(r.contents()) == 3
        assert "usage" not in post(s, chat(n=3, stream=False)).json()


def test_fault_split_cuts_writes_at_odd_boundaries() -> None:
    with sim(fault_split=1.0, itl_ms=5.0) as s:
        r = post(s, chat(n=12, usage=True))
        assert r.complete and r.header("x-sim-fault") == "split"
        assert len(r.contents()) == 12 and r.datas()[-1] == b"[DONE]"
        assert len(r.reads) > 2 * 16  # each write of the reply came in several pieces
        joins = list(itertools.pairwise(r.reads))
        assert any(a.endswith(b"\n") and b.startswith(b"\n") for a, b in joins)  # inside "\n\n"
        assert any(a.endswith(b"\r") and b.startswith(b"\n") for a, b in joins)  # inside a CRLF
        # Inside a chunk-size line: its first hex digit alone.
        assert any(len(a) == 1 and a in b"0123456789abcdef" for a in r.reads)


def test_fault_content_type_sse_body_as_json() -> None:
    with sim(fault_content_type=1.0) as s:
        r = post(s, chat(n=3))
        assert r.status == 200 and r.header("content-type") == "application/json"
        assert r.header("x-sim-fault") == "content-type" and len(r.contents()) == 3
        r = post(s, chat(n=3, stream=False))
        assert r.header("content-type") == "application/json" and r.body.startswith(b"data: {")
        assert r.body.endswith(b"data: [DONE]\n\n")


def test_faults_combine_and_draws_are_reproducible() -> None:
    def run() -> list[str | None]:
        with sim(fault_500=0.3, fault_no_usage=0.5, seed=3) as s:
            return [post(s, chat(n=2, usage=True)).header("x-sim-fault") for _ in range(12)]

    first = run()
    assert first == run()
    assert {"500", "no-usage"} <= {k for v in first if v for k in v.split(",")}
