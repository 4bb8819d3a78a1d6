"""Hand-built records with given timings, for tests of metrics and reports.

Every record carries all the contract's required keys (`harness.records.REQUIRED_KEYS`) and the
extra ones the report reads, consistent with each other: content events every `tpot_ms` from
`ttft_ms`, E2E at the last token unless given. Times are whole microseconds, so expected values can
be written down exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from harness.records import REQUIRED_KEYS

#: Wall-clock origin of hand-built runs (2027-01-15), so `t_s` reads as seconds into the run.
T0_NS = 1_800_000_000_000_000_000


def record(
    *,
    t_s: float = 0.0,
    ttft_ms: float | None = 100.0,
    tpot_ms: float = 10.0,
    tokens: int = 10,
    e2e_ms: float | None = None,
    ok: bool = True,
    error: str | None = None,
    warmup: bool = False,
    run_id: str = "run-a",
    host: str = "http://127.0.0.1:8001/v1",
    model: str = "m1",
    stage: str = "s1",
    prompt_id: str = "p0",
    worker: str = "box:1",
    users: int = 1,
    dispatch_delay_ms: float = 0.0,
    usage_tokens: int | None = None,
    content_reads: int | None = None,
    connection: str = "reuse",
    seq: int = 0,
) -> dict[str, Any]:
    """One record sent `t_s` seconds into the run. `tokens` content events; `usage_tokens` (default:
    `tokens`) is what the server's usage reported, None for a count from events."""
    offsets = [] if ttft_ms is None else [round((ttft_ms + i * tpot_ms) * 1000) for i in range(tokens)]
    last_ms = offsets[-1] / 1000 if offsets else None
    sent = T0_NS + round(t_s * 1e9)
    if e2e_ms is None:
        e2e_ms = last_ms
    reported = tokens if usage_tokens is None else usage_tokens
    rec = {
        "run_id": run_id,
        "worker": worker,
        "host": host,
        "model": model,
        "stage": stage,
        "prompt_id": prompt_id,
        "warmup": warmup,
        "ok": ok,
        "error": error,
        "error_detail": None if error is None else f"test {error}",
        "http_status": None
        if error == "connect"
        else {"http_4xx": 400, "http_429": 429, "http_5xx": 503}.get(error or "", 200),
        "sched_unix_ns": sent - round(dispatch_delay_ms * 1e6),
        "sent_unix_ns": sent,
        "dispatch_delay_ms": dispatch_delay_ms,
        "ttfb_ms": None if ttft_ms is None else ttft_ms - 1.0,
        "ttft_ms": ttft_ms,
        "e2e_ms": e2e_ms,
        "tpot_ms": tpot_ms if tokens >= 2 and ttft_ms is not None else None,
        "event_offsets_us": offsets,
        "input_tokens": 20 if ok else None,
        "output_tokens": reported if ok else tokens,
        "tokens_source": "usage" if ok else "events",
        "finish_reason": "stop" if ok else None,
        "users": users,
        "seq": seq,
        "stream": True,
        "max_tokens": 256,
        "connection": connection,
        "conn_reused": seq > 0,
        "connect_ms": None,
        "reads": len(offsets) + 2,
        "content_reads": len(offsets) if content_reads is None else content_reads,
        "content_events": len(offsets),
        "usage_output_tokens": reported if ok else None,
        "text": None,
        "extra": {},
    }
    assert set(REQUIRED_KEYS) <= rec.keys()
    return rec


def write_run(
    run_dir: Path,
    records: Iterable[dict[str, Any]],
    *,
    slo: dict[str, float] | None = None,
    run_id: str = "run-a",
    host_samples: Iterable[dict[str, Any]] = (),
    tail: bytes = b"",
) -> Path:
    """A run folder: `records.jsonl` (+ `tail` appended raw, e.g. a cut line), `manifest.json`
    with the scenario's SLOs, and `host_metrics.jsonl` when samples are given."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = b"".join(orjson.dumps(r) + b"\n" for r in records)
    (run_dir / "records.jsonl").write_bytes(lines + tail)
    scenario: dict[str, Any] = {"name": "test"} | ({"slo": slo} if slo else {})
    manifest = {
        "run_id": run_id,
        "scenario": scenario,
        "started_utc": "2027-01-15T08:00:00Z",
        "ended_utc": None,
    }
    (run_dir / "manifest.json").write_bytes(orjson.dumps(manifest))
    samples = list(host_samples)
    if samples:
        (run_dir / "host_metrics.jsonl").write_bytes(b"".join(orjson.dumps(s) + b"\n" for s in samples))
    return run_dir
