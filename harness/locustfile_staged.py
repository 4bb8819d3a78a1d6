"""The locustfile `harness run` hands to Locust for headless runs: users plus the stages shape."""

from harness import webui  # noqa: F401  (the LLM tab, start-form choices and downloads)
from harness.locust_shape import StagesShape
from harness.locust_users import ChatUser

__all__ = ["ChatUser", "StagesShape"]
