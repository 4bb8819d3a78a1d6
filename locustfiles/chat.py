"""Streaming chat load against OpenAI-compatible hosts, for plain `locust -f locustfiles/chat.py`.

    locust -f locustfiles/chat.py --host http://127.0.0.1:5273/v1 --scenario scenarios/quickstart.yaml

Hosts come from the scenario or from `--host`; records go to `results/<run id>/records.jsonl`
(or `--run-dir`). `harness run` uses the same user classes and adds embedded hosts, warm-up
before Locust starts, the run folder's manifest and the report.
"""

from harness.locust import webui  # noqa: F401  (the LLM tab, start-form choices and downloads)
from harness.locust.users import ChatUser

__all__ = ["ChatUser"]
