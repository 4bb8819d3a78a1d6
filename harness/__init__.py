"""llm-load-harness: load testing and benchmarking for OpenAI-compatible local LLM hosts.

The flow, one module per stage, in the order data moves:
scenario file (`scenario`) -> hosts probed and models resolved (`hosts`) -> Locust users
(`locust_users`) -> streaming client (`client`) -> per-request records (`records`) -> run folder
(`run`) -> metrics and aggregation (`metrics`, `report`) -> report writers (`report`).
The servers the harness can start for itself live in `servers` and are never imported by the
measuring code.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
