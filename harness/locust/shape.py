"""The Locust `LoadTestShape` that plays the plan's stages (ramp, steps, spike, soak, sweeps).

Kept apart from the user classes: Locust uses a shape whenever one is in the locustfile, and the
web UI's user-count controls only make sense without one.
"""

from __future__ import annotations

import time

from locust import LoadTestShape

from harness.shapes import Stage, stage_at

__all__ = ["StagesShape"]


class StagesShape(LoadTestShape):
    """Users and spawn rate of the stage running now; stops after the last stage.

    Time runs from the run's start time `harness_t0` (set at test start, sent to workers), which
    an open-loop first stage puts a little in the future so its users exist before the first
    arrival is due; until then the first stage's users are spawning."""

    _stages: list[Stage] | None = None

    def tick(self) -> tuple[int, float] | None:
        from harness.locust.users import PROCESS, option

        assert self.runner is not None
        env = self.runner.environment
        if self._stages is None:
            self._stages = [Stage(**s) for s in PROCESS.plan_of(env).stages]
        t0 = option(env, "harness_t0")
        if not t0:  # the first tick comes before test start
            st: Stage | None = self._stages[0]
        else:
            elapsed = (time.time_ns() - int(t0)) / 1e9
            st = self._stages[0] if elapsed < 0 else stage_at(self._stages, elapsed)
        return None if st is None else (st.users, st.spawn_rate)
