"""Metrics: small pure functions of records and of arrays of record fields.

Each function's docstring gives its formula; docs/metrics.md lists them all. A metric that
does not apply (TPOT of a one-token answer, a throughput with no window, percentiles of nothing) is
`None`, never an exception and never a made-up zero.

Two kinds live here:
- per request, from monotonic `perf_counter_ns` stamps (`ttft_ms`, `ttfb_ms`, `e2e_ms`, `tpot_ms`): what
  each record holds; defined in `harness.request_metrics` (no numpy, so the Locust processes that
  build records stay light) and re-exported here;
- over many requests, from numpy arrays of record fields (`dist`, `itl_gaps_us`, `window_s`,
  throughputs, goodput, ...): what the report computes once per group over the merged raw records
  (never averaged across workers).

Array conventions: missing values are NaN in float arrays; times are integer nanoseconds
(`*_ns`), durations float milliseconds (`*_ms`); event offsets integer microseconds (`*_us`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from harness.request_metrics import e2e_ms, tpot_ms, ttfb_ms, ttft_ms

__all__ = [
    "PERCENTILES",
    "SLO_KEYS",
    "PooledIntDist",
    "dist",
    "e2e_ms",
    "end_unix_ns",
    "energy_per_1k_tokens",
    "error_rate",
    "events_per_read",
    "goodput_per_s",
    "itl_gaps_us",
    "latency_from_sched_ms",
    "meets_slo",
    "output_tokens_per_s",
    "queue_time_ms",
    "requests_per_s",
    "stream_tokens_per_s",
    "token_mismatch",
    "tpot_ms",
    "ttfb_ms",
    "ttft_ms",
    "window_s",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Percentiles every distribution reports, beside count, mean and max.
PERCENTILES = (50, 90, 95, 99)

SLO_KEYS = ("ttft_ms", "tpot_ms", "e2e_ms")


# --- per request: defined in `harness.request_metrics` (numpy-free, for the load generator) -----


# --- distributions -----------------------------------------------------------------------------


def dist(values: npt.ArrayLike, *, scale: float = 1.0) -> dict[str, float | int | None]:
    """Count, mean, p50, p90, p95, p99 and max of the non-NaN values, each multiplied by `scale`.

    Formula: percentiles by linear interpolation between closest ranks (numpy's default), over the
    raw values given (merged over workers by the caller, never averaged). Empty -> count 0, rest None.
    """
    v = np.asarray(values)
    if v.dtype.kind == "f":
        v = v[~np.isnan(v)]
    out: dict[str, float | int | None] = {"count": int(v.size)}
    if v.size == 0:
        out.update({"mean": None, "max": None} | {f"p{q}": None for q in PERCENTILES})
        return out
    pct = np.percentile(v, PERCENTILES)
    out["mean"] = float(v.mean(dtype=np.float64)) * scale
    out.update({f"p{q}": float(p) * scale for q, p in zip(PERCENTILES, pct, strict=True)})
    out["max"] = float(v.max()) * scale
    return out


class PooledIntDist:
    """`dist` of integer samples added in chunks (pooled ITL gaps: tens of millions of µs values),
    exact, with memory bounded by the smaller of the sample count and the value range.

    Samples are kept as they come until there are more of them than the largest value seen (and at
    least `raw_limit`); from then on a count per value in [0, `dense_limit`) replaces them, and
    only values outside that range are kept. One group with millions of gaps thus costs one count
    array, while tens of thousands of small groups (`--by session_id`) cost their own samples only,
    not a count array each (that had taken a report of 50,000 sessions to 24 GB).

    Formula: as `dist` (same linear interpolation between closest ranks), over every sample added.
    Accumulators of disjoint sample sets merge by `+` (or `merge` for many) into their union's.
    """

    def __init__(self, dense_limit: int = 1 << 20, raw_limit: int = 1 << 16) -> None:
        self.dense_limit = dense_limit
        self.raw_limit = raw_limit
        self.counts = np.zeros(0, np.int64)
        """Grown to the largest dense value seen; empty while the samples are still kept raw."""
        self.others: list[IntArray] = []
        """Samples outside [0, dense_limit) once counting; every sample while still raw."""
        self.total = 0
        self._raw = True
        self._raw_n = 0
        self._raw_max = 0

    def add(self, values: npt.NDArray[np.integer[Any]]) -> None:
        v = np.asarray(values, dtype=np.int64)
        if v.size == 0:
            return
        self.total += int(v.sum(dtype=np.int64))
        if self._raw:
            self.others.append(v)
            self._raw_n += v.size
            self._raw_max = max(self._raw_max, min(int(v.max()), self.dense_limit))
            if self._raw_n > max(self.raw_limit, self._raw_max):
                self._count()
            return
        self._add_counted(v)

    def _add_counted(self, v: IntArray) -> None:
        dense = (v >= 0) & (v < self.dense_limit)
        d = v[dense]
        if d.size:
            counts = np.bincount(d, minlength=self.counts.size)
            counts[: self.counts.size] += self.counts
            self.counts = counts
        if d.size != v.size:
            self.others.append(v[~dense])

    def _count(self) -> None:
        """Switch from raw samples to counts (from here on only out-of-range values are kept)."""
        raw, self.others, self._raw = self.others, [], False
        if raw:
            self._add_counted(np.concatenate(raw))

    @classmethod
    def merge(cls, parts: Sequence[PooledIntDist]) -> PooledIntDist:
        """The accumulator of the union of `parts` (disjoint sample sets), in one pass."""
        out = cls(parts[0].dense_limit, parts[0].raw_limit) if parts else cls()
        out.total = sum(p.total for p in parts)
        counting = [p for p in parts if not p._raw]
        raw = [a for p in parts if p._raw for a in p.others]
        if not counting:
            out.others = raw
            out._raw_n = sum(p._raw_n for p in parts)
            out._raw_max = max((p._raw_max for p in parts), default=0)
            if out._raw_n > max(out.raw_limit, out._raw_max):
                out._count()
            return out
        out._raw = False
        counts = np.zeros(max(p.counts.size for p in counting), np.int64)
        for p in counting:
            counts[: p.counts.size] += p.counts
        out.counts = counts
        out.others = [a for p in counting for a in p.others]
        if raw:  # the raw parts' samples lie anywhere: count the ones in range
            out._add_counted(np.concatenate(raw))
        return out

    def add_counts(self, counts: IntArray) -> None:
        """Add samples given as counts by value (`counts[v]`: samples equal to v; below `dense_limit`).
        The caller counted already (`report.aggregate.add_grouped`, few groups), so counting starts."""
        if self._raw:
            self._count()
        if counts.size > self.counts.size:
            grown = np.zeros(counts.size, np.int64)
            grown[: self.counts.size] = self.counts
            self.counts = grown
        self.counts[: counts.size] += counts
        self.total += int(np.dot(counts, np.arange(counts.size, dtype=np.int64)))

    def __add__(self, other: PooledIntDist) -> PooledIntDist:
        return PooledIntDist.merge([self, other])

    def dist(self, *, scale: float = 1.0) -> dict[str, float | int | None]:
        # Still raw: `others` holds every sample and the counts are empty; the same ranks apply.
        others = np.sort(np.concatenate(self.others)) if self.others else np.zeros(0, np.int64)
        below, above = others[others < 0], others[others >= 0]  # kept values lie outside the counts
        cum = np.cumsum(self.counts)
        n_below, n_dense = below.size, int(cum[-1]) if cum.size else 0
        n = n_below + n_dense + above.size
        if n == 0:
            return dist(np.zeros(0))

        def at(rank: int) -> float:
            """The value at this 0-based rank of all samples in order."""
            if rank < n_below:
                return float(below[rank])
            if rank < n_below + n_dense:
                return float(np.searchsorted(cum, rank - n_below, side="right"))
            return float(above[rank - n_below - n_dense])

        def percentile(q: float) -> float:
            h = (n - 1) * q / 100
            lo = math.floor(h)
            return at(lo) + (at(math.ceil(h)) - at(lo)) * (h - lo)

        out: dict[str, float | int | None] = {"count": n, "mean": self.total / n * scale}
        out.update({f"p{q}": percentile(q) * scale for q in PERCENTILES})
        out["max"] = at(n - 1) * scale
        return out


def itl_gaps_us(offsets_us: npt.NDArray[np.integer[Any]], starts: IntArray) -> npt.NDArray[np.integer[Any]]:
    """Inter-token latency samples: gaps between consecutive content events, pooled over requests.

    Formula: for each request r with event offsets o_1..o_k (µs after sending), the gaps
    o_{i+1} − o_i for i = 1..k−1; all requests' gaps together. `offsets_us` holds the requests' offsets
    one after another; request r owns `offsets_us[starts[r]:starts[r+1]]`.
    """
    gaps = np.diff(offsets_us)
    # The diff across two requests (last of r, first of r+1) is not a gap: drop those positions.
    bounds = starts[1:-1] - 1
    return np.delete(gaps, bounds[(bounds >= 0) & (bounds < gaps.size)])


def events_per_read(content_events: FloatArray, content_reads: FloatArray) -> FloatArray:
    """Content events per socket read that carried content, per request (buffering shows as > 1).

    Formula: content_events / content_reads; NaN where no read carried content.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(content_reads > 0, content_events / content_reads, np.nan)


def stream_tokens_per_s(tpot: FloatArray) -> FloatArray:
    """Per-stream speed: tokens per second one user sees after the first token.

    Formula: 1000 / TPOT_ms; NaN where TPOT is undefined or zero.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tpot > 0, 1000.0 / tpot, np.nan)


def latency_from_sched_ms(dispatch_delay_ms: FloatArray, latency_ms: FloatArray) -> FloatArray:
    """Latency measured from the scheduled send time (what a user of an open-loop schedule waits).

    Formula: dispatch_delay_ms + latency_ms, i.e. (t_send − t_sched) + (t_x − t_send) = t_x − t_sched.
    """
    return dispatch_delay_ms + latency_ms


def queue_time_ms(ttft: FloatArray, ttft_at_c1_ms: FloatArray) -> FloatArray:
    """Time a request waited in the host's queue, on hosts that serve one stream at a time.

    Formula: TTFT_ms − TTFT p50 at concurrency 1 (of the same run, host and model); NaN where no
    concurrency-1 stage exists. Its p50 over a stage equals TTFT p50(c) − TTFT p50(c=1).
    """
    return ttft - ttft_at_c1_ms


# --- over a measured window ---------------------------------------------------------------------


def end_unix_ns(sent_unix_ns: IntArray, e2e: FloatArray) -> IntArray:
    """When each request ended, on the wall clock that places requests in time.

    Formula: sent_unix_ns + e2e_ms * 1e6; sent_unix_ns where E2E is unknown (the request never got
    an answer, so it ended, as far as the window is concerned, where it began).
    """
    return sent_unix_ns + np.nan_to_num(e2e * 1e6, nan=0.0).astype(np.int64)


def window_s(start_ns: IntArray, end_ns: IntArray) -> float | None:
    """Length of the measured window, in seconds.

    Formula: the total length of the union of the intervals [start_i, end_i], one per measured
    phase; for one phase, last t_end − first t_send. None when empty or of zero length.
    """
    if len(start_ns) == 0:
        return None
    order = np.argsort(start_ns, kind="stable")
    s = np.asarray(start_ns)[order]
    e = np.maximum.accumulate(np.asarray(end_ns)[order])
    # An interval opens a new disjoint block where it starts after every earlier interval ended.
    new_block = np.r_[True, s[1:] > e[:-1]]
    block_start = s[new_block]
    block_end = np.r_[e[:-1][new_block[1:]], e[-1]]
    total = float((block_end - block_start).sum()) / 1e9
    return total if total > 0 else None


def _per_s(count: float, window: float | None) -> float | None:
    return None if window is None else count / window


def output_tokens_per_s(output_tokens: FloatArray, ok: BoolArray, window: float | None) -> float | None:
    """Output token throughput.

    Formula: Σ output_tokens of successful requests / window_s. Prompt tokens never count.
    """
    return _per_s(float(np.nansum(output_tokens[ok])), window)


def requests_per_s(ok: BoolArray, window: float | None) -> float | None:
    """Request throughput.

    Formula: number of successful requests / window_s.
    """
    return _per_s(float(np.count_nonzero(ok)), window)


def error_rate(ok: BoolArray) -> float | None:
    """Share of requests that failed.

    Formula: (requests − successful requests) / requests; None when there are no requests.
    """
    return None if ok.size == 0 else float(np.count_nonzero(~ok)) / ok.size


def meets_slo(
    ok: BoolArray,
    ttft: FloatArray,
    tpot: FloatArray,
    e2e: FloatArray,
    slo: Mapping[str, FloatArray | float],
) -> BoolArray:
    """Which requests succeeded and met every SLO.

    Formula: ok ∧ ttft_ms ≤ slo.ttft_ms ∧ tpot_ms ≤ slo.tpot_ms ∧ e2e_ms ≤ slo.e2e_ms, where a limit
    that is absent (or NaN) holds, and a TPOT limit holds for answers too short to have a TPOT.
    """
    met = ok.copy()
    for key, values in zip(SLO_KEYS, (ttft, tpot, e2e), strict=True):
        if key not in slo:
            continue
        limit = np.broadcast_to(np.asarray(slo[key], dtype=np.float64), values.shape)
        no_limit = np.isnan(limit)
        undefined_ok = np.isnan(values) if key == "tpot_ms" else np.zeros(values.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            met &= no_limit | undefined_ok | (values <= limit)
    return met


def goodput_per_s(met_slo: BoolArray, window: float | None) -> float | None:
    """Goodput: successful requests that met every SLO, per second.

    Formula: count(ok ∧ meets every SLO) / window_s (see `meets_slo`).
    """
    return _per_s(float(np.count_nonzero(met_slo)), window)


def token_mismatch(from_usage: BoolArray, content_events: FloatArray, output_tokens: FloatArray) -> BoolArray:
    """Requests whose server-reported token count disagrees with the content events counted.

    Formula: tokens_source = "usage" ∧ content_events ≠ output_tokens (`from_usage`: the first term).
    """
    return from_usage & (content_events != output_tokens)


# --- energy and cost -----------------------------------------------------------------------------


def energy_per_1k_tokens(
    power_watts: float | None, tokens_per_s: float | None, price_per_kwh: float | None = None
) -> tuple[float | None, float | None, float | None]:
    """(joules, watt-hours, cost) per 1,000 output tokens at a constant power draw.

    Formula: J/1k = W × 1000 / (output tokens/s); Wh/1k = J/1k / 3600; cost/1k = Wh/1k / 1000 × price
    per kWh. None where power or speed is unknown (or speed is 0).
    """
    if power_watts is None or not tokens_per_s or tokens_per_s <= 0 or not math.isfinite(tokens_per_s):
        return None, None, None
    joules = power_watts * 1000.0 / tokens_per_s
    wh = joules / 3600.0
    cost = wh / 1000.0 * price_per_kwh if price_per_kwh is not None else None
    return joules, wh, cost
