"""Like chat.py, but the scenario's `load` section drives the users (stages, sweeps, open loop):

locust -f locustfiles/staged.py --headless --scenario scenarios/sweep.yaml --host http://127.0.0.1:5273/v1
"""

from harness.locust import webui  # noqa: F401  (the LLM tab, start-form choices and downloads)
from harness.locust.shape import StagesShape
from harness.locust.users import ChatUser

__all__ = ["ChatUser", "StagesShape"]
