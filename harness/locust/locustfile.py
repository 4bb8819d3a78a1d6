"""The locustfile `harness run` hands to Locust: the harness's user classes, nothing else."""

from harness.locust import webui  # noqa: F401  (the LLM tab, start-form choices and downloads)
from harness.locust.users import ChatUser

__all__ = ["ChatUser"]
