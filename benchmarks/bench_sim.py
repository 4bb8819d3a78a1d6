"""How fast and how exact the simulated host is: `python benchmarks/bench_sim.py`.

Starts `harness serve sim` in its own process pinned to CPU 0 and drives it from this process
pinned to CPU 1 with a lean epoll client: one keep-alive connection per stream, closed loop, output
lengths drawn per request so streams do not run in lock-step. Arrival times are the kernel's receive
timestamps (SO_TIMESTAMPNS), so a busy client does not show up as server error, except that one
read holding several events stamps them all with the last one's arrival.

Per level it prints medians over repeated runs of: token events per second the server sustained
(against what the schedule offers), server CPU %, the server's run-queue wait % (time it was ready
to run but another task had its core: the machine's noise, not the server's cost), client CPU %,
and timing error against the configured schedule in ms: TTFT (first content event − send − ttft),
ITL (gap between events − itl) and lateness (event k − send − ttft − k·itl), each p50 and p99.
`--rt` runs both processes SCHED_FIFO (root): that shows the server's own precision on a shared
machine; without it, the figures include whatever else runs there.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import socket
import statistics
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.servers.ready import start_child_host

MODEL = "qwen2.5-0.5b-instruct-generic-cpu:4"
CONTENT = b'"delta":{"content":'
END = b"\r\n0\r\n\r\n"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
ANC_SIZE = socket.CMSG_SPACE(16)
STAMP = struct.Struct("qq")


@dataclass
class Stream:
    sock: socket.socket
    rng: random.Random
    tail: bytes = b""
    n: int = 0
    sent_ns: int = 0
    arrivals: list[tuple[int, int]] = field(default_factory=list)  # (kernel ns, events in that read)


@dataclass
class Done:
    sent_ns: int
    n: int
    arrivals: list[tuple[int, int]]


def request(host: str, n: int, seq: int) -> bytes:
    body = (
        b'{"model":"%s","messages":[{"role":"user","content":"bench %d"}],"max_tokens":%d,'
        b'"stream":true,"stream_options":{"include_usage":true}}' % (MODEL.encode(), seq, n)
    )
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (
            host.encode(),
            len(body),
            body,
        )
    )


def drive(
    addr: tuple[str, int], streams: int, seconds: float, tokens: tuple[int, int], stagger_s: float
) -> list[Done]:
    """Run `streams` closed-loop streams for `seconds`; return every completed request."""
    ep = select.epoll()
    buf = bytearray(1 << 18)
    views = [memoryview(buf)]
    by_fd: dict[int, Stream] = {}
    host = f"{addr[0]}:{addr[1]}"
    for i in range(streams):
        sock = socket.create_connection(addr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setblocking(False)
        by_fd[sock.fileno()] = Stream(sock, random.Random(i))
    done: list[Done] = []
    seq = 0
    start = time.monotonic()
    stop = start + seconds
    # Stagger the first requests so the streams do not tick in unison.
    starts = sorted((start + stagger_s * i / streams, fd) for i, fd in enumerate(by_fd))
    active = 0

    def send(s: Stream) -> None:
        nonlocal seq
        seq += 1
        s.n = s.rng.randint(*tokens)
        s.tail, s.arrivals = b"", []
        s.sent_ns = time.time_ns()
        s.sock.send(request(host, s.n, seq))

    while starts or active:
        now = time.monotonic()
        while starts and starts[0][0] <= now:
            s = by_fd[starts.pop(0)[1]]
            ep.register(s.sock.fileno(), select.EPOLLIN)
            send(s)
            active += 1
        timeout = max(0.0, starts[0][0] - now) if starts else 0.5
        for fd, _ in ep.poll(timeout):
            s = by_fd[fd]
            # recvmsg_into a reused buffer: no allocation per read, and the kernel stamp comes along.
            size, anc, _, _ = s.sock.recvmsg_into(views, ANC_SIZE)
            if not size:
                raise SystemExit("bench: the server closed a connection")
            count = buf.count(CONTENT, 0, size)
            # A marker or the terminator cut between two reads.
            joined = s.tail + buf[: min(size, len(CONTENT) - 1)]
            count += joined.count(CONTENT)
            ended = buf.endswith(END, 0, size) if size >= len(END) else joined.endswith(END)
            if count:
                sec, nsec = STAMP.unpack_from(anc[0][2])
                s.arrivals.append((sec * 1_000_000_000 + nsec, count))
            s.tail = bytes(buf[max(0, size - len(CONTENT) + 1) : size])
            if ended:
                done.append(Done(s.sent_ns, s.n, s.arrivals))
                if time.monotonic() < stop:
                    send(s)
                else:
                    ep.unregister(fd)
                    active -= 1
    for s in by_fd.values():
        s.sock.close()
    ep.close()
    return done


def run_queue_wait_s(pid: int) -> float:
    """Seconds `pid` has spent ready to run but waiting for a CPU (/proc/PID/schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def measure(
    addr: tuple[str, int], pid: int, streams: int, args: argparse.Namespace, itl_ms: float
) -> dict[str, float]:
    proc = psutil.Process(pid)
    me = psutil.Process()
    c0, m0, q0 = proc.cpu_times(), me.cpu_times(), run_queue_wait_s(pid)
    w0, t0 = time.monotonic(), time.time_ns()
    done = drive(addr, streams, args.duration, (args.tokens_min, args.tokens_max), args.stagger)
    c1, m1, q1, w1 = proc.cpu_times(), me.cpu_times(), run_queue_wait_s(pid), time.monotonic()
    wall = w1 - w0
    # Throughput over the steady part only: after the stagger, before the streams wind down.
    lo, hi = t0 + int((args.stagger + 0.2) * 1e9), t0 + int(args.duration * 1e9)
    events = sum(c for d in done for ts, c in d.arrivals if lo <= ts < hi)
    ttft_ns, itl_ns = args.ttft_ms * 1e6, itl_ms * 1e6
    ttft_err, itl_err, late = [], [], []
    for d in done:
        if d.sent_ns < lo:
            continue
        stamps = np.repeat([ts for ts, _ in d.arrivals], [c for _, c in d.arrivals]).astype(np.int64)
        if len(stamps) != d.n:
            raise SystemExit(f"bench: {len(stamps)} content events, expected {d.n}")
        rel = stamps - d.sent_ns
        ttft_err.append(rel[0] - ttft_ns)
        itl_err.append(np.diff(rel) - itl_ns)
        late.append(rel - ttft_ns - np.arange(d.n) * itl_ns)
    itl_all, late_all = np.concatenate(itl_err) / 1e6, np.concatenate(late) / 1e6
    ttft_all = np.asarray(ttft_err) / 1e6
    offered = streams * 1e3 / itl_ms  # upper bound: ignores the TTFT pause of every request
    return {
        "events_s": events / ((hi - lo) / 1e9),
        "offered_s": offered,
        "server_cpu": 100 * ((c1.user + c1.system) - (c0.user + c0.system)) / wall,
        "server_wait": 100 * (q1 - q0) / wall,
        "client_cpu": 100 * ((m1.user + m1.system) - (m0.user + m0.system)) / wall,
        "requests": float(len(done)),
        "ttft_p50": float(np.percentile(ttft_all, 50)),
        "ttft_p99": float(np.percentile(ttft_all, 99)),
        "itl_p50": float(np.percentile(itl_all, 50)),
        "itl_p99": float(np.percentile(itl_all, 99)),
        "late_p50": float(np.percentile(late_all, 50)),
        "late_p99": float(np.percentile(late_all, 99)),
    }


def run_level(streams: int, itl_ms: float, args: argparse.Namespace) -> dict[str, float]:
    host = start_child_host(
        "sim",
        ["--ttft-ms", str(args.ttft_ms), "--itl-ms", str(itl_ms), "--context", "100000", *args.server_arg],
    )
    try:
        os.sched_setaffinity(host.pid, {args.server_cpu})
        if args.rt:
            os.sched_setscheduler(host.pid, os.SCHED_FIFO, os.sched_param(10))
        url = urlsplit(host.base_url)
        addr = (url.hostname or "127.0.0.1", url.port or 80)
        runs = [measure(addr, host.pid, streams, args, itl_ms) for _ in range(args.repeats)]
    finally:
        host.stop()
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--streams", default="50,200,500", help="comma list of concurrent streams")
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=10.0)
    p.add_argument(
        "--peak-itl-ms", type=float, default=2.0, help="extra run at the most streams, to saturate (0 = skip)"
    )
    p.add_argument("--tokens-min", type=int, default=40)
    p.add_argument("--tokens-max", type=int, default=120)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    p.add_argument("--stagger", type=float, default=0.3, help="seconds over which streams start")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--server-arg", action="append", default=[], help="extra `harness serve sim` argument")
    p.add_argument("--rt", action="store_true", help="run server and client SCHED_FIFO (needs root)")
    args = p.parse_args()
    os.sched_setaffinity(0, {args.client_cpu})
    if args.rt:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    levels = [(int(s), args.itl_ms) for s in args.streams.split(",")]
    if args.peak_itl_ms > 0:
        levels.append((levels[-1][0], args.peak_itl_ms))
    print(
        f"sim: ttft {args.ttft_ms} ms, {args.tokens_min}-{args.tokens_max} tokens/request, server on CPU "
        f"{args.server_cpu}, client on CPU {args.client_cpu}{', SCHED_FIFO' if args.rt else ''}; "
        f"medians of {args.repeats} runs of {args.duration} s"
    )
    print("error columns: ms, p50/p99 (kernel receive timestamps)")
    head = f"{'streams':>7} {'itl':>5} {'events/s':>9} {'offered':>8} {'srv CPU':>7} {'srv wait':>8} {'cli CPU':>7}"
    print(head + f" {'TTFT err':>13} {'ITL err':>13} {'lateness':>13}")
    for streams, itl_ms in levels:
        r = run_level(streams, itl_ms, args)
        print(
            f"{streams:>7} {itl_ms:>5g} {r['events_s']:>9.0f} {r['offered_s']:>8.0f} {r['server_cpu']:>6.0f}% "
            f"{r['server_wait']:>7.0f}% {r['client_cpu']:>6.0f}% {r['ttft_p50']:>6.2f}/{r['ttft_p99']:<6.2f} {r['itl_p50']:>6.2f}/{r['itl_p99']:<6.2f} "
            f"{r['late_p50']:>6.2f}/{r['late_p99']:<6.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
