"""llm-load-harness: load testing and benchmarking for OpenAI-compatible local LLM hosts.

The flow, one module per stage, in the order data moves (docs/ARCHITECTURE.md):
scenario file (`scenario`) -> load shapes (`shapes`) and hosts probed, models resolved (`hosts`,
`flavours`, `plan`) -> Locust users (`locust`, the only package that imports Locust or gevent) ->
the send path (`send`) -> streaming client (`client`) -> per-request records (`records`,
`request_metrics`) -> run folder (`rundir`) -> metrics and aggregation (`metrics`, `report`) ->
report writers (`report.writers`). The servers the harness can start for itself live in `servers`
and are never imported by the measuring code.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
