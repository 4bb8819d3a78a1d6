"""Stream diagnostics: what the arrival of tokens says about the wire, named in plain words.

Pure functions of records (dicts as in records.jsonl). For a group of requests they measure how
tokens arrived (tokens per socket read, the share of tokens that came in bursts, the gap between
the first byte and the first token, raw gaps against per-request TPOT) and recognise patterns:

- `nagle`: the server holds small writes until the client's ACK. On a reused keep-alive
  connection whose client delays its ACKs, a write that follows the headers waits for the client's
  delayed-ACK timer (Linux: 40 ms, a kernel constant), so the first token lands at
  `max(the host's own TTFT, ~40 ms after the first byte)` and every token made before then arrives
  with it, in one read. Fresh connections (and `TCP_QUICKACK` clients) ACK at once and see the
  host's own TTFT. Evidence, following that physics rather than one machine's speed: the reused
  connections' TTFB→TTFT gap sits on the delayed-ACK floor and the fresh connections' gap (the
  reference: the host's own speed, measured in the same group) is clearly below it; without fresh
  connections, a gap on the floor with the tokens piled up in the first read. A host whose own
  TTFT is above the floor pays nothing for Nagle, and nothing is named.
- `client_limited`: raw gaps between token events collapse towards 0 while per-request TPOT stays
  normal (events read in bursts) and the client's own CPU or event-loop lag was high.
- `bursty`: the same burst signature without evidence against the client: something buffers
  (the server's writes, a proxy).
- `first_wave`: the first request of each connection has a much worse TTFT tail than the rest
  (all users connecting at once inflates p99).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

__all__ = [
    "DELAYED_ACK_MS",
    "PATTERN_NAMES",
    "Finding",
    "StreamStats",
    "console_hints",
    "diagnose",
    "nagle_held",
    "stream_stats",
]

#: Linux's delayed-ACK timer (TCP_DELACK_MIN, HZ/25): a constant of the kernel, not of the machine.
DELAYED_ACK_MS = 40.0
#: A first token held behind a delayed ACK lands when the timer fires: measured at 41-44 ms after the
#: first byte here against Foundry Local and `serve sim --nagle` alike. The band is the timer's own
#: granularity (jiffies) and lateness on a loaded machine, not anyone's TTFT.
FLOOR_MS = (0.85 * DELAYED_ACK_MS, 2.0 * DELAYED_ACK_MS)
#: How far below the floor the reference must sit for the floor to have cost something: more than
#: the noise between two medians of the same host on a loaded machine.
NAGLE_MIN_EXTRA_MS = 5.0
#: Without a reference: tokens that piled up behind the held write and came in the first read.
NAGLE_PILE_TOKENS = 4


def nagle_held(
    reused_gap_ms: float | None,
    reference_gap_ms: float | None = None,
    first_read_tokens: float | None = None,
) -> bool:
    """Whether the first token on reused connections waited for the client's delayed ACK.

    `reused_gap_ms`: TTFB→TTFT on reused connections; `reference_gap_ms`: the same on connections
    that ACK at once (fresh ones, or `reuse-quickack`), i.e. the host's own speed. The gap is on
    the floor and the reference clearly below it; with no reference, the gap is on the floor and
    the tokens made meanwhile came in the first read."""
    lo, hi = FLOOR_MS
    if reused_gap_ms is None or not lo <= reused_gap_ms <= hi:
        return False
    if reference_gap_ms is not None:
        return reused_gap_ms - reference_gap_ms >= NAGLE_MIN_EXTRA_MS
    return (first_read_tokens or 0) >= NAGLE_PILE_TOKENS


@dataclass
class StreamStats:
    requests: int
    tokens_per_read_p50: float | None
    """Content events per socket read that carried any (1 = every token read on its own)."""
    burst_share: float | None
    """Share of tokens that arrived in a read together with another token."""
    ttfb_to_ttft_ms_p50: float | None
    raw_gap_ms_p50: float | None
    """Median gap between consecutive token events, pooled over requests."""
    tpot_ms_p50: float | None
    fresh_ttfb_to_ttft_ms_p50: float | None
    reused_ttfb_to_ttft_ms_p50: float | None
    first_on_connection_ttft_ms_p99: float | None
    later_ttft_ms_p99: float | None
    first_on_connection: int = 0
    reused_first_read_tokens_p50: float | None = None
    """Tokens that came in the same read as the first one, on reused connections."""


@dataclass
class Finding:
    pattern: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _p99(values: Sequence[float]) -> float | None:
    return round(float(np.percentile(values, 99)), 3) if values else None


def stream_stats(records: Iterable[dict[str, Any]]) -> StreamStats:
    """Formulas: tokens per read = content_events / content_reads; burst share = tokens whose
    arrival stamp equals a neighbour's (same read) / all tokens; TTFB→TTFT = ttft_ms - ttfb_ms;
    raw gap = differences of consecutive event_offsets_us, pooled."""
    per_read: list[float] = []
    gaps_fresh: list[float] = []
    gaps_reused: list[float] = []
    raw: list[float] = []
    tpot: list[float] = []
    first_ttft: list[float] = []
    later_ttft: list[float] = []
    first_read: list[float] = []
    bursty = total = n = 0
    for r in records:
        if r.get("warmup") or not r.get("ok") or r.get("ttft_ms") is None:
            continue
        n += 1
        events = r.get("content_events") or 0
        reads = r.get("content_reads") or 0
        if reads:
            per_read.append(events / reads)
        if r.get("ttfb_ms") is not None:
            (gaps_reused if r.get("conn_reused") else gaps_fresh).append(r["ttft_ms"] - r["ttfb_ms"])
        (later_ttft if r.get("conn_reused") else first_ttft).append(r["ttft_ms"])
        if r.get("tpot_ms") is not None:
            tpot.append(r["tpot_ms"])
        offs = r.get("event_offsets_us") or []
        if offs and r.get("conn_reused"):
            first_read.append(sum(1 for t in offs if t == offs[0]))
        total += len(offs)
        for i, t in enumerate(offs):
            if (i > 0 and offs[i - 1] == t) or (i + 1 < len(offs) and offs[i + 1] == t):
                bursty += 1
            if i:
                raw.append((t - offs[i - 1]) / 1000)
    return StreamStats(
        requests=n,
        tokens_per_read_p50=_median(per_read),
        burst_share=round(bursty / total, 4) if total else None,
        ttfb_to_ttft_ms_p50=_median(gaps_fresh + gaps_reused),
        raw_gap_ms_p50=_median(raw),
        tpot_ms_p50=_median(tpot),
        fresh_ttfb_to_ttft_ms_p50=_median(gaps_fresh),
        reused_ttfb_to_ttft_ms_p50=_median(gaps_reused),
        first_on_connection_ttft_ms_p99=_p99(first_ttft),
        later_ttft_ms_p99=_p99(later_ttft),
        first_on_connection=len(first_ttft),
        reused_first_read_tokens_p50=_median(first_read),
    )


def diagnose(
    stats: StreamStats,
    *,
    connection: str | None = None,
    client_cpu_max: float | None = None,
    client_lag_ms_p99: float | None = None,
) -> list[Finding]:
    """Patterns recognised in one group's stats (see the module docstring)."""
    out: list[Finding] = []
    fresh, reused = stats.fresh_ttfb_to_ttft_ms_p50, stats.reused_ttfb_to_ttft_ms_p50

    # Fresh connections are the reference only when there are a few (each user's first request).
    # Judged by what the stream shows, whatever the policy: a `reuse-quickack` group on the floor
    # means quick-ACK did not take effect.
    reference = fresh if stats.first_on_connection >= 3 else None
    if nagle_held(reused, reference, stats.reused_first_read_tokens_p50):
        assert reused is not None
        if reference is not None:
            extra = reused - reference
            evidence: dict[str, Any] = {
                "reused_ttfb_to_ttft_ms_p50": reused,
                "fresh_ttfb_to_ttft_ms_p50": reference,
            }
            why = f"first token {reused:.0f} ms after the first byte on reused connections, {reference:.0f} on fresh"
        else:
            extra = reused
            evidence = {
                "reused_ttfb_to_ttft_ms_p50": reused,
                "reused_first_read_tokens_p50": stats.reused_first_read_tokens_p50,
            }
            why = f"first token {reused:.0f} ms after the first byte, tokens piled up in its read"
        out.append(
            Finding(
                "nagle",
                "server holds small writes until ACK (Nagle): clients that reuse connections see "
                f"about +{extra:.0f} ms to first token, on the {DELAYED_ACK_MS:.0f} ms delayed-ACK floor ({why})"
                + (": TCP_QUICKACK did not take effect" if connection == "reuse-quickack" else ""),
                evidence,
            )
        )
    nagle = any(f.pattern == "nagle" for f in out)
    raw, tpot = stats.raw_gap_ms_p50, stats.tpot_ms_p50
    if not nagle and raw is not None and tpot is not None and tpot >= 0.5 and raw < 0.25 * tpot:
        strained = (client_cpu_max is not None and client_cpu_max > 80) or (
            client_lag_ms_p99 is not None and client_lag_ms_p99 > 5
        )
        evidence = {"raw_gap_ms_p50": raw, "tpot_ms_p50": tpot, "burst_share": stats.burst_share}
        if strained:
            evidence.update(client_cpu_max=client_cpu_max, client_lag_ms_p99=client_lag_ms_p99)
            out.append(
                Finding(
                    "client_limited",
                    "client could not keep up (raw gaps near 0 while per-request TPOT is normal): "
                    "figures not trustworthy, add workers",
                    evidence,
                )
            )
        else:
            out.append(
                Finding(
                    "bursty",
                    "tokens arrive in bursts (raw gaps near 0 while per-request TPOT is normal) although "
                    "the client was not busy: the server or something in between buffers its writes",
                    evidence,
                )
            )
    first, later = stats.first_on_connection_ttft_ms_p99, stats.later_ttft_ms_p99
    if (
        first is not None
        and later
        and stats.first_on_connection >= 3
        and first > 2 * later
        and first - later > 5
    ):
        out.append(
            Finding(
                "first_wave",
                f"first wave of connections inflates the tail: TTFT p99 {first:.0f} ms on each connection's "
                f"first request against {later:.0f} ms on the rest",
                {"first_on_connection_ttft_ms_p99": first, "later_ttft_ms_p99": later},
            )
        )
    return out


#: What a console line calls each pattern.
PATTERN_NAMES = {
    "nagle": "Nagle on reuse",
    "client_limited": "client-limited",
    "bursty": "bursty stream",
    "first_wave": "first wave",
}


def console_hints(diagnostics: Sequence[dict[str, Any]]) -> list[str]:
    """One line per pattern the report named (its `summary.json` `diagnostics`), for the console after
    the table: the first group's message, where it was seen, and how many groups more showed it."""
    seen: dict[str, tuple[dict[str, Any], str, int]] = {}
    for d in diagnostics:
        for f in d.get("findings", []):
            pattern = str(f.get("pattern"))
            if pattern in seen:
                key, message, n = seen[pattern]
                seen[pattern] = (key, message, n + 1)
            else:
                seen[pattern] = (d.get("key", {}), str(f.get("message")), 1)
    lines = []
    for pattern, (key, message, n) in seen.items():
        # The host as the table names it (host:port).
        where = ", ".join(
            urlsplit(str(key[k])).netloc or str(key[k]) if k == "host" else str(key[k])
            for k in ("host", "model", "stage", "connection")
            if key.get(k)
        )
        more = f"; {n - 1} more group(s)" if n > 1 else ""
        name = PATTERN_NAMES.get(pattern, pattern)
        lines.append(f"{name}: {message} [{where}{more}; see report.md, Stream diagnostics]")
    return lines
