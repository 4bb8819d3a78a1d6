"""The locustfile `harness run` hands to Locust for headless runs: users plus the stages shape."""

from harness.locust import webui  # noqa: F401  (the LLM tab, start-form choices and downloads)
from harness.locust.shape import StagesShape
from harness.locust.users import ChatUser

__all__ = ["ChatUser", "StagesShape"]
