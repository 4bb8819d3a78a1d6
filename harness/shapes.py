"""Load shapes as data: the stages of a run, and the arrival times of open-loop stages.

Pure functions, no Locust: `stages_for(load)` turns the scenario's `load` section (closed loop,
explicit stages, a sweep of concurrencies or rates, open-loop arrivals) into a list of `Stage`s;
`Arrivals` yields one process's share of the scheduled send times of the open-loop stages.

Splitting a rate across N processes exactly: with constant spacing, process k of N sends at
S + (k + jN)/r (j = 0, 1, ...), so the union is exactly one request every 1/r; with Poisson
arrivals each process draws gaps from Exp(r/N), and a sum of independent Poisson processes is a
Poisson process of rate r.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Arrivals", "Stage", "stage_at", "stages_for", "total_duration"]


@dataclass(frozen=True)
class Stage:
    name: str
    start_s: float
    duration_s: float
    users: int
    """Users Locust runs in this stage: the concurrency (closed loop) or the in-flight cap (open loop)."""
    spawn_rate: float
    rate: float | None = None
    """Open loop: requests per second over all processes; None for closed loop."""
    arrival: str = "poisson"
    trim_s: float = 0.0
    """Seconds at the start of the stage the report treats as warm-up."""

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spawn(users: int, spawn_rate: float | None) -> float:
    return float(spawn_rate) if spawn_rate else float(max(users, 1))


def stages_for(load: Any) -> list[Stage]:
    """The stages of a `LoadSpec` (see harness.scenario), in order, back to back."""
    out: list[Stage] = []
    t = 0.0
    cap = load.max_in_flight
    arrival = load.arrival
    if load.sweep is not None:
        sw = load.sweep
        steps: list[tuple[str, int | None, float | None]] = (
            [(f"c={u}", u, None) for u in sw.users]
            if sw.users
            else [(f"rate={r:g}/s", None, r) for r in sw.rates or []]
        )
        for name, users, rate in steps:
            n = users if users is not None else cap
            out.append(
                Stage(name, t, sw.stage_duration, n, _spawn(n, load.spawn_rate), rate, arrival, sw.trim_s)
            )
            t += sw.stage_duration
        return out
    if load.stages:
        for i, st in enumerate(load.stages):
            n = st.users if st.rate is None else cap
            name = st.name or f"stage-{i + 1}"
            out.append(
                Stage(
                    name,
                    t,
                    st.duration,
                    n,
                    _spawn(n, st.spawn_rate or load.spawn_rate),
                    st.rate,
                    arrival,
                    st.trim_s,
                )
            )
            t += st.duration
        return out
    n = load.users if load.rate is None else cap
    return [Stage("main", 0.0, load.duration, n, _spawn(n, load.spawn_rate), load.rate, arrival, 0.0)]


def total_duration(stages: list[Stage]) -> float:
    return stages[-1].end_s if stages else 0.0


def stage_at(stages: list[Stage], t_s: float) -> Stage | None:
    """The stage running `t_s` seconds after the start (None after the last one)."""
    for st in stages:
        if t_s < st.end_s:
            return st if t_s >= st.start_s else None
    return None


class Arrivals:
    """Scheduled send times (seconds after the start) of process `index` of `count`."""

    def __init__(self, stages: list[Stage], *, index: int = 0, count: int = 1, seed: int | str = 0) -> None:
        if not 0 <= index < count:
            raise ValueError(f"process index {index} out of range for {count} processes")
        self._iter = self._times(stages, index, count, random.Random(f"{seed}:{index}:{count}"))

    @staticmethod
    def _times(stages: list[Stage], k: int, n: int, rng: random.Random) -> Iterator[tuple[float, Stage]]:
        for st in stages:
            if not st.rate:
                continue
            if st.arrival == "constant":
                step = 1.0 / st.rate
                j = 0
                while True:
                    t = st.start_s + (k + j * n) * step
                    if t >= st.end_s:
                        break
                    yield t, st
                    j += 1
            else:
                t = st.start_s
                local = st.rate / n
                while True:
                    t += rng.expovariate(local)
                    if t >= st.end_s:
                        break
                    yield t, st

    def next(self) -> tuple[float, Stage] | None:
        """The next arrival (time, stage), or None when this process has no more to send."""
        return next(self._iter, None)
