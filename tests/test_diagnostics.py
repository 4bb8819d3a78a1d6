"""Stream diagnostics on hand-built records whose pattern is known by construction, and on a real
Foundry Local host measured with each connection policy."""

from __future__ import annotations

import pytest

from harness.diagnostics import diagnose, stream_stats


def rec(
    ttfb: float, ttft: float, offsets_ms: list[float], *, reused: bool, tpot: float | None = None
) -> dict:
    offs = [int(o * 1000) for o in offsets_ms]
    reads = len(set(offs))
    if tpot is None and len(offs) > 1:
        tpot = (offsets_ms[-1] - offsets_ms[0]) / (len(offs) - 1)
    return {
        "warmup": False,
        "ok": True,
        "ttfb_ms": ttfb,
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "event_offsets_us": offs,
        "content_events": len(offs),
        "content_reads": reads,
        "conn_reused": reused,
    }


def test_nagle_from_fresh_against_reused_connections() -> None:
    fresh = [rec(1.0, 3.0, [3.0 + 0.2 * i for i in range(32)], reused=False) for _ in range(4)]
    reused = [rec(1.0, 43.0, [43.0] * 32, reused=True) for _ in range(20)]
    stats = stream_stats(fresh + reused)
    assert stats.tokens_per_read_p50 == 32 and stats.reused_ttfb_to_ttft_ms_p50 == 42.0
    (finding,) = [f for f in diagnose(stats, connection="reuse") if f.pattern == "nagle"]
    assert "+40 ms" in finding.message and "Nagle" in finding.message


def test_no_nagle_when_reused_connections_are_as_fast() -> None:
    recs = [rec(1.0, 3.0, [3.0 + 0.2 * i for i in range(32)], reused=i > 3) for i in range(24)]
    assert diagnose(stream_stats(recs), connection="reuse-quickack") == []
    assert diagnose(stream_stats(recs), connection="reuse") == []


def test_bursts_with_normal_tpot_blame_the_client_only_with_evidence() -> None:
    # Tokens 10 ms apart at the server, read in pairs: raw gaps alternate 0 and 20 ms.
    offsets = [100.0 + 20 * (i // 2) for i in range(32)]
    recs = [rec(1.0, 100.0, offsets, reused=True, tpot=10.0) for _ in range(10)]
    stats = stream_stats(recs)
    assert stats.burst_share == 1.0 and stats.raw_gap_ms_p50 == 0.0
    assert [f.pattern for f in diagnose(stats, client_cpu_max=95.0)] == ["client_limited"]
    assert [f.pattern for f in diagnose(stats, client_cpu_max=30.0, client_lag_ms_p99=1.0)] == ["bursty"]


def test_first_wave_inflates_the_tail() -> None:
    first = [rec(1.0, 300.0 + i, [300.0 + i, 310.0 + i], reused=False) for i in range(5)]
    later = [rec(1.0, 50.0 + (i % 5), [50.0 + (i % 5), 60.0 + (i % 5)], reused=True) for i in range(50)]
    found = [f.pattern for f in diagnose(stream_stats(first + later), connection="reuse-quickack")]
    assert found == ["first_wave"]


def test_warmup_and_failures_are_ignored() -> None:
    bad = {**rec(1.0, 43.0, [43.0] * 8, reused=True), "ok": False}
    warm = {**rec(1.0, 43.0, [43.0] * 8, reused=True), "warmup": True}
    assert stream_stats([bad, warm]).requests == 0


@pytest.mark.slow
@pytest.mark.foundry
def test_real_foundry_host_nagle_named_for_reuse_only() -> None:
    """Records from a real Foundry Local host, one group per policy, as a run would write them."""
    from harness.client import Connection, chat_body
    from harness.records import record_from_result
    from harness.servers.foundry import start_foundry_host

    host = start_foundry_host()
    try:
        body = chat_body(host.models[0], [{"role": "user", "content": "hi"}], max_tokens=64)
        found = {}
        for policy in ("reuse", "new", "reuse-quickack"):
            recs = []
            for _user in range(3):  # three users: three fresh connections, then reused ones
                conn = Connection(host.base_url, policy=policy)
                for i in range(8):
                    res = conn.chat(body)
                    r = record_from_result(
                        res,
                        run_id="r",
                        worker="w:1",
                        host=host.base_url,
                        model=host.models[0],
                        stage="main",
                        prompt_id="p",
                        warmup=False,
                        sched_unix_ns=None,
                        users=1,
                        seq=i,
                        stream=True,
                        max_tokens=64,
                        connection=policy,
                    )
                    recs.append(
                        {**r.to_dict()} if hasattr(r, "to_dict") else __import__("dataclasses").asdict(r)
                    )
                conn.close()
            found[policy] = {f.pattern for f in diagnose(stream_stats(recs), connection=policy)}
    finally:
        host.stop()
    assert "nagle" in found["reuse"], found
    assert "nagle" not in found["new"] and "nagle" not in found["reuse-quickack"], found
