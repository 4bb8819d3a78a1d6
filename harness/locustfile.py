"""The locustfile `harness run` hands to Locust: the harness's user classes, nothing else."""

from harness.locust_users import ChatUser

__all__ = ["ChatUser"]
