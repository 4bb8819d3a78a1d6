"""Names of the web UI login settings, shared by `harness run` (which has no gevent) and the
Locust-side login page (`harness.locust.weblogin`)."""

USER_ENV = "HARNESS_WEB_USER"
PASSWORD_ENV = "HARNESS_WEB_PASSWORD"

__all__ = ["PASSWORD_ENV", "USER_ENV"]
