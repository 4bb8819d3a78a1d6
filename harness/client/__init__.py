"""The streaming client: raw HTTP/1.1 + SSE, timed per socket read. Knows nothing of Locust."""

from harness.client.chat import CONNECTION_POLICIES, ChatResult, Connection, Timeouts, chat_body

__all__ = ["CONNECTION_POLICIES", "ChatResult", "Connection", "Timeouts", "chat_body"]
