"""`harness capacity SCENARIO --slo EXPR...`: the highest concurrency (or request rate) at which
every SLO holds, per host and model, with the steps that found it in one capacity run folder.

The search and the judging of a step are `harness.capacity`'s; here each step is run as an ordinary
run (`harness.runner.execute_run`, one stage at the step's level) into `steps/`, judged, extended
when unclear, and the whole search written to `capacity.json` after every step. Embedded hosts are
started once, for the whole search. Prints one row per step, then one answer line per host and
model, then (last line) the capacity run folder.

Capacity run folder:

    RUN_DIR/
      capacity.json       the search: options, SLOs, per host and model every step (level, its
                          segments' run folders, verdict, each SLO's value and 95% interval, summary
                          row, goodput) and the answer
      manifest.json       what ran (`kind: capacity`), how it ended
      hosts/<i>-<kind>.log  embedded hosts' logs
      steps/t<T>-<level>-<S>/   segment S of a step of target T: an ordinary run folder
      capacity.html, capacity.md   `harness report RUN_DIR` (latency against throughput, knee, SLO
                          line, goodput per step)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from harness import thresholds
from harness.commands.run import add_workload_flags, workload_overrides
from harness.errors import HarnessError, InputError
from harness.report.writers.capacity import CAPACITY_FILE, answer_line
from harness.scenario import HostSpec, StageSpec, load_scenario, parse_duration

__all__ = ["CAPACITY_FILE", "add_parser", "run"]

STEPS_DIR = "steps"
_NO_MAX_REQUESTS = (
    "{}: not with harness capacity (every step would stop after that many requests); "
    "steps last --step-duration"
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "capacity",
        help="find the highest load at which every SLO holds (per host and model)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("scenario", nargs="?", type=Path, help="scenario file (YAML); default: built-in defaults")
    p.add_argument(
        "--slo",
        action="append",
        metavar="EXPR",
        help="METRIC OP NUMBER that must hold, e.g. ttft_p95_ms<500 (repeatable; a threshold expression)",
    )
    p.add_argument(
        "--mode", choices=("users", "rate"), default="users", help="closed loop users or open loop rate"
    )
    p.add_argument("--arrival", choices=("poisson", "constant"), help="open-loop arrivals (--mode rate)")
    p.add_argument(
        "--start", type=float, metavar="X", help="first level tried (default 1 user / 1 request/s)"
    )
    p.add_argument(
        "--resolution",
        type=float,
        default=0.05,
        metavar="F",
        help="rate mode: stop when the boundary is known within this relative width (default 0.05); "
        "users mode is always exact",
    )
    p.add_argument(
        "--max-level", type=float, metavar="X", help="highest level tried (default 1024 users / 4096 req/s)"
    )
    p.add_argument(
        "--budget", default="15m", metavar="D", help="time the whole search may take (default 15m)"
    )
    p.add_argument(
        "--step-duration", default="20s", metavar="D", help="length of one step segment (default 20s)"
    )
    p.add_argument(
        "--trim",
        metavar="D",
        help="dropped at each end of every segment, by send time (default: 20%% of a segment, at most 5 s)",
    )
    p.add_argument(
        "--max-extensions",
        type=int,
        default=2,
        metavar="N",
        help="more segments a step not clearly inside or outside the SLOs may get (default 2)",
    )
    p.add_argument("--host", action="append", metavar="URL", help="host base URL (repeatable)")
    p.add_argument("--model", action="append", metavar="NAME", help="model id or alias (repeatable)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="output tokens per request")
    # The run command's workload flags, same names and checks; --max-requests is refused below
    # (every step would stop after N requests).
    add_workload_flags(p)
    for action in p._actions:
        if action.dest == "max_requests":
            action.help = argparse.SUPPRESS  # accepted only to be refused with a reason
    p.add_argument("--seed", type=int, help="seed for prompts and the bootstrap")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="local Locust worker processes")
    p.add_argument(
        "--out", type=Path, default=Path("results"), help="parent of run folders (default results/)"
    )
    p.add_argument("--run-id", help="capacity run folder name")
    p.set_defaults(func=run)


def _duration(flag: str, text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise InputError(f"{flag} {text!r}: {exc}") from None
    if not value > 0:
        raise InputError(f"{flag} {text!r}: expected a duration above 0, e.g. 20s")
    return value


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Every option checked before anything starts (exit 2, one line)."""
    if not args.slo:
        raise InputError("--slo: at least one is needed, e.g. --slo ttft_p95_ms<500")
    try:
        slos = thresholds.parse_all([("--slo", e) for e in args.slo], thresholds.known_metrics())
    except ValueError as exc:
        raise InputError(str(exc)) from None
    step_s = _duration("--step-duration", args.step_duration)
    budget_s = _duration("--budget", args.budget)
    if args.trim is None:
        trim_s = min(5.0, 0.2 * step_s)
    else:
        try:
            trim_s = parse_duration(args.trim)
        except ValueError as exc:
            raise InputError(f"--trim {args.trim!r}: {exc}") from None  # 0 is allowed: no trimming
    if 2 * trim_s >= step_s:
        raise InputError(
            f"--trim {trim_s:g} s: must leave part of a {step_s:g} s step (less than half of it)"
        )
    if args.arrival and args.mode != "rate":
        raise InputError("--arrival: only with --mode rate (open loop)")
    if args.start is not None and not args.start > 0:
        raise InputError(f"--start {args.start:g}: expected a level above 0")
    if args.mode == "users" and args.start is not None and args.start != int(args.start):
        raise InputError(f"--start {args.start:g}: users mode needs a whole number of users")
    if args.max_level is not None:
        if not args.max_level > 0:
            raise InputError(f"--max-level {args.max_level:g}: expected a level above 0")
        if args.mode == "users" and args.max_level != int(args.max_level):
            raise InputError(f"--max-level {args.max_level:g}: users mode needs a whole number of users")
    if args.max_requests is not None:
        raise InputError(_NO_MAX_REQUESTS.format(f"--max-requests {args.max_requests}"))
    if not 0 < args.resolution < 1:
        raise InputError(f"--resolution {args.resolution:g}: expected a fraction between 0 and 1, e.g. 0.05")
    if args.max_extensions < 0:
        raise InputError(f"--max-extensions {args.max_extensions}: expected 0 or more")
    if args.workers < 0:
        raise InputError(f"--workers {args.workers}: expected 0 or more")
    max_level = args.max_level or (1024 if args.mode == "users" else 4096)
    start = args.start or 1.0
    if start > max_level:
        raise InputError(f"--start {start:g}: above --max-level {max_level:g}")
    return {
        "slos": slos,
        "step_s": step_s,
        "budget_s": budget_s,
        "trim_s": trim_s,
        "max_level": max_level,
        "start": start,
    }


def _level_text(mode: str, level: float) -> str:
    return f"{int(level)} users" if mode == "users" else f"{level:.3g} req/s"


def _level_name(mode: str, level: float) -> str:
    return f"c={int(level)}" if mode == "users" else f"rate={level:.4g}"


def run(args: argparse.Namespace) -> int:
    import harness.capacity as method
    from harness.capacity import FAIL, PASS, UNCLEAR, Search, decide_on_values, judge
    from harness.rundir import RunDir, machine, make_run_dir, new_run_id, utc, versions, write_json
    from harness.runner import RunOptions, execute_run, start_embedded_hosts
    from harness.servers.ready import ChildHost

    opts = _options(args)
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["hosts"] = [{"url": u} for u in args.host]
    if args.model:
        overrides["models"] = list(args.model)
    if args.max_tokens is not None:
        overrides["request.max_tokens"] = args.max_tokens
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.arrival:
        overrides["load.arrival"] = args.arrival
    overrides.update(workload_overrides(args))
    scenario = load_scenario(args.scenario, overrides)
    if scenario.workload is not None and scenario.workload.max_requests is not None:
        where = args.scenario or "scenario"
        raise InputError(
            _NO_MAX_REQUESTS.format(f"{where}: workload.max_requests {scenario.workload.max_requests}")
        )
    if not scenario.hosts:
        from harness.runner import DEFAULT_EMBEDDED

        scenario = scenario.model_copy(update={"hosts": [HostSpec(embedded=DEFAULT_EMBEDDED)]})
    run_id = args.run_id or new_run_id(f"capacity-{scenario.name}")
    cap_dir = make_run_dir(args.out, run_id)
    started = time.monotonic()
    t0 = time.time()
    slos = opts["slos"]
    doc: dict[str, Any] = {
        "run_id": run_id,
        "kind": "capacity",
        "mode": args.mode,
        "arrival": scenario.load.arrival if args.mode == "rate" else None,
        "slos": [t.text for t in slos],
        "step_duration_s": opts["step_s"],
        "trim_s": opts["trim_s"],
        "budget_s": opts["budget_s"],
        "resolution": args.resolution if args.mode == "rate" else 1,
        "max_extensions": args.max_extensions,
        "method": method.__doc__,
        "targets": [],
    }
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "kind": "capacity",
        "scenario_file": str(args.scenario) if args.scenario else None,
        "scenario": scenario.model_dump(mode="json"),
        "versions": versions("locust", "foundry-local-sdk"),
        "machine": machine(),
        "started_utc": utc(t0),
        "command_line": list(sys.argv),
        "state": "running",
    }
    write_json(cap_dir / "manifest.json", manifest)
    children: list[ChildHost] = []
    answers: list[str] = []
    problems: list[str] = []
    exit_code = 0
    try:
        # Started once for the whole search (the runner's own start), passed to every step as
        # already started so each step's manifest still names the host's kind and pid.
        running = start_embedded_hosts(scenario.hosts, RunDir(cap_dir).host_log, children)
        hosts = list(scenario.hosts)
        models: list[str | None] = list(scenario.models) or [None]
        pairs = [(i, h, m) for i, h in enumerate(hosts) for m in ([*h.models] if h.models else models)]
        for ti, (host_i, host, model) in enumerate(pairs):
            url = running[host_i][0] if host_i in running else host.url
            search = Search(args.mode, opts["start"], args.resolution, max_level=opts["max_level"])
            target: dict[str, Any] = {"host": url, "model": model, "steps": [], "answer": None}
            doc["targets"].append(target)
            first = True
            while (level := search.next()) is not None:
                if time.monotonic() - started + opts["step_s"] > opts["budget_s"]:
                    target["budget_ended"] = True
                    break
                step: dict[str, Any] = {"level": level, "segments": [], "verdict": None}
                target["steps"].append(step)
                judged = None
                for seg in range(args.max_extensions + 1):
                    if seg and time.monotonic() - started + opts["step_s"] > opts["budget_s"]:
                        target["budget_ended"] = True
                        break
                    stage = StageSpec(
                        name=_level_name(args.mode, level),
                        duration=opts["step_s"],
                        users=int(level) if args.mode == "users" else None,
                        rate=float(level) if args.mode == "rate" else None,
                        trim_s=opts["trim_s"],
                    )
                    sc = scenario.model_copy(
                        update={
                            "hosts": [host],
                            "models": [model] if model else [],
                            "load": scenario.load.model_copy(update={"stages": [stage], "sweep": None}),
                            "warmup": scenario.warmup
                            if first
                            else scenario.warmup.model_copy(update={"requests": 0}),
                            "thresholds": [],
                        }
                    )
                    first = False
                    seg_id = f"t{ti}-{_level_name(args.mode, level)}-{seg}"
                    t_seg = time.monotonic()
                    outcome = execute_run(
                        RunOptions(
                            scenario=sc,
                            scenario_path=args.scenario,
                            out=cap_dir / STEPS_DIR,
                            run_id=seg_id,
                            workers=args.workers,
                            report=False,
                            progress=False,  # one console row per step is the search's own progress
                            command_line=list(sys.argv),
                            started_hosts={0: running[host_i]} if host_i in running else {},
                        )
                    )
                    step["segments"].append(
                        {"run_dir": f"{STEPS_DIR}/{seg_id}", "seconds": round(time.monotonic() - t_seg, 3)}
                    )
                    if outcome.exit_code not in (0, 1):
                        problems.extend(f"{seg_id}: {p}" for p in outcome.problems)
                        raise _StepFailed(f"step {seg_id} did not complete (run folder {outcome.run_dir})")
                    dirs = [cap_dir / s["run_dir"] for s in step["segments"]]
                    groups = judge(dirs, slos, trim_s=opts["trim_s"], seed=scenario.seed)
                    judged = groups[0] if groups else None
                    if judged is None or judged.verdict != UNCLEAR:
                        break
                verdict = judged.verdict if judged else FAIL
                step["unclear_at_cap"] = verdict == UNCLEAR
                if judged and verdict == UNCLEAR:
                    # Extended as far as allowed and still not clear: the pooled value decides.
                    verdict = decide_on_values(judged)
                step["verdict"] = verdict
                step["judgement"] = judged.to_dict() if judged else None
                if judged:
                    target["key"] = judged.key
                search.tell(level, step["verdict"] == PASS)
                sys.stdout.write(_step_row(args.mode, len(target["steps"]), step) + "\n")
                sys.stdout.flush()
                write_json(cap_dir / CAPACITY_FILE, doc)
            target["answer"] = search.answer()
            target["tried"] = search.tried
            target["seconds"] = round(time.monotonic() - started, 3)
            if target.get("budget_ended") and not target["steps"]:
                target["not_tried"] = True  # the budget, shared in turn, ended before this pair
            answers.append(answer_line(doc, target))
            write_json(cap_dir / CAPACITY_FILE, doc)
    except _StepFailed as exc:
        problems.append(str(exc))
        exit_code = 3
    except HarnessError as exc:
        problems.append(str(exc))
        exit_code = exc.exit_code
    finally:
        for child in children:
            child.stop()
    doc["seconds"] = round(time.monotonic() - started, 3)
    write_json(cap_dir / CAPACITY_FILE, doc)
    manifest |= {
        "state": "complete" if exit_code == 0 else "incomplete",
        "ended_utc": utc(),
        "duration_s": doc["seconds"],
        "problems": problems,
        "exit_code": exit_code,
    }
    write_json(cap_dir / "manifest.json", manifest)
    try:
        from harness.report.writers import capacity as capacity_report

        capacity_report.write(cap_dir)
    except HarnessError as exc:
        problems.append(f"report: {exc}")
    for line in answers:
        print(line)
    for p in problems:
        sys.stderr.write(f"harness: {p}\n")
    if exit_code == 0 and any(
        t["answer"] and not t["answer"]["highest_passing"] and not t.get("not_tried") for t in doc["targets"]
    ):
        exit_code = 1
    print(cap_dir)
    return exit_code


class _StepFailed(HarnessError):
    exit_code = 3


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _step_row(mode: str, n: int, step: dict[str, Any]) -> str:
    """`step 3: 4 users  ttft_p95_ms 141 [133–150] fail  (2 segments)` - one console row per step."""
    j = step.get("judgement") or {}
    parts = [f"step {n}: {_level_text(mode, step['level'])}"]
    for s in j.get("slos", []):
        ci = f" [{_fmt(s['ci_low'])}–{_fmt(s['ci_high'])}]" if s["ci_low"] is not None else ""
        parts.append(f"{s['metric']} {_fmt(s['value'])}{ci} {s['verdict']}")
    tail = f"{step['verdict']}" + (
        " (unclear at the cap: judged on its value)" if step.get("unclear_at_cap") else ""
    )
    segs = len(step["segments"])
    return "  ".join(parts) + f"  -> {tail}  ({segs} segment{'s' if segs > 1 else ''})"
