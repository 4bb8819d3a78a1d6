"""A plan for a plain `locust -f locustfiles/chat.py` run (no `harness run` around it).

Hosts come from the scenario (`--scenario`) or Locust's `--host`; embedded hosts need
`harness run` (or `harness serve sim|foundry` started by hand).
"""

from __future__ import annotations

from pathlib import Path

from locust.env import Environment

from harness.errors import InputError
from harness.plan import Plan, build_targets, prompt_dicts
from harness.rundir import RunDir, new_run_id
from harness.scenario import HostSpec, load_scenario
from harness.shapes import stages_for

__all__ = ["plan_for_plain_locust"]


def plan_for_plain_locust(environment: Environment) -> Plan:
    opts = environment.parsed_options
    path = Path(opts.scenario) if opts is not None and opts.scenario else None
    scenario = load_scenario(path)
    if environment.host:
        scenario = scenario.model_copy(update={"hosts": [HostSpec(url=environment.host)]})
    if not scenario.hosts:
        raise InputError(
            "no host to load: pass --host http://127.0.0.1:PORT/v1 or a --scenario with hosts "
            "(start one with `harness serve sim` or `harness serve foundry`)"
        )
    for h in scenario.hosts:
        if h.embedded:
            raise InputError(
                f"hosts: an embedded {h.embedded} host needs `harness run`; give its url instead"
            )
    run_id = new_run_id(scenario.name)
    run_dir = Path(opts.run_dir) if opts is not None and opts.run_dir else Path("results") / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan(
        run_id=run_id,
        run_dir=str(run_dir.resolve()),
        scenario=scenario.model_dump(mode="json"),
        targets=build_targets(scenario, {}),
        prompts=prompt_dicts(scenario, path.parent if path else None),
        stages=[s.to_dict() for s in stages_for(scenario.load)],
    )
    RunDir(run_dir).plan.write_bytes(plan.to_json())
    return plan
