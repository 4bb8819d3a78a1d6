"""Load shapes as data: stages from scenarios, and arrival schedules split across processes."""

from __future__ import annotations

import itertools
import statistics

import pytest

from harness.errors import InputError
from harness.scenario import load_scenario
from harness.shapes import Arrivals, stage_at, stages_for, total_duration


def load(**load: object):  # type: ignore[no-untyped-def]
    return load_scenario(None, {"load": load}).load


def test_closed_loop_is_one_stage() -> None:
    (st,) = stages_for(load(users=5, duration="1m", spawn_rate=2))
    assert (st.name, st.users, st.spawn_rate, st.duration_s, st.rate) == ("main", 5, 2.0, 60.0, None)


def test_open_loop_uses_the_in_flight_cap_as_users() -> None:
    (st,) = stages_for(load(rate=20, max_in_flight=64, duration="10s"))
    assert st.rate == 20 and st.users == 64


def test_stages_back_to_back() -> None:
    stages = stages_for(
        load(
            stages=[
                {"name": "ramp", "duration": "10s", "users": 4, "spawn_rate": 1},
                {"duration": 5, "rate": 3},
            ]
        )
    )
    assert [s.name for s in stages] == ["ramp", "stage-2"]
    assert [s.start_s for s in stages] == [0.0, 10.0] and total_duration(stages) == 15.0
    assert stage_at(stages, 9.99).name == "ramp" and stage_at(stages, 10.0).name == "stage-2"
    assert stage_at(stages, 15.0) is None


def test_sweep_names_steps() -> None:
    stages = stages_for(load(sweep={"users": [1, 2, 4], "stage_duration": "20s", "trim_s": 3}))
    assert [(s.name, s.users, s.start_s, s.trim_s) for s in stages] == [
        ("c=1", 1, 0.0, 3.0),
        ("c=2", 2, 20.0, 3.0),
        ("c=4", 4, 40.0, 3.0),
    ]
    rates = stages_for(load(sweep={"rates": [0.5, 2]}, max_in_flight=10))
    assert [s.name for s in rates] == ["rate=0.5/s", "rate=2/s"] and rates[0].users == 10


@pytest.mark.parametrize(
    "bad",
    [
        {"stages": []},
        {"stages": [{"duration": "5s"}]},
        {"stages": [{"duration": "5s", "users": 1, "rate": 1}]},
        {"sweep": {"users": [1], "rates": [1]}},
        {"sweep": {"users": []}},
        {"sweep": {"users": [1], "stage_duration": 5, "trim_s": 5}},
        {"rate": -1},
        {"arrival": "bursty"},
    ],
)
def test_bad_shapes_are_input_errors(bad: dict) -> None:
    with pytest.raises(InputError, match=r"^scenario: load"):
        load(**bad)


def test_constant_arrivals_split_exactly_across_processes() -> None:
    stages = stages_for(load(rate=10, arrival="constant", duration="3s"))
    merged = sorted(t for k in range(3) for t, _ in iter(Arrivals(stages, index=k, count=3).next, None))
    assert len(merged) == 30
    gaps = [b - a for a, b in itertools.pairwise(merged)]
    assert max(gaps) == pytest.approx(0.1) and min(gaps) == pytest.approx(0.1)


def test_poisson_arrivals_total_rate_across_processes() -> None:
    stages = stages_for(load(rate=50, duration="200s"))
    counts = [sum(1 for _ in iter(Arrivals(stages, index=k, count=4, seed=7).next, None)) for k in range(4)]
    total = sum(counts)
    # 10,000 expected; Poisson sd = 100: 5 sd either way
    assert 9500 < total < 10500, counts
    times = [t for t, _ in iter(Arrivals(stages, index=0, count=1, seed=1).next, None)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # exponential gaps: mean ~ sd ~ 1/rate
    assert statistics.mean(gaps) == pytest.approx(0.02, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(0.02, rel=0.1)


def test_arrivals_only_in_open_loop_stages() -> None:
    stages = stages_for(
        load(
            stages=[{"duration": 2, "users": 1}, {"duration": 2, "rate": 5}, {"duration": 2, "users": 1}],
            arrival="constant",
        )
    )
    times = [(t, st.name) for t, st in iter(Arrivals(stages).next, None)]
    assert len(times) == 10 and all(2.0 <= t < 4.0 and name == "stage-2" for t, name in times)
