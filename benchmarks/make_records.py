"""Write a synthetic run folder (`records.jsonl` + `manifest.json`) for benchmarking the report.

Seeded and vectorised with numpy. The shape is a plausible sweep: 2 hosts x 2 models, stages at
concurrency 1, 4, 16 and 64, 8 workers, 32 prompts; TTFT grows with concurrency, ITL 8-30 ms with
jitter, 32-128 content events per request (`event_offsets_us`), ~1.5% errors spread over the
contract's categories, 0.5% warm-up records, usage token counts that disagree with the event count
on ~0.1% of records.

    python benchmarks/make_records.py OUT_DIR [--records 1000000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

HOSTS = ("http://10.0.0.1:5273/v1", "http://10.0.0.2:5273/v1")
MODELS = ("qwen2.5-0.5b-instruct", "phi-4-mini-instruct")
STAGES = (("c1", 1), ("c4", 4), ("c16", 16), ("c64", 64))
WORKERS = tuple(f"loadgen-{i // 4}:{1000 + i}" for i in range(8))
ERRORS = (
    ("timeout", None),
    ("http_429", 429),
    ("http_5xx", 503),
    ("stream_cut", 200),
    ("connect", None),
)
#: Share of the records each stage gets: throughput ∝ c / (1 + c / 24), a host saturating.
_THROUGHPUT = np.array([c / (1 + c / 24) for _, c in STAGES])
STAGE_SHARE_CUM = np.cumsum(_THROUGHPUT) / _THROUGHPUT.sum()
CHUNK = 50_000
RUN_ID = "bench-run"


def write_run(out: Path, n_records: int, seed: int) -> Path:
    """Write `out/records.jsonl` and `out/manifest.json`; returns the records file."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start_ns = 1_790_000_000_000_000_000
    stage_s = 120.0
    path = out / "records.jsonl"
    with open(path, "wb") as fh:
        for first in range(0, n_records, CHUNK):
            n = min(CHUNK, n_records - first)
            fh.write(_chunk(rng, first, n, n_records, start_ns, stage_s))
    manifest = {
        "run_id": RUN_ID,
        "scenario": {"name": "bench", "slo": {"ttft_ms": 400.0, "tpot_ms": 40.0, "e2e_ms": 6000.0}},
        "started_utc": "2026-09-21T00:00:00Z",
        "ended_utc": "2026-09-21T00:08:00Z",
        "hosts": [{"url": h, "flavour": "sim", "models": {m: m for m in MODELS}} for h in HOSTS],
        "workers": [{"worker": w, "records": None} for w in WORKERS],
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return path


def _chunk(rng: np.random.Generator, first: int, n: int, total: int, start_ns: int, stage_s: float) -> bytes:
    # Records in send order, each stage as long, throughput saturating with concurrency.
    frac = (first + np.arange(n)) / total
    stage_i = np.minimum(np.searchsorted(STAGE_SHARE_CUM, frac, side="right"), len(STAGES) - 1)
    lower = np.r_[0.0, STAGE_SHARE_CUM][stage_i]
    within = (frac - lower) / (STAGE_SHARE_CUM[stage_i] - lower)
    conc = np.array([c for _, c in STAGES])[stage_i]
    sent_ns = start_ns + ((stage_i + within) * stage_s * 1e9).astype(np.int64)
    delay_ms = rng.exponential(0.3, n)
    host_i = rng.integers(0, len(HOSTS), n)
    model_i = rng.integers(0, len(MODELS), n)
    # A c=1 stage runs on one worker; larger stages spread their users over up to 8 workers.
    stage_workers = np.minimum(conc, len(WORKERS))
    worker_i = (rng.random(n) * stage_workers).astype(np.int64)
    prompt_i = rng.integers(0, 32, n)
    n_events = rng.integers(32, 129, n)
    ttft_ms = rng.lognormal(np.log(80.0 + 4.0 * conc), 0.25)
    itl_mean_ms = rng.uniform(8.0, 30.0, n) * (1 + conc / 24)
    gaps_us = rng.gamma(8.0, 1.0, int(n_events.sum())) / 8.0 * np.repeat(itl_mean_ms * 1000, n_events)
    gaps_us[np.r_[0, np.cumsum(n_events)[:-1]]] = ttft_ms * 1000
    bounds = np.r_[0, np.cumsum(n_events)]
    offsets_us = np.cumsum(gaps_us)
    offsets_us -= np.repeat(np.r_[0.0, offsets_us[bounds[1:-1] - 1]], n_events)
    offsets_us = offsets_us.astype(np.int64)
    last_ms = offsets_us[bounds[1:] - 1] / 1000
    e2e_ms = last_ms + rng.uniform(0.2, 2.0, n)
    err_draw = rng.random(n)
    err_i = rng.integers(0, len(ERRORS), n)
    warm = rng.random(n) < 0.005
    mismatch = rng.random(n) < 0.001

    lines = []
    for i in range(n):
        failed = err_draw[i] < 0.015
        err, status = ERRORS[err_i[i]] if failed else (None, 200)
        k = int(n_events[i])
        ev = offsets_us[bounds[i] : bounds[i + 1]]
        if failed and err in ("timeout", "connect", "http_429", "http_5xx"):
            ev = ev[:0]
        elif failed:
            ev = ev[: k // 2]
        got = len(ev)
        ok = not failed
        usage = k + (1 if mismatch[i] else 0) if ok else None
        rec: dict[str, Any] = {
            "run_id": RUN_ID,
            "worker": WORKERS[worker_i[i]],
            "host": HOSTS[host_i[i]],
            "model": MODELS[model_i[i]],
            "stage": STAGES[stage_i[i]][0],
            "prompt_id": f"p{prompt_i[i]}",
            "warmup": bool(warm[i]),
            "ok": ok,
            "error": err,
            "error_detail": None if ok else f"synthetic {err}",
            "http_status": status,
            "sched_unix_ns": int(sent_ns[i]),
            "sent_unix_ns": int(sent_ns[i]) + int(delay_ms[i] * 1e6),
            "dispatch_delay_ms": round(float(delay_ms[i]), 3),
            "ttfb_ms": round(float(ttft_ms[i]) - 1.0, 3) if err != "connect" else None,
            "ttft_ms": round(float(ttft_ms[i]), 3) if got else None,
            "e2e_ms": round(float(e2e_ms[i]), 3) if err != "connect" else None,
            "tpot_ms": round(float((ev[-1] - ev[0]) / 1000 / (got - 1)), 3) if got > 1 else None,
            "event_offsets_us": ev,
            "input_tokens": 40 + int(prompt_i[i]) if ok else None,
            "output_tokens": usage if ok else got,
            "tokens_source": "usage" if ok else "events",
            "finish_reason": "stop" if ok else None,
            "users": int(conc[i] // stage_workers[i]),
            "seq": first + i,
            "stream": True,
            "max_tokens": 128,
            "connection": "reuse",
            "conn_reused": True,
            "connect_ms": None,
            "reads": got + 2,
            "content_reads": max(1, got - got // 10) if got else 0,
            "content_events": got,
            "usage_output_tokens": usage,
            "text": None,
            "extra": {},
        }
        lines.append(orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY))
    return b"\n".join(lines) + b"\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("out", type=Path, help="run folder to write")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    path = write_run(args.out, args.records, args.seed)
    size_mb = path.stat().st_size / 1e6
    print(f"wrote {args.records} records ({size_mb:.0f} MB) to {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
