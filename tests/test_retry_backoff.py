"""`retry: {on_429: retry}` against a host that answers 429 without Retry-After: the client's own
back-off (backoff_s, doubling, capped by max_retries), every attempt recorded.

Real processes: the simulated host as its own process (`--fault-429 P --no-retry-after`, seeded;
one user sends one request at a time, so the same attempts are refused every run) and `harness
run`. Counts are checked against the host's own (`/sim/stats`: chat requests received and 429s it
sent), timing two-sided.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness_helpers import harness, last_line, records, sim_host

pytestmark = pytest.mark.slow

BACKOFF_S = 0.1
MAX_RETRIES = 3
#: How late a retry may go out beyond its back-off on a loaded 2-core machine. Tighter than the
#: smallest step of the doubling (0.1 s), so a back-off that does not double (or doubles twice)
#: lands outside.
LATE_S = 0.08


def sim_stats(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/sim/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
        return stats


def test_429_without_retry_after_backs_off_doubling_and_records_every_attempt(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "name": "backoff",
                "request": {"max_tokens": 4},
                "load": {"users": 1, "duration": "4s", "stagger": 0, "stop_timeout": "10s"},
                "warmup": {"requests": 0},
                "retry": {"on_429": "retry", "max_retries": MAX_RETRIES, "backoff_s": BACKOFF_S},
            }
        )
    )
    with sim_host(
        "--ttft-ms", "5", "--itl-ms", "1", "--fault-429", "0.5", "--no-retry-after", "--seed", "2"
    ) as sim:
        proc = harness("run", str(scenario), "--host", sim.base_url, "--out", str(tmp_path), "--no-report")
        stats = sim_stats(sim.base_url)
    assert proc.returncode == 0, proc.stderr
    recs = records(Path(last_line(proc.stdout)))
    # Every request the host received is one record; every 429 it sent is one `http_429` record,
    # and every other request succeeded.
    refused = [r for r in recs if r["error"] == "http_429"]
    assert len(recs) == stats["chat_requests"]
    assert len(refused) == stats["faults"]["429"] > 0
    assert all(r["http_status"] == 429 and not r["ok"] for r in refused)
    assert all(r["ok"] for r in recs if r["error"] != "http_429")

    by_key = {(r["worker"], r["seq"]): r for r in recs}
    retry_of = {(r["worker"], r["extra"]["retry_of"]): r for r in recs if r["extra"].get("attempt")}
    attempts_seen = set()
    gave_up = 0
    for r in refused:
        attempt = r["extra"].get("attempt", 0)
        nxt = retry_of.get((r["worker"], r["seq"]))
        if attempt == MAX_RETRIES:
            assert nxt is None, "no retry after the last one"
            gave_up += 1
            continue
        # Each 429 short of the last retry is retried once, with the same prompt, one attempt on.
        assert nxt is not None, f"429 at attempt {attempt} was not retried"
        assert nxt["extra"]["attempt"] == attempt + 1 and nxt["prompt_id"] == r["prompt_id"]
        # ...after backoff_s * 2**attempt: never sooner, and not much later.
        wait_s = BACKOFF_S * 2**attempt
        gap_s = (nxt["sent_unix_ns"] - (r["sent_unix_ns"] + r["e2e_ms"] * 1e6)) / 1e9
        assert wait_s - 0.002 <= gap_s < wait_s + LATE_S, (attempt, gap_s)
        attempts_seen.add(attempt)
    # The doubling was exercised, not just the first wait, and a request gave up: one user sends
    # one request at a time, so the sim's seeded draws fall on the same attempts every run (the
    # first give-up comes about 2 s in).
    assert {0, 1, 2} <= attempts_seen and gave_up >= 1
    # Chains end in a success unless the last retry was refused too.
    for r in recs:
        if r["extra"].get("attempt") and r["error"] != "http_429":
            assert r["ok"] and by_key[(r["worker"], r["extra"]["retry_of"])]["error"] == "http_429"
    finals = [r for r in recs if r["ok"] and r["extra"].get("attempt")]
    assert finals, "some retried requests finally succeeded"
