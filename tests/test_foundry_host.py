"""The embedded Foundry Local host (`harness serve foundry`) as real processes on 127.0.0.1.

Checks the shipped tiny model end to end through the real native web service: listing, streaming to
exactly `max_tokens` with printable text and usage, greedy repeatability, non-streaming replies,
clean SIGTERM, option errors, and that the host never tries to connect anywhere but loopback
(strace). Also checks that the committed model folder matches its README, and (slow, needs torch)
that `tools/build_tiny_model.py` rebuilds it byte for byte.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from harness.servers.foundry import default_model_dir, start_foundry_host
from harness.servers.ready import ChildHost

pytestmark = pytest.mark.foundry

REPO = Path(__file__).resolve().parent.parent
TINY_ID = "tiny-chat-generic-cpu:1"
MESSAGES = [{"role": "user", "content": "Tell me about load testing."}]


# ---------------------------------------------------------------------------------------------
# A minimal client: one new connection per request, whole body read, SSE split by hand
# ---------------------------------------------------------------------------------------------


def request(
    base_url: str, method: str, path: str, body: Any = None, timeout: float = 30
) -> tuple[int, bytes]:
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, u.path + path, data, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def chat(base_url: str, *, stream: bool, max_tokens: int = 64, model: str = TINY_ID) -> tuple[int, bytes]:
    body: dict[str, Any] = {
        "model": model,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return request(base_url, "POST", "/chat/completions", body)


def sse_events(raw: bytes) -> list[Any]:
    """`data:` payloads in order, JSON-decoded except the final `[DONE]`."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data:"):
                payload = line[5:].strip()
                out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def printable(text: str) -> bool:
    return all(32 <= ord(c) < 127 for c in text)


# ---------------------------------------------------------------------------------------------
# One host for the wire tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildHost]:
    log = tmp_path_factory.mktemp("foundry") / "host.log"
    h = start_foundry_host(log_path=log)
    try:
        yield h
    finally:
        h.stop()


def test_ready_line_and_model_list(host: ChildHost) -> None:
    assert host.models == [TINY_ID]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/catalogs/local/v1", host.base_url), host.base_url
    status, body = request(host.base_url, "GET", "/models")
    assert status == 200
    assert TINY_ID in [m["id"] for m in json.loads(body)["data"]]


def test_stream_runs_exactly_to_max_tokens(host: ChildHost) -> None:
    status, raw = chat(host.base_url, stream=True, max_tokens=64)
    assert status == 200, raw[:300]
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    tokens = [t for t in contents if t]
    assert len(tokens) == 64
    text = "".join(tokens)
    assert printable(text), repr(text)
    finish = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finish == ["length"]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert len(usage) == 1 and usage[0]["completion_tokens"] == 64


def test_greedy_is_repeatable_and_matches_non_streaming(host: ChildHost) -> None:
    texts = []
    for _ in range(2):
        _, raw = chat(host.base_url, stream=True, max_tokens=32)
        texts.append(
            "".join(
                c["choices"][0]["delta"].get("content") or "" for c in sse_events(raw)[:-1] if c["choices"]
            )
        )
    assert texts[0] == texts[1] and texts[0]
    status, body = chat(host.base_url, stream=False, max_tokens=32)
    assert status == 200
    reply = json.loads(body)
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 32
    assert reply["choices"][0]["message"]["content"] == texts[0]


def test_unknown_model_is_404_json(host: ChildHost) -> None:
    status, body = chat(host.base_url, stream=True, model="no-such-model:1")
    assert status == 404
    assert "error" in json.loads(body)


# ---------------------------------------------------------------------------------------------
# Lifecycle and options
# ---------------------------------------------------------------------------------------------


def test_sigterm_mid_stream_exits_cleanly(tmp_path: Path) -> None:
    h = start_foundry_host(log_path=tmp_path / "host.log")
    u = urlsplit(h.base_url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
    body = {"model": TINY_ID, "messages": MESSAGES, "max_tokens": 3000, "stream": True}
    conn.request("POST", u.path + "/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.read(200)  # generation is under way
    t0 = time.monotonic()
    h.proc.send_signal(signal.SIGTERM)
    try:
        rc = h.proc.wait(8)
    finally:
        conn.close()
        h.stop()
    assert rc == 0, (tmp_path / "host.log").read_text()[-2000:]
    assert time.monotonic() - t0 < 8
    assert not Path(h.ready["app_dir"]).exists(), "temporary app dir left behind"


def test_repeated_model_dirs_with_ids() -> None:
    tiny = default_model_dir()
    h = start_foundry_host([tiny, tiny], model_ids=["a-generic-cpu:1", "b-generic-cpu:2"])
    try:
        assert h.models == ["a-generic-cpu:1", "b-generic-cpu:2"]
        status, raw = chat(h.base_url, stream=False, max_tokens=4, model="b-generic-cpu:2")
        assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 4
    finally:
        assert h.stop() == 0


def test_reused_app_dir_serves_only_this_run(tmp_path: Path) -> None:
    app = ["--app-dir", str(tmp_path / "app")]
    first = start_foundry_host(extra_args=app)
    assert first.stop() == 0
    second = start_foundry_host([default_model_dir()], model_ids=["again-generic-cpu:1"], extra_args=app)
    try:
        _, body = request(second.base_url, "GET", "/models")
        assert [m["id"] for m in json.loads(body)["data"]] == ["again-generic-cpu:1"]
    finally:
        assert second.stop() == 0
    assert (tmp_path / "app" / "logs").is_dir()  # a given app dir is kept


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model-dir", "/nonexistent"], "genai_config.json"),
        (["--alias", "phi-4-mini"], "--allow-download"),
        (["--model-id", "a-generic-cpu:1", "--model-id", "b-generic-cpu:1"], "pair up"),
        (["--model-id", "no-version"], "name:version"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "serve", "foundry", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("harness")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# No outbound connections
# ---------------------------------------------------------------------------------------------

_CONNECT = re.compile(r"connect\(\d+, \{sa_family=(AF_\w+)(.*)")
_INET4 = re.compile(r'inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'inet_pton\(AF_INET6, "([^"]+)"')


def outbound_connects(trace: str) -> tuple[list[str], int]:
    """(connect() lines to anything but loopback or a Unix socket, number of loopback IP connects)."""
    bad: list[str] = []
    loopback = 0
    for line in trace.splitlines():
        m = _CONNECT.search(line)
        if not m:
            continue
        family, rest = m.groups()
        if family in ("AF_UNIX", "AF_LOCAL", "AF_UNSPEC"):  # AF_UNSPEC dissolves a UDP association
            continue
        addr = (_INET4.search(rest) or _INET6.search(rest)) if family in ("AF_INET", "AF_INET6") else None
        ip = ipaddress.ip_address(addr.group(1)) if addr else None
        if ip is not None and isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip is not None and ip.is_loopback:
            loopback += 1
        else:
            bad.append(line.strip())
    return bad, loopback


def test_outbound_parser() -> None:
    trace = "\n".join(
        [
            '1 connect(4, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
            '1 connect(5, {sa_family=AF_INET, sin_port=htons(41061), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
            '2 connect(6, {sa_family=AF_INET6, sin6_port=htons(80), inet_pton(AF_INET6, "::1", &sin6_addr)}, 28) = 0',
            '3 connect(19, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
            "3 connect(7, {sa_family=AF_UNSPEC, sa_data=...}, 16) = 0",
        ]
    )
    bad, loopback = outbound_connects(trace)
    assert loopback == 2 and len(bad) == 1 and "10.255.255.53" in bad[0]


def test_no_outbound_connection_attempts(tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install -y strace); CI installs it")
    trace_file = tmp_path / "connect.trace"
    cmd = [strace, "-f", "-qq", "-e", "trace=connect", "-o", str(trace_file)]
    cmd += [sys.executable, "-m", "harness", "serve", "foundry", "--port", "0"]
    err_path = tmp_path / "host.log"  # a file, so a chatty native log never fills a pipe
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    try:
        assert proc.stdout is not None
        ready_in_time, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready_in_time, "no ready line within 60 s under strace"
        line = proc.stdout.readline()  # the ready line (the SDK logs to stderr)
        assert line, err_path.read_text(errors="replace")[-2000:]
        ready = json.loads(line)
        base = ready["base_url"]
        root = base.rsplit("/catalogs/", 1)[0]
        assert chat(base, stream=True, max_tokens=8)[0] == 200
        # Lookups that miss are what would reach Microsoft's catalog without the stand-in.
        assert chat(base, stream=False, model="no-such-model:1")[0] == 404
        assert chat(root + "/v1", stream=False, model="phi-4-mini")[0] == 404
        assert request(root + "/v1", "GET", "/models")[0] == 200
        os.kill(int(ready["pid"]), signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    bad, loopback = outbound_connects(trace_file.read_text())
    assert not bad, "connect() to non-loopback addresses:\n" + "\n".join(bad[:20])
    assert loopback >= 1, (
        "strace saw no connect() to the catalog stand-in: the trace missed the native threads"
    )


# ---------------------------------------------------------------------------------------------
# The committed model
# ---------------------------------------------------------------------------------------------


def folder_digest(folder: Path) -> str:
    """Same digest as `tools/build_tiny_model.py` writes into the model's README."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "README.md":
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def readme_digest(folder: Path) -> str:
    m = re.search(r"Content digest[^`]*`([0-9a-f]{64})`", (folder / "README.md").read_text())
    assert m, "model README has no content digest"
    return m.group(1)


def test_committed_model_matches_its_readme() -> None:
    tiny = default_model_dir()
    assert (tiny / "genai_config.json").is_file()
    size = sum(p.stat().st_size for p in tiny.rglob("*") if p.is_file())
    assert size < 6_000_000
    assert folder_digest(tiny) == readme_digest(tiny)


@pytest.mark.slow
def test_build_is_reproducible(tmp_path: Path) -> None:
    """Rebuild the tiny model and compare bytes (needs the `models` extra: torch and the builder).

    HARNESS_MODELS_PYTHON may name the interpreter of a separate venv that has them.
    """
    python = os.environ.get("HARNESS_MODELS_PYTHON", sys.executable)
    probe = subprocess.run(
        [python, "-c", "import torch, transformers, tokenizers, onnxruntime_genai.models.builder"],
        capture_output=True,
        timeout=120,
    )
    if probe.returncode != 0:
        # Not in `make test`/CI on purpose: the `models` extra costs ~2 min and 1.3 GB per run to
        # guard tools/build_tiny_model.py alone; `make test-models` runs this test with it.
        pytest.skip("needs the `models` extra (torch, the ONNX GenAI builder): run `make test-models`")
    out = tmp_path / "tiny-chat"
    proc = subprocess.run(
        [python, str(REPO / "tools" / "build_tiny_model.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = (out / "README.md").read_text().split("Built with: ", 1)[1].split("\n", 1)[0]
    shipped = (default_model_dir() / "README.md").read_text().split("Built with: ", 1)[1].split("\n", 1)[0]
    if built != shipped:
        pytest.skip(f"library versions differ from the shipped build ({built} vs {shipped})")
    assert folder_digest(out) == readme_digest(default_model_dir())
