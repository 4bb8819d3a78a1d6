"""The harness against a minimal raw-socket client, on one real Foundry Local host:
`python benchmarks/bench_foundry.py [--quick]`.

One embedded Foundry Local host (foundry-local-sdk, the shipped tiny model) serves both clients in
turn, interleaved per repeat so the machine's noise falls on both alike:

  raw      a selectors loop in this file: keep-alive connections with TCP_QUICKACK before every
           read, the request written by hand, the first non-empty `"content"` found by byte search;
           stamps taken right after each recv (the floor of what a Python client can do)
  harness  `harness run --host URL --users C --connection reuse-quickack` (the real CLI, Locust,
           the harness's client), figures read from its records.jsonl

At concurrency 1 and 4, 128 tokens per request: output tokens/s (all streams, requests sent in the
steady window) and TTFT p50. Targets: harness within 3 % (tokens/s) and 1 ms (TTFT p50) of raw.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.servers.foundry import start_foundry_host

TOKENS = 128
SO_TIMESTAMPNS = 35  # Linux; Python does not export it


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process (the host's native threads too) to `cpus`."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


WARM_S = 2.0


def raw_client(base_url: str, model: str, concurrency: int, duration_s: float) -> dict[str, float]:
    parts = urlsplit(base_url)
    body = orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Count slowly."}],
            "max_tokens": TOKENS,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    request = (
        f"POST {parts.path}/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sel = selectors.DefaultSelector()
    state = {}

    def send(sock: socket.socket) -> None:
        sock.sendall(request)
        state[sock] = {"sent": time.perf_counter_ns(), "first": None, "tokens": 0, "buf": b""}

    for _ in range(concurrency):
        s = socket.create_connection((parts.hostname, parts.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        send(s)
    start = time.perf_counter_ns()
    end_at = start + int(duration_s * 1e9)
    done: list[dict] = []
    while time.perf_counter_ns() < end_at:
        for key, _ in sel.select(0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            data, anc, _flags, _addr = sock.recvmsg(65536, 64)
            stamp = time.perf_counter_ns()
            for level, kind, raw in anc:  # the kernel's receive time, on the perf_counter clock
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack_from("qq", raw)
                    stamp = min(stamp, sec * 10**9 + nsec - (time.time_ns() - time.perf_counter_ns()))
            st = state[sock]
            n = data.count(b'"content":"') - data.count(b'"content":""')
            if n and st["first"] is None:
                st["first"] = stamp
            st["tokens"] += n
            st["buf"] = (st["buf"] + data)[-64:]
            if b"0\r\n\r\n" in st["buf"]:  # the chunked terminator after [DONE]: next request
                done.append({**st, "end": stamp})
                send(sock)
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    lo = start + int(WARM_S * 1e9)
    steady = [r for r in done if r["sent"] >= lo]
    window = (max(r["end"] for r in steady) - min(r["sent"] for r in steady)) / 1e9
    return {
        "tokens_per_s": sum(r["tokens"] for r in steady) / window,
        "ttft_ms_p50": statistics.median((r["first"] - r["sent"]) / 1e6 for r in steady),
        "requests": len(steady),
    }


def harness_client(base_url: str, concurrency: int, duration_s: float, out: Path) -> dict[str, float]:
    scenario = out / "same-request.yaml"  # the very request the raw client sends
    scenario.write_text(
        "prompts: [{id: count, text: Count slowly.}]\n"
        f"request: {{max_tokens: {TOKENS}, temperature: 0}}\n"
        "load: {stagger: 0}\nwarmup: {requests: 1}\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "run",
            str(scenario),
            "--host",
            base_url,
            "--users",
            str(concurrency),
            "--spawn-rate",
            str(concurrency),
            "--duration",
            f"{duration_s}s",
            "--max-tokens",
            str(TOKENS),
            "--connection",
            "reuse-quickack",
            "--out",
            str(out),
            "--no-report",
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 120,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    recs = [orjson.loads(x) for x in (run_dir / "records.jsonl").read_bytes().splitlines() if x.strip()]
    recs = [r for r in recs if not r["warmup"] and r["ok"]]
    lo = min(r["sent_unix_ns"] for r in recs) + WARM_S * 1e9
    steady = [r for r in recs if r["sent_unix_ns"] >= lo]
    ends = [r["sent_unix_ns"] + r["e2e_ms"] * 1e6 for r in steady]
    window = (max(ends) - min(r["sent_unix_ns"] for r in steady)) / 1e9
    return {
        "tokens_per_s": sum(r["output_tokens"] for r in steady) / window,
        "ttft_ms_p50": statistics.median(r["ttft_ms"] for r in steady),
        "requests": len(steady),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat of 8 s runs")
    args = ap.parse_args()
    duration = 8.0 if args.quick else 12.0
    repeats = 1 if args.quick else 3
    host = start_foundry_host()
    # Host on CPU 0, clients on CPU 1: neither client may slow the host by taking its CPU.
    two_cpus = len(os.sched_getaffinity(0)) >= 2
    if two_cpus:
        pin(host.pid, {0})
        os.sched_setaffinity(0, {1})
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(repeats):
                for c in (1, 4):
                    results.setdefault(("raw", c), []).append(
                        raw_client(host.base_url, host.models[0], c, duration)
                    )
                    results.setdefault(("harness", c), []).append(
                        harness_client(host.base_url, c, duration, Path(tmp))
                    )
    finally:
        host.stop()
    print(
        f"Foundry Local (tiny model), {TOKENS} tokens per request, {duration:g} s runs, medians of {repeats}"
    )
    print(f"{'client':<9}{'c':>3}{'tokens/s':>11}{'TTFT p50 (ms)':>15}{'requests':>10}")
    verdicts = []
    for c in (1, 4):
        med = {
            who: {
                k: statistics.median(r[k] for r in results[(who, c)])
                for k in ("tokens_per_s", "ttft_ms_p50", "requests")
            }
            for who in ("raw", "harness")
        }
        for who in ("raw", "harness"):
            m = med[who]
            print(f"{who:<9}{c:>3}{m['tokens_per_s']:>11,.0f}{m['ttft_ms_p50']:>15.2f}{m['requests']:>10.0f}")
        dt = (med["harness"]["tokens_per_s"] / med["raw"]["tokens_per_s"] - 1) * 100
        dttft = med["harness"]["ttft_ms_p50"] - med["raw"]["ttft_ms_p50"]
        ok = abs(dt) <= 3 and abs(dttft) <= 1
        verdicts.append(ok)
        print(
            f"  c={c}: harness vs raw: tokens/s {dt:+.1f} %, TTFT p50 {dttft:+.2f} ms -> {'PASS' if ok else 'FAIL'}"
        )
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
