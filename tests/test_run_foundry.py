"""`harness run` against the embedded real Foundry Local host (foundry-local-sdk, shipped tiny model)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from harness_helpers import harness, last_line, records

pytestmark = [pytest.mark.slow, pytest.mark.foundry]


@pytest.mark.parametrize("users", [1, 4])
def test_default_run_uses_a_real_foundry_host(tmp_path: Path, users: int) -> None:
    proc = harness(
        "run",
        "--users",
        str(users),
        "--duration",
        "4s",
        "--max-tokens",
        "48",
        "--stop-timeout",
        "10s",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    (host,) = manifest["hosts"]
    assert host["embedded"] == "foundry" and host["flavour"] == "foundry"
    assert host["url"].endswith("/catalogs/local/v1")
    recs = [r for r in records(run_dir) if not r["warmup"]]
    assert len(recs) >= users * 4
    for r in recs:
        assert r["ok"], r["error_detail"]
        assert r["output_tokens"] == 48 and r["tokens_source"] == "usage" and r["content_events"] == 48
        assert r["ttft_ms"] is not None and r["tpot_ms"] is not None and r["finish_reason"] == "length"
    assert {r["users"] for r in recs} <= set(range(1, users + 1))
    samples = [orjson.loads(x) for x in (run_dir / "host_metrics.jsonl").read_bytes().splitlines()]
    assert samples and all(s["rss_bytes"] > 10_000_000 for s in samples), "the host's memory was sampled"
