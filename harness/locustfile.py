"""The locustfile `harness run` hands to Locust: the harness's user classes, nothing else."""

from harness import webui  # noqa: F401  (the LLM tab, start-form choices and downloads)
from harness.locust_users import ChatUser

__all__ = ["ChatUser"]
