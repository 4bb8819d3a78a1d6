"""The measuring core's acceptance check: `python benchmarks/bench_accuracy.py [--quick]`.

`harness serve sim --ttft-ms 100 --itl-ms 10` pinned to CPU 0, and the real CLI as a subprocess on
CPU 1: `harness run --host URL --users N --spawn-rate 50 --duration D --stop-timeout 10s
--max-tokens 64 --out TMP --no-report` (default connection policy, reuse-quickack) at 1, 50 and 200
users. From each run's records.jsonl (successful, non-warm-up requests):

  TTFT p50 within 1 ms of 100    TTFT p99 within 3 ms of 100    TPOT p50 within 0.5 ms of 10

and every request Locust counted has one record: `locust_counts.json` `counts.E2E.requests` equals
the non-warm-up records, none of them `stopped`, and `harness run` exited 0.

Users start at `--spawn-rate` per second; the first wave of connections inflates the tail, so the
latency figures skip requests sent in the first `users / spawn_rate + --trim-s` seconds of each run
(both trimmed and untrimmed p99 are printed). Locust starts floor(spawn rate) users at once every
second, and with equal lengths they keep sending together: `bunched` is the share of requests sent
within 1 ms of the previous one (`if spread` what evenly spread senders would show). With repeats, figures are medians over the runs; the
record count must match in every run. A `floor` column gives the TTFT p99 error of a lean epoll
client with kernel receive timestamps run against the same sim just before (see bench_client.py):
when it too is far off, the machine (or the sim), not the harness, is missing the target.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from bench_client import read_jsonl  # noqa: E402

from harness.servers.ready import ChildHost, start_child_host  # noqa: E402

TTFT_MS = 100.0
ITL_MS = 10.0
TOKENS = 64
LIMITS = {"ttft_p50": 1.0, "ttft_p99": 3.0, "tpot_p50": 0.5}


def harness_run(
    host: ChildHost, users: int, args: argparse.Namespace, out: Path, run_id: str, progress: bool = True
) -> dict[str, Any]:
    """One `harness run`; returns its figures (latency errors in ms, counts) and CPU use."""
    cmd = [sys.executable, "-m", "harness", "run", "--host", host.base_url]
    cmd += [
        "--users",
        str(users),
        "--spawn-rate",
        f"{args.spawn_rate:g}",
        "--duration",
        f"{args.duration_s:g}s",
    ]
    cmd += ["--stop-timeout", "10s", "--max-tokens", str(TOKENS), "--out", str(out), "--run-id", run_id]
    cmd += ["--no-report"]
    if not progress:
        cmd += ["--quiet"]
    sim = psutil.Process(host.pid)
    c0 = sim.cpu_times()
    k0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.duration_s + 180)
    wall = time.monotonic() - t0
    c1 = sim.cpu_times()
    k1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # `harness run` and its Locust child, both on the client CPU (the progress display included).
    client_cpu_s = (k1.ru_utime + k1.ru_stime) - (k0.ru_utime + k0.ru_stime)
    run_dir = out / run_id
    if not (run_dir / "records.jsonl").exists():
        raise SystemExit(
            f"bench_accuracy: harness run wrote no records (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    records = [r for r in read_jsonl(run_dir / "records.jsonl") if not r.get("warmup")]
    counts_path = run_dir / "locust_counts.json"
    counted = None
    if counts_path.exists():
        counted = orjson.loads(counts_path.read_bytes()).get("counts", {}).get("E2E", {}).get("requests")
    stopped = [r for r in records if r.get("error") == "stopped"]
    if stopped:
        # Where they were when the run ended: sent how long before the last request ended, and how far
        # they got (a stream cut at the stop vs. a request started after the stop began).
        end = max(r["sent_unix_ns"] + (r.get("e2e_ms") or 0) * 1e6 for r in records)
        for r in stopped[:5]:
            print(
                f"    stopped: sent {(end - r['sent_unix_ns']) / 1e9:.3f} s before the end, ttfb "
                f"{r.get('ttfb_ms')} ms, {len(r.get('event_offsets_us') or [])} tokens, e2e {r.get('e2e_ms')} ms"
            )
    res: dict[str, Any] = {
        "exit_code": proc.returncode,
        "records": len(records),
        "locust_counted": counted,
        "stopped": sum(1 for r in records if r.get("error") == "stopped"),
        "errors": sum(1 for r in records if not r["ok"]),
        "sim_cpu": 100 * ((c1.user + c1.system) - (c0.user + c0.system)) / wall,
        "client_cpu_ms_per_request": 1000 * client_cpu_s / len(records) if records else math.nan,
        "progress_cpu_ms": 1000 * (_manifest(run_dir).get("progress_cpu_s") or 0.0),
        "progress_lines": sum(
            1 for line in proc.stderr.splitlines() if line.startswith("harness: progress ")
        ),
        "stderr": proc.stderr[-600:] if proc.returncode else "",
    }
    ok = [r for r in records if r["ok"] and r.get("ttft_ms") is not None]
    if not ok:
        return res
    first = min(r["sent_unix_ns"] for r in records)
    trim_ns = int((users / args.spawn_rate + args.trim_s) * 1e9)
    # Lock-step: share of requests sent within 1 ms of the one before (users started in one Locust
    # spawn batch, with equal lengths, keep sending together).
    sends = np.sort(np.array([r["sent_unix_ns"] for r in records if r["sent_unix_ns"] >= first + trim_ns]))
    if len(sends) > 1:
        res["bunched"] = float(np.mean(np.diff(sends) < 1_000_000))
    for label, rows in (("", [r for r in ok if r["sent_unix_ns"] >= first + trim_ns]), ("all_", ok)):
        if not rows:
            continue
        ttft = np.array([r["ttft_ms"] for r in rows]) - TTFT_MS
        tpot = np.array([r["tpot_ms"] for r in rows if r.get("tpot_ms") is not None]) - ITL_MS
        res[f"{label}n"] = len(rows)
        res[f"{label}ttft_p50"] = float(np.percentile(ttft, 50))
        res[f"{label}ttft_p99"] = float(np.percentile(ttft, 99))
        res[f"{label}tpot_p50"] = float(np.percentile(tpot, 50)) if len(tpot) else math.nan
    return res


def _manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    return orjson.loads(path.read_bytes()) if path.exists() else {}


def floor_p99(host: ChildHost, users: int, seconds: float, work: Path) -> float:
    """TTFT p99 error of the lean kernel-stamped client at the same concurrency (ramp 2 s, settle 1 s)."""
    out = work / f"floor-{users}-{time.monotonic_ns()}.jsonl"
    cmd = [sys.executable, str(HERE / "bench_client.py"), "--worker", "floor", "--url", host.base_url]
    cmd += ["--model", host.models[0], "--users", str(users), "--ramp-s", "2", "--run-s", f"{seconds + 1:g}"]
    cmd += ["--max-tokens", str(TOKENS), "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=seconds + 120)
    records = read_jsonl(out)
    first = min(r["sent_unix_ns"] for r in records)
    rows = [r for r in records if r["ok"] and r["sent_unix_ns"] >= first + 3_000_000_000]
    if not rows:
        return math.nan
    return float(np.percentile(np.array([r["ttft_ms"] for r in rows]) - TTFT_MS, 99))


def med(runs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in runs if isinstance(r.get(key), int | float) and not math.isnan(r[key])]
    return statistics.median(vals) if vals else math.nan


def _f(v: float, fmt: str) -> str:
    return "-" if v is None or math.isnan(v) else format(v, fmt)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="12 s runs, one repeat, no floor runs")
    p.add_argument("--users", default="1,50,200", help="comma list of user counts (default 1,50,200)")
    p.add_argument("--duration-s", type=float, help="seconds per run (default 25; --quick 12)")
    p.add_argument("--repeats", type=int, help="runs per user count (default 3; --quick 1)")
    p.add_argument("--spawn-rate", type=float, default=50.0, help="users started per second (default 50)")
    p.add_argument("--trim-s", type=float, default=2.0, help="skipped after the spawn ramp (default 2)")
    p.add_argument("--no-floor", action="store_true", help="skip the reference floor-client runs")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write every run's figures here")
    p.add_argument("--keep", action="store_true", help="keep all run folders (failing ones are always kept)")
    p.add_argument(
        "--progress",
        choices=("on", "off", "both"),
        default="on",
        help="harness run's live progress (plain lines, stderr is a pipe): on (the default, as users "
        "get it), off (--quiet), or both, alternating, side by side in one run",
    )
    a = p.parse_args()
    a.duration_s = a.duration_s or (12.0 if a.quick else 25.0)
    a.repeats = a.repeats or (1 if a.quick else 3)
    floor = not (a.no_floor or a.quick)
    modes = {"on": [True], "off": [False], "both": [True, False]}[a.progress]
    # (users, progress on): with --progress both, each user count runs with and without, in turn.
    levels = [(int(u), on) for u in a.users.split(",") for on in modes]

    def label(n: int, on: bool) -> str:
        return f"{n}" if len(modes) == 1 else f"{n}/{'on' if on else 'off'}"

    os.sched_setaffinity(0, {a.client_cpu})  # harness run and its Locust child inherit this CPU
    work = Path(tempfile.mkdtemp(prefix="bench_accuracy-"))
    print(
        f"bench_accuracy: sim (ttft {TTFT_MS:g} ms, itl {ITL_MS:g} ms) on CPU {a.server_cpu}, harness run on CPU "
        f"{a.client_cpu}; {TOKENS} tokens, {a.duration_s:g} s per run, spawn rate {a.spawn_rate:g}/s, "
        f"{a.repeats} repeat(s); loadavg {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    host = start_child_host("sim", ["--port", "0", "--ttft-ms", f"{TTFT_MS:g}", "--itl-ms", f"{ITL_MS:g}"])
    os.sched_setaffinity(host.pid, {a.server_cpu})
    runs: dict[tuple[int, bool], list[dict[str, Any]]] = {lv: [] for lv in levels}
    floors: dict[tuple[int, bool], list[float]] = {lv: [] for lv in levels}
    try:
        for rep in range(a.repeats):
            for n, on in levels:
                lv = (n, on)
                if floor:
                    floors[lv].append(floor_p99(host, n, 8.0, work))
                r = harness_run(host, n, a, work / "runs", f"acc-u{n}-r{rep}-p{int(on)}", progress=on)
                runs[lv].append(r)
                print(
                    f"  [{rep + 1}/{a.repeats}] {label(n, on):>6} users: {r['records']} records, Locust counted "
                    f"{r['locust_counted']}, exit {r['exit_code']}; TTFT err p50 {_f(r.get('ttft_p50', math.nan), '+.2f')}"
                    f" p99 {_f(r.get('ttft_p99', math.nan), '+.2f')} ms, TPOT err p50 "
                    f"{_f(r.get('tpot_p50', math.nan), '+.3f')} ms, sim CPU {r['sim_cpu']:.0f}%"
                    + f", client CPU {r['client_cpu_ms_per_request']:.2f} ms/request, {r['progress_lines']} progress lines ({r['progress_cpu_ms']:.1f} ms CPU)"
                    + (f", floor p99 {floors[lv][-1]:+.2f} ms" if floor else ""),
                    flush=True,
                )
                if r["stderr"]:
                    print("    " + r["stderr"].strip().replace("\n", "\n    "))
    finally:
        host.stop()

    print(
        f"\nerrors in ms against the true TTFT {TTFT_MS:g} / TPOT {ITL_MS:g}; trimmed = requests sent after "
        f"users/{a.spawn_rate:g} + {a.trim_s:g} s; median of {a.repeats} run(s)"
    )
    head = (
        f"{'users':>6} {'records':>8} {'counted':>8} {'stopped':>7} {'n trim':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'p99 all':>8} {'TPOT p50':>9} {'floor p99':>9} {'bunched':>7} {'if spread':>9} {'cpu/req':>7}  verdict"
    )
    print(head)
    failures = 0
    lines: list[str] = []
    for n, on in levels:
        rs = runs[(n, on)]
        counts_ok = all(
            r["locust_counted"] == r["records"] and r["stopped"] == 0 and r["exit_code"] == 0 for r in rs
        )
        figs = {
            k: med(rs, k)
            for k in (
                "ttft_p50",
                "ttft_p99",
                "all_ttft_p99",
                "tpot_p50",
                "n",
                "bunched",
                "client_cpu_ms_per_request",
            )
        }
        spread = 1 - math.exp(-n * 1.0 / (TTFT_MS + (TOKENS - 1) * ITL_MS))
        checks = {k: (not math.isnan(figs[k]) and abs(figs[k]) <= lim) for k, lim in LIMITS.items()}
        checks["records"] = counts_ok
        verdict = " ".join(f"{k}:{'PASS' if v else 'FAIL'}" for k, v in checks.items())
        failures += sum(not v for v in checks.values())
        fl = statistics.median(floors[(n, on)]) if floors[(n, on)] else math.nan
        print(
            f"{label(n, on):>6} {sum(r['records'] for r in rs):>8} {sum(r['locust_counted'] or 0 for r in rs):>8} "
            f"{sum(r['stopped'] for r in rs):>7} {_f(figs['n'], '.0f'):>7} {_f(figs['ttft_p50'], '+.2f'):>9} "
            f"{_f(figs['ttft_p99'], '+.2f'):>9} {_f(figs['all_ttft_p99'], '+.2f'):>8} "
            f"{_f(figs['tpot_p50'], '+.3f'):>9} {_f(fl, '+.2f'):>9} {_f(100 * figs['bunched'], '.0f'):>6}%"
            f" {100 * spread:>8.0f}% {_f(figs['client_cpu_ms_per_request'], '.2f'):>7}  {verdict}"
        )
        for k, lim in LIMITS.items():
            lines.append(
                f"  {'PASS' if checks[k] else 'FAIL'}  {label(n, on):>6} users  {k.replace('_', ' ')} error "
                f"{_f(figs[k], '+.3f')} ms (limit ±{lim:g})"
            )
        lines.append(
            f"  {'PASS' if counts_ok else 'FAIL'}  {label(n, on):>6} users  records = Locust's E2E count in every run, "
            f"none stopped, exit 0"
        )
    print("\nchecks:")
    print("\n".join(lines))
    if a.json:
        a.json.write_bytes(
            orjson.dumps(
                {
                    "runs": {label(*lv): rs for lv, rs in runs.items()},
                    "floor_p99": {label(*lv): f for lv, f in floors.items()},
                },
                option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
            )
        )
    suspect = [
        f"acc-u{n}-r{i}-p{int(on)}"
        for (n, on), rs in runs.items()
        for i, r in enumerate(rs)
        if r["locust_counted"] != r["records"] or r["stopped"] or r["exit_code"]
    ]
    if a.keep or suspect:
        print(
            f"run folders: {work / 'runs'}"
            + (f" (record check failed: {', '.join(suspect)})" if suspect else "")
        )
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
