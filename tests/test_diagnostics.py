"""Stream diagnostics on hand-built records whose pattern is known by construction, and on a real
Foundry Local host measured with each connection policy."""

from __future__ import annotations

import pytest
from harness_helpers import sim_host

from harness.diagnostics import DELAYED_ACK_MS, StreamStats, diagnose, stream_stats


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


def nagle_group(fresh_gap: float, reused_gap: float, *, fresh: int = 4, pile: int = 32) -> list[dict]:
    """A host whose own first token comes `fresh_gap` ms after the first byte; on reused connections
    it comes `reused_gap` ms after, with `pile` tokens in that first read (then 0.2 ms apart)."""

    def offsets(first: float, together: int) -> list[float]:
        return [first] * together + [first + 0.2 * (i + 1) for i in range(32 - together)]

    fresh_recs = [rec(1.0, 1.0 + fresh_gap, offsets(1.0 + fresh_gap, 1), reused=False) for _ in range(fresh)]
    reused_recs = [
        rec(1.0, 1.0 + reused_gap, offsets(1.0 + reused_gap, pile), reused=True) for _ in range(20)
    ]
    return fresh_recs + reused_recs


def nagle(recs: list[dict], connection: str = "reuse") -> list[str]:
    return [f.message for f in diagnose(stream_stats(recs), connection=connection) if f.pattern == "nagle"]


def test_nagle_from_fresh_against_reused_connections() -> None:
    stats = stream_stats(nagle_group(2.0, 42.0))
    assert stats.tokens_per_read_p50 == 32 and stats.reused_ttfb_to_ttft_ms_p50 == 42.0
    assert stats.reused_first_read_tokens_p50 == 32
    (message,) = nagle(nagle_group(2.0, 42.0))
    assert "+40 ms" in message and "Nagle" in message


@pytest.mark.parametrize(
    ("own", "reused", "named"),
    [
        (2.0, 43.0, True),  # Foundry's tiny model on a fast CPU
        (20.0, 43.0, True),  # the same on a slower CPU: +23 ms, which the old 25-60 ms window missed
        (30.0, 43.0, True),  # still clearly below the floor
        (41.0, 43.0, False),  # a host as slow as the floor pays (almost) nothing
        (55.0, 56.0, False),  # slower than the floor: reused = own, nothing to name
        (2.0, 20.0, False),  # reused slower, but not on the floor: something else
        (2.0, 150.0, False),  # far above any delayed-ACK timer: something else
    ],
)
def test_nagle_follows_reuse_equals_max_of_own_and_floor(own: float, reused: float, named: bool) -> None:
    assert bool(nagle(nagle_group(own, reused))) == named


def test_nagle_without_fresh_connections_needs_the_pile_up() -> None:
    assert nagle(nagle_group(2.0, 42.0, fresh=0)), "on the floor, tokens piled in the first read"
    assert not nagle(nagle_group(2.0, 42.0, fresh=0, pile=1)), "on the floor alone proves nothing"


def test_quickack_on_the_floor_is_named() -> None:
    (message,) = nagle(nagle_group(2.0, 42.0), connection="reuse-quickack")
    assert "TCP_QUICKACK did not take effect" in message


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


def expected_nagle(own_gap_ms: float) -> bool | None:
    """What the physics says a reuse group shows for a host whose own TTFB→TTFT gap (measured on
    connections that ACK at once) is `own_gap_ms`: named well below the floor, not above it, and
    either way within a few ms of it (None)."""
    if own_gap_ms < DELAYED_ACK_MS - 10:
        return True
    if own_gap_ms > DELAYED_ACK_MS + 5:
        return False
    return None


def policy_groups(base_url: str, model: str) -> dict[str, StreamStats]:
    """Records from a real host, one group per policy, as a run would write them."""
    from harness.client import Connection, chat_body
    from harness.records import record_from_result

    body = chat_body(model, [{"role": "user", "content": "hi"}], max_tokens=64)
    stats = {}
    for policy in ("reuse", "new", "reuse-quickack"):
        recs = []
        for _user in range(3):  # three users: three fresh connections, then reused ones
            conn = Connection(base_url, policy=policy)
            for i in range(8):
                r = record_from_result(
                    conn.chat(body),
                    run_id="r",
                    worker="w:1",
                    host=base_url,
                    model=model,
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
                recs.append(r.to_dict())
            conn.close()
        stats[policy] = stream_stats(recs)
    return stats


def check_nagle_named_for_reuse_only(stats: dict[str, StreamStats]) -> None:
    """Whether `reuse` must show Nagle follows from the host's own speed, measured by the `new`
    group (fresh connections ACK at once): a host faster than the delayed-ACK floor pays it."""
    found = {p: {f.pattern for f in diagnose(s, connection=p)} for p, s in stats.items()}
    own = stats["new"].fresh_ttfb_to_ttft_ms_p50
    assert own is not None and stats["new"].reused_ttfb_to_ttft_ms_p50 is None
    expect = expected_nagle(own)
    if expect is not None:
        assert ("nagle" in found["reuse"]) == expect, (own, stats["reuse"], found)
    assert "nagle" not in found["new"] and "nagle" not in found["reuse-quickack"], (own, found)


@pytest.mark.slow
@pytest.mark.foundry
def test_real_foundry_host_nagle_named_for_reuse_only() -> None:
    from harness.servers.foundry import start_foundry_host

    host = start_foundry_host()
    try:
        stats = policy_groups(host.base_url, host.models[0])
    finally:
        host.stop()
    check_nagle_named_for_reuse_only(stats)


@pytest.mark.slow
@pytest.mark.parametrize("ttft_ms", ["2", "20", "60"])
def test_sim_with_nagle_named_for_reuse_only(ttft_ms: str) -> None:
    """The same check against a host that leaves Nagle on and whose own speed is known: as fast as
    Foundry's tiny model here, as on a slower CPU, and slower than the floor (nothing to name)."""
    with sim_host("--nagle", "--ttft-ms", ttft_ms, "--itl-ms", "0.2") as sim:
        stats = policy_groups(sim.base_url, sim.models[0])
    check_nagle_named_for_reuse_only(stats)
    own = stats["new"].fresh_ttfb_to_ttft_ms_p50
    assert own is not None and float(ttft_ms) - 1 <= own <= float(ttft_ms) + 10, own
