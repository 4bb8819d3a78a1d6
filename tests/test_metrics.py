"""Metrics as pure functions, against values known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from harness import metrics

NAN = float("nan")


def test_per_request_durations_and_tpot() -> None:
    sent = 1_000_000_000
    assert metrics.ttft_ms(sent, sent + 120_500_000) == 120.5
    assert metrics.ttfb_ms(sent, sent + 3_000_000) == 3.0
    assert metrics.e2e_ms(sent, sent + 2_000_000_000) == 2000.0
    assert metrics.ttft_ms(sent, None) is None
    # 11 tokens from 100 ms to 200 ms: 10 gaps of 10 ms.
    assert metrics.tpot_ms(sent + 100_000_000, sent + 200_000_000, 11) == 10.0
    assert metrics.tpot_ms(sent, sent, 1) is None
    assert metrics.tpot_ms(None, sent, 5) is None


def test_dist_percentiles_of_1_to_100() -> None:
    d = metrics.dist(np.arange(1, 101, dtype=float))
    assert d == {"count": 100, "mean": 50.5, "p50": 50.5, "p90": pytest.approx(90.1), "p95": pytest.approx(95.05),
                 "p99": pytest.approx(99.01), "max": 100.0}  # fmt: skip


def test_dist_drops_nan_and_empty_is_none() -> None:
    assert metrics.dist([NAN, 2.0, NAN, 4.0])["p50"] == 3.0
    assert metrics.dist([NAN, 2.0])["count"] == 1
    empty = metrics.dist(np.array([NAN]))
    assert empty["count"] == 0
    assert all(v is None for k, v in empty.items() if k != "count")


def test_dist_scale() -> None:
    assert metrics.dist([1000, 3000], scale=1e-3)["mean"] == 2.0


@pytest.mark.parametrize("seed", range(20))
def test_pooled_int_dist_equals_dist(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(-3, 3000, int(rng.integers(1, 400)))
    pooled = metrics.PooledIntDist(dense_limit=int(rng.integers(1, 2000)))
    for part in np.array_split(values, 4):
        one = metrics.PooledIntDist(pooled.dense_limit)
        one.add(part)
        pooled = pooled + one
    assert pooled.dist(scale=1e-3) == pytest.approx(metrics.dist(values, scale=1e-3))


def test_pooled_int_dist_empty() -> None:
    assert metrics.PooledIntDist().dist()["count"] == 0


def test_itl_gaps_are_pooled_within_requests_only() -> None:
    # Requests: [100, 110, 130], [50], [], [200, 260] (µs after each one's send).
    offsets = np.array([100, 110, 130, 50, 200, 260])
    starts = np.array([0, 3, 4, 4, 6])
    assert metrics.itl_gaps_us(offsets, starts).tolist() == [10, 20, 60]
    assert metrics.itl_gaps_us(np.array([5]), np.array([0, 1])).tolist() == []


def test_window_is_the_union_of_phases() -> None:
    s = 1_000_000_000
    assert metrics.window_s(np.array([0]), np.array([10 * s])) == 10.0
    # Two phases 0-10 s and 100-105 s: 15 s, not 105.
    assert metrics.window_s(np.array([100 * s, 0]), np.array([105 * s, 10 * s])) == 15.0
    # Overlapping ones merge.
    assert metrics.window_s(np.array([0, 5 * s]), np.array([10 * s, 12 * s])) == 12.0
    assert metrics.window_s(np.array([], np.int64), np.array([], np.int64)) is None
    assert metrics.window_s(np.array([s]), np.array([s])) is None


def test_end_unix_ns_falls_back_to_sent() -> None:
    assert metrics.end_unix_ns(np.array([10, 20]), np.array([1.5, NAN])).tolist() == [1_500_010, 20]


def test_throughputs_count_successful_requests_only() -> None:
    ok = np.array([True, True, False])
    tokens = np.array([100.0, 50.0, 1000.0])
    assert metrics.output_tokens_per_s(tokens, ok, 10.0) == 15.0
    assert metrics.requests_per_s(ok, 4.0) == 0.5
    assert metrics.output_tokens_per_s(tokens, ok, None) is None
    assert metrics.error_rate(ok) == pytest.approx(1 / 3)
    assert metrics.error_rate(np.array([], bool)) is None


def test_goodput_counts_requests_meeting_every_slo() -> None:
    ok = np.array([True, True, True, True, False])
    ttft = np.array([100.0, 300.0, 100.0, 100.0, 100.0])
    tpot = np.array([10.0, 10.0, 50.0, NAN, 10.0])  # the 4th had one token: no TPOT, meets it
    e2e = np.array([1000.0, 1000.0, 1000.0, 1000.0, 1000.0])
    met = metrics.meets_slo(ok, ttft, tpot, e2e, {"ttft_ms": 200.0, "tpot_ms": 20.0})
    assert met.tolist() == [True, False, False, True, False]
    assert metrics.goodput_per_s(met, 2.0) == 1.0
    # A NaN limit is no limit; per-request limits broadcast.
    met = metrics.meets_slo(ok, ttft, tpot, e2e, {"ttft_ms": np.array([NAN, NAN, 50.0, 50.0, NAN])})
    assert met.tolist() == [True, True, False, False, False]


def test_small_per_request_metrics() -> None:
    assert metrics.events_per_read(np.array([10.0, 10.0, 5.0]), np.array([10.0, 2.0, 0.0]))[:2].tolist() == [
        1.0,
        5.0,
    ]
    assert np.isnan(metrics.events_per_read(np.array([5.0]), np.array([0.0]))[0])
    assert metrics.stream_tokens_per_s(np.array([20.0]))[0] == 50.0
    assert np.isnan(metrics.stream_tokens_per_s(np.array([NAN]))[0])
    assert metrics.latency_from_sched_ms(np.array([5.0]), np.array([100.0]))[0] == 105.0
    assert metrics.queue_time_ms(np.array([250.0]), np.array([100.0]))[0] == 150.0
    mismatch = metrics.token_mismatch(
        np.array([True, True, False]), np.array([10.0, 10.0, 10.0]), np.array([10.0, 11.0, 11.0])
    )
    assert mismatch.tolist() == [False, True, False]


@pytest.mark.parametrize("seed", range(12))
def test_pooled_int_dist_raw_and_counting_parts_merge_exactly(seed: int) -> None:
    """Small parts stay raw, large ones count: any mix merges into the exact `dist` of the union."""
    rng = np.random.default_rng(100 + seed)
    parts, pooled = [], []
    for i in range(int(rng.integers(1, 30))):
        top = 40 if i == 0 else int(rng.choice([40, 5000]))  # a small range makes a part start counting early
        values = rng.integers(-5, top, 300 if i == 0 else int(rng.integers(0, 300)))
        one = metrics.PooledIntDist(dense_limit=4000, raw_limit=int(rng.integers(1, 200)))
        for chunk in np.array_split(values, 3):
            one.add(chunk)
        parts.append(values)
        pooled.append(one)
    assert (pooled[0].counts.size and any(p.counts.size == 0 for p in pooled[1:])) or len(pooled) == 1
    merged = metrics.PooledIntDist.merge(pooled)
    union = np.concatenate(parts)
    assert merged.dist() == pytest.approx(metrics.dist(union))
    assert merged.dist()["count"] == union.size


def test_pooled_int_dist_memory_follows_the_smaller_of_samples_and_range() -> None:
    """A few samples stay raw (no count array per group); many samples of a small range count."""
    few = metrics.PooledIntDist()
    few.add(np.array([50_000, 60_000, 70_000]))
    assert few.counts.size == 0 and sum(a.size for a in few.others) == 3
    many = metrics.PooledIntDist(raw_limit=1000)
    for _ in range(10):
        many.add(np.full(500, 7))
    assert many.counts.size == 8 and many.others == []
    assert many.dist()["p50"] == 7 and many.dist()["count"] == 5000
