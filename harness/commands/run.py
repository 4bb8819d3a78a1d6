"""`harness run SCENARIO`: run one scenario headless (or in the web UI) into one run folder.

Prints a short table, one line per wire pattern the report named (Nagle on reuse, client-limited,
bursty stream, first wave), and, as the last line of stdout, the run folder's path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness import thresholds
from harness.client.policy import CONNECTION_POLICIES, POLICY_HELP
from harness.errors import InputError
from harness.scenario import Scenario, load_scenario, parse_duration

__all__ = ["add_parser", "add_workload_flags", "scenario_overrides", "with_thresholds", "workload_overrides"]

_LENGTHS = "a length or distribution: 256, 128:512 (uniform), normal:256,64, lognormal:256,64, list:64,128"


def add_workload_flags(g: Any, *, max_requests_help: str | None = None) -> None:
    """`--input-tokens`, `--output-tokens`, `--dataset`, `--max-requests`: the scenario's `workload`
    section from the command line, for `harness run` (and `harness bench`, whose `--max-requests`
    means something of its own: `max_requests_help` says what)."""
    g.add_argument(
        "--input-tokens",
        metavar="LEN",
        help=f"synthetic prompts of exactly this many tokens, {_LENGTHS}; with --dataset, the prompt lengths kept",
    )
    g.add_argument(
        "--output-tokens", metavar="LEN", help=f"max_tokens per request, {_LENGTHS} (not with --max-tokens)"
    )
    g.add_argument(
        "--dataset",
        type=Path,
        metavar="FILE",
        help="prompts from a local JSONL, CSV, ShareGPT or prompts.json file",
    )
    g.add_argument(
        "--max-requests",
        type=int,
        metavar="N",
        help=max_requests_help
        or "stop after exactly N requests over all workers (or at the end of the duration)",
    )


def workload_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The workload flags as dotted scenario keys; a bad value is one line naming its flag."""
    from harness.workload.lengths import length_option

    o: dict[str, Any] = {}
    inp, out = getattr(args, "input_tokens", None), getattr(args, "output_tokens", None)
    if out is not None and getattr(args, "max_tokens", None) is not None:
        raise InputError(
            "--max-tokens and --output-tokens: choose one (--output-tokens takes a distribution)"
        )
    if inp is not None:
        o["workload.input_tokens"] = length_option(inp, "--input-tokens").spec
    if out is not None:
        o["workload.output_tokens"] = length_option(out, "--output-tokens").spec
    dataset = getattr(args, "dataset", None)
    if dataset is not None:
        if not dataset.is_file():
            raise InputError(f"--dataset {dataset}: file not found")
        # Absolute: relative paths in the scenario file are the file's, the flag's are the shell's.
        o["workload.dataset.path"] = str(dataset.resolve())
    n = getattr(args, "max_requests", None)
    if n is not None:
        if n < 1:
            raise InputError(f"--max-requests {n}: expected a number of requests of 1 or more")
        o["workload.max_requests"] = n
    return o


def add_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run a scenario and write a run folder", description=__doc__)
    p.add_argument("scenario", nargs="?", type=Path, help="scenario file (YAML); default: built-in defaults")
    g = p.add_argument_group("what to load")
    g.add_argument(
        "--host",
        action="append",
        metavar="URL",
        help="host base URL (repeatable; replaces the scenario's hosts)",
    )
    g.add_argument("--model", action="append", metavar="NAME", help="model id or alias (repeatable)")
    g.add_argument("--connection", choices=CONNECTION_POLICIES, help=f"connection policy ({POLICY_HELP})")
    g.add_argument("--max-tokens", type=int, metavar="N", help="output tokens per request")
    add_workload_flags(g)
    g = p.add_argument_group("how much load")
    g.add_argument("--users", type=int, metavar="N", help="concurrent users")
    g.add_argument("--spawn-rate", type=float, metavar="R", help="users started per second")
    g.add_argument("--duration", metavar="D", help="30s, 5m, 1h")
    g.add_argument("--stop-timeout", metavar="D", help="time streams running at the end may take to finish")
    g.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="open loop: requests per second over all workers (replaces the scenario's load shape)",
    )
    g.add_argument("--arrival", choices=("poisson", "constant"), help="open-loop arrivals (default poisson)")
    g.add_argument(
        "--concurrency",
        metavar="N,N,...",
        help="a sweep of users, one step each after the other, e.g. 1,2,4,8 (each step lasts --duration)",
    )
    g.add_argument("--seed", type=int, help="seed for prompt order and lengths")
    g = p.add_argument_group("checks")
    g.add_argument(
        "--threshold",
        action="append",
        metavar="EXPR",
        help="METRIC OP NUMBER, e.g. ttft_p95_ms<500 or error_rate<0.01 (repeatable; added to the "
        "scenario's thresholds); judged per host, model and stage; a failed one exits 1",
    )
    g = p.add_argument_group("where it runs")
    g.add_argument("--workers", type=int, default=0, metavar="N", help="local Locust worker processes")
    g.add_argument("--master", action="store_true", help="be the master for workers on other machines")
    g.add_argument(
        "--expect-workers", type=int, default=1, metavar="N", help="workers to wait for (--master)"
    )
    g.add_argument("--master-bind-host", default="*", help="address the master listens on (--master)")
    g.add_argument("--master-bind-port", type=int, default=5557, help="port the master listens on (--master)")
    g.add_argument("--web", action="store_true", help="drive the run from Locust's web UI")
    g.add_argument("--web-host", default="127.0.0.1", help="web UI address (default 127.0.0.1)")
    g.add_argument("--web-port", type=int, default=8089, help="web UI port")
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", type=Path, default=Path("results"), help="parent of run folders (default results/)"
    )
    g.add_argument("--run-id", help="run folder name (default: time, scenario name, random suffix)")
    g.add_argument("--no-report", action="store_true", help="skip the report at the end")
    g.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds per progress line when stderr is not a terminal, and the window of the live "
        "table when it is (default 5)",
    )
    g.add_argument("--quiet", action="store_true", help="no live progress while the load runs")
    p.set_defaults(func=run)


def scenario_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line options as dotted scenario keys (validated with the scenario itself)."""
    o: dict[str, Any] = {}
    if args.host:
        o["hosts"] = [{"url": u} for u in args.host]
    if args.model:
        o["models"] = list(args.model)
    shape = _load_shape(args)
    o.update(shape)
    o.update(workload_overrides(args))
    for opt, key in (
        ("users", "load.users"),
        ("spawn_rate", "load.spawn_rate"),
        ("duration", None if shape.get("load.sweep") else "load.duration"),
        ("arrival", "load.arrival"),
        ("stop_timeout", "load.stop_timeout"),
        ("connection", "connection"),
        ("max_tokens", "request.max_tokens"),
        ("seed", "seed"),
    ):
        value = getattr(args, opt, None)
        if value is not None and key is not None:
            o[key] = value
    return o


def _load_shape(args: argparse.Namespace) -> dict[str, Any]:
    """`--rate` and `--concurrency` replace the scenario's load shape (stages, sweep, open loop)."""
    rate, concurrency = getattr(args, "rate", None), getattr(args, "concurrency", None)
    if rate is not None and concurrency is not None:
        raise InputError("--rate and --concurrency: choose one (open loop, or a sweep of users)")
    if concurrency is not None and getattr(args, "users", None) is not None:
        raise InputError("--users and --concurrency: choose one (one concurrency, or a sweep of them)")
    if rate is not None:
        if not rate > 0:
            raise InputError(f"--rate {rate:g}: expected requests per second above 0")
        return {"load.rate": rate, "load.stages": None, "load.sweep": None}
    if concurrency is None:
        return {}
    try:
        users = [int(v) for v in concurrency.split(",")]
    except ValueError:
        users = []
    if not users or any(u < 1 for u in users):
        raise InputError(
            f"--concurrency {concurrency!r}: expected a comma-separated list of positive integers, e.g. 1,2,4,8"
        )
    sweep: dict[str, Any] = {"users": users}
    if args.duration is not None:
        # Each step lasts --duration; its warm-up share as the report trims by default (10 %, ≤ 5 s).
        try:
            step = parse_duration(args.duration)
        except ValueError as exc:
            raise InputError(f"--duration {args.duration!r}: {exc}") from None
        sweep |= {"stage_duration": step, "trim_s": min(5.0, step / 10)}
    return {"load.sweep": sweep, "load.stages": None, "load.rate": None}


def with_thresholds(scenario: Scenario, path: Path | None, cli: list[str]) -> Scenario:
    """The scenario's thresholds and `--threshold`s together, every metric checked against the
    report's own (exit 2 naming the field or flag before anything starts)."""
    if not scenario.thresholds and not cli:
        return scenario
    label = f"{path}: thresholds" if path else "thresholds"
    items = [(f"{label}[{i}]", t) for i, t in enumerate(scenario.thresholds)]
    items += [("--threshold", t) for t in cli]
    try:
        thresholds.parse_all(items, thresholds.known_metrics())
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return scenario.model_copy(update={"thresholds": [t for _, t in items]})


def run(args: argparse.Namespace) -> int:
    from harness.runner import RunOptions, execute_run

    if not args.progress_interval > 0:
        raise InputError(f"--progress-interval {args.progress_interval:g}: expected seconds above 0")
    if args.workers < 0:
        raise InputError(f"--workers: expected 0 or more, got {args.workers}")
    if args.master and args.workers:
        raise InputError(
            "--master and --workers: choose one (local worker processes, or workers on other machines)"
        )
    scenario = load_scenario(args.scenario, scenario_overrides(args))
    scenario = with_thresholds(scenario, args.scenario, args.threshold or [])
    if scenario.thresholds and args.no_report:
        raise InputError(
            "--no-report: thresholds are judged on the report; drop --no-report or the thresholds"
        )
    opts = RunOptions(
        scenario=scenario,
        scenario_path=args.scenario,
        out=args.out,
        run_id=args.run_id,
        workers=args.workers,
        master=args.master,
        expect_workers=args.expect_workers,
        master_bind_host=args.master_bind_host,
        master_bind_port=args.master_bind_port,
        web=args.web,
        web_host=args.web_host,
        web_port=args.web_port,
        report=not args.no_report,
        progress=not args.quiet,
        progress_interval_s=args.progress_interval,
    )
    outcome = execute_run(opts)
    if outcome.table:
        print(outcome.table)
    for hint in outcome.hints:
        print(f"harness: {hint}")
    for problem in outcome.problems:
        sys.stderr.write(f"harness: {problem}\n")
    print(outcome.run_dir)
    return outcome.exit_code
