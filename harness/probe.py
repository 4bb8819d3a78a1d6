"""A connection-policy probe: the same requests over `reuse`, `new` and `reuse-quickack`, side by side.

A server that leaves Nagle's algorithm on (Foundry Local's web service does) holds each small write
until the client's ACK; a client that reuses connections and delays its ACKs then sees the first
token ~40 ms late and the tokens in one burst. The probe shows, before a test, how much of what a
user will measure belongs to the connection rather than to the model.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from harness.client import CONNECTION_POLICIES, Connection, Timeouts
from harness.diagnostics import DELAYED_ACK_MS, nagle_held
from harness.send import Request, Sender

__all__ = ["PolicyFigures", "format_probe", "probe_policies"]


@dataclass
class PolicyFigures:
    policy: str
    requests: int
    ok: int
    ttfb_ms_p50: float | None
    ttft_ms_p50: float | None
    tpot_ms_p50: float | None
    tokens_per_read_p50: float | None
    connect_ms_p50: float | None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def probe_policies(
    url: str,
    model: str,
    *,
    requests: int = 8,
    max_tokens: int = 64,
    api_key: str | None = None,
    timeouts: Timeouts | None = None,
) -> list[PolicyFigures]:
    """Send `requests` streams per policy (after one unmeasured request each) and summarise."""
    out = []
    req = Request(
        host=url,
        model=model,
        prompt_id="probe",
        messages=[{"role": "user", "content": "Count slowly."}],
        max_tokens=max_tokens,
        temperature=0,
    )
    sender = Sender("probe", lambda _rec: None)
    for policy in CONNECTION_POLICIES:
        conn = Connection(url, policy=policy, timeouts=timeouts, api_key=api_key)
        try:
            sender.send(conn, req)  # opens the connection; keep-alive policies measure reused ones after it
            results = [sender.send(conn, req) for _ in range(requests)]
        finally:
            conn.close()
        ok = [r for r in results if r.ok and r.ttft_ms is not None]
        out.append(
            PolicyFigures(
                policy=policy,
                requests=len(results),
                ok=len(ok),
                ttfb_ms_p50=_median([r.ttfb_ms for r in ok if r.ttfb_ms is not None]),
                ttft_ms_p50=_median([r.ttft_ms for r in ok if r.ttft_ms is not None]),
                tpot_ms_p50=_median([r.tpot_ms for r in ok if r.tpot_ms is not None]),
                tokens_per_read_p50=_median(
                    [r.content_events / r.content_reads for r in ok if r.content_reads]
                ),
                connect_ms_p50=_median([r.connect_ms for r in ok if r.connect_ms is not None]),
            )
        )
    return out


def format_probe(figures: list[PolicyFigures]) -> str:
    def f(v: float | None, unit: str = "") -> str:
        return "-" if v is None else f"{v:.2f}{unit}"

    lines = [
        f"  {'policy':<16}{'ok':>6}{'TTFB p50':>11}{'TTFT p50':>11}{'TPOT p50':>11}{'tok/read':>10}{'connect':>10}"
    ]
    for p in figures:
        lines.append(
            f"  {p.policy:<16}{p.ok:>3}/{p.requests:<2}{f(p.ttfb_ms_p50):>11}{f(p.ttft_ms_p50):>11}"
            f"{f(p.tpot_ms_p50):>11}{f(p.tokens_per_read_p50):>10}{f(p.connect_ms_p50):>10}"
        )
    by = {p.policy: p for p in figures}
    reuse, quick = by.get("reuse"), by.get("reuse-quickack")
    if reuse and quick and reuse.ttft_ms_p50 is not None and quick.ttft_ms_p50 is not None:
        diff = reuse.ttft_ms_p50 - quick.ttft_ms_p50
        lines.append(f"  reuse - reuse-quickack: TTFT {diff:+.2f} ms")
        # The physics, not a window of one machine: reuse's first token on the delayed-ACK floor,
        # quick-ACK's (the host's own speed, measured just now) clearly below it.
        if nagle_held(_gap(reuse), _gap(quick)):
            lines.append(
                "  -> the server holds small writes until ACK (Nagle): clients that reuse connections "
                f"see about +{diff:.0f} ms to first token (the {DELAYED_ACK_MS:.0f} ms delayed-ACK floor) "
                "and tokens in bursts"
            )
        elif abs(diff) < max(2.0, 0.1 * quick.ttft_ms_p50):
            lines.append("  -> the connection policy does not change what this host's clients see")
    return "\n".join(lines)


def _gap(p: PolicyFigures) -> float | None:
    """TTFB→TTFT: the part of the first token's wait that comes after the first byte."""
    if p.ttft_ms_p50 is None or p.ttfb_ms_p50 is None:
        return None
    return p.ttft_ms_p50 - p.ttfb_ms_p50
