"""Every shipped scenario validates and turns into stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.plan import prompt_dicts
from harness.scenario import load_scenario
from harness.shapes import stages_for

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_shipped_scenario_is_valid(path: Path) -> None:
    sc = load_scenario(path)
    assert stages_for(sc.load)
    assert prompt_dicts(sc, path.parent)


def test_there_are_scenarios() -> None:
    assert {p.name for p in SCENARIOS} >= {
        "quickstart.yaml",
        "sweep.yaml",
        "open-loop.yaml",
        "stages.yaml",
        "fleet.yaml",
    }
