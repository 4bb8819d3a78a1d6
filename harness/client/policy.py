"""Connection policies and per-request time limits: the names and defaults, defined once.

Everything that offers or checks a policy (the scenario, `harness run --connection`, `harness bench`,
the probe, the record's `connection` field) and everything with a timeout default (the scenario's
`timeouts` section, the client) reads them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CONNECTION_POLICIES",
    "DEFAULT_CONNECTION_POLICY",
    "DEFAULT_TIMEOUTS",
    "POLICY_HELP",
    "ConnectionPolicy",
    "Timeouts",
]

ConnectionPolicy = Literal["reuse", "new", "reuse-quickack"]
CONNECTION_POLICIES: tuple[str, ...] = ("reuse", "new", "reuse-quickack")
#: The server's own timing: keep-alive without the client's delayed ACKs holding a Nagle server's writes.
DEFAULT_CONNECTION_POLICY: ConnectionPolicy = "reuse-quickack"
POLICY_HELP = "reuse: keep-alive; new: a connection per request; reuse-quickack: keep-alive + TCP_QUICKACK"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-request limits, seconds. `first_token_s` covers headers and the wait for the first token;
    `idle_s` is the longest gap between reads once tokens flow (beyond it: `stall`)."""

    connect_s: float = 10.0
    first_token_s: float = 120.0
    idle_s: float = 60.0
    total_s: float = 600.0


DEFAULT_TIMEOUTS = Timeouts()
