"""Per-request metrics: what one record says about its request, from the client's stamps.

The one definition of TTFB, TTFT, E2E, TPOT, dispatch delay and token offsets (docs/metrics.md);
`harness.records` builds every record with these, and `harness.metrics` re-exports them beside the
metrics over many requests. No numpy here: this runs in the Locust processes, once per request.

Stamps are integer `perf_counter_ns` values of one process (monotonic); wall-clock `*_unix_ns` values
only place requests in time across processes. Durations come out in float milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["dispatch_delay_ms", "e2e_ms", "event_offsets_us", "tpot_ms", "ttfb_ms", "ttft_ms"]


def ttft_ms(sent_ns: int, first_token_ns: int | None) -> float | None:
    """Time to first token.

    Formula: (t_first_token − t_send) / 1e6, t_first_token being the first event with non-empty
    content, reasoning or tool call. None when no token arrived.
    """
    return None if first_token_ns is None else (first_token_ns - sent_ns) / 1e6


def ttfb_ms(sent_ns: int, first_byte_ns: int | None) -> float | None:
    """Time to first byte of the response.

    Formula: (t_first_byte − t_send) / 1e6. None when no byte arrived.
    """
    return None if first_byte_ns is None else (first_byte_ns - sent_ns) / 1e6


def e2e_ms(sent_ns: int, end_ns: int | None) -> float | None:
    """End-to-end latency.

    Formula: (t_end − t_send) / 1e6, t_end being the end of the response. None when it never ended.
    """
    return None if end_ns is None else (end_ns - sent_ns) / 1e6


def tpot_ms(first_token_ns: int | None, last_token_ns: int | None, output_tokens: int | None) -> float | None:
    """Time per output token after the first.

    Formula: (t_last_token − t_first_token) / (output_tokens − 1) / 1e6; None for fewer than 2 tokens.
    """
    if first_token_ns is None or last_token_ns is None or output_tokens is None or output_tokens < 2:
        return None
    return (last_token_ns - first_token_ns) / (output_tokens - 1) / 1e6


def dispatch_delay_ms(sched_unix_ns: int, sent_unix_ns: int) -> float:
    """How late a request left against its schedule (open loop: every user was busy).

    Formula: (t_send_wall − t_scheduled_wall) / 1e6; 0 for closed-loop requests (scheduled = sent).
    """
    return (sent_unix_ns - sched_unix_ns) / 1e6


def event_offsets_us(sent_ns: int, token_ns: Sequence[int]) -> list[int]:
    """Arrival of each content event after the send, whole microseconds (floor).

    Formula: ⌊(t_event_i − t_send) / 1000⌋ for each content-bearing event i, in order.
    """
    return [(t - sent_ns) // 1000 for t in token_ns]
