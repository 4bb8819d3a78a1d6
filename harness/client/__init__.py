"""The streaming client: raw HTTP/1.1 + SSE, timed per socket read. Knows nothing of Locust."""

from harness.client.chat import ChatResult, Connection, chat_body
from harness.client.policy import (
    CONNECTION_POLICIES,
    DEFAULT_CONNECTION_POLICY,
    DEFAULT_TIMEOUTS,
    POLICY_HELP,
    ConnectionPolicy,
    Timeouts,
)

__all__ = [
    "CONNECTION_POLICIES",
    "DEFAULT_CONNECTION_POLICY",
    "DEFAULT_TIMEOUTS",
    "POLICY_HELP",
    "ChatResult",
    "Connection",
    "ConnectionPolicy",
    "Timeouts",
    "chat_body",
]
