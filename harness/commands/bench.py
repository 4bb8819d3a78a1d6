"""`harness bench`: compare models on one or more hosts and write the model selection table.

Each model gets one warm-up round, then N rounds over a fixed prompt set (temperature 0 by default),
into a run folder (`results/<run_id>/`) with records, the report, `scoring.csv` for hand scores and
`bench.md`, `bench.csv`, `bench.json`. `--rescore RUN_DIR` re-renders a run's table after scores were
filled in (or a judge was asked). Prints the table and, as the last line, the run folder.

The workshop's environment variables work where no option is given: BENCH_MODELS (comma list),
BENCH_ROUNDS, BENCH_PROMPT (one prompt), BENCH_STREAM (1 = streaming, 0 = not), BENCH_MAX_TOKENS,
BENCH_TEMPERATURE, FOUNDRY_LOCAL_ENDPOINT (the host, when no --host is given).

The workload flags (`--input-tokens`, `--output-tokens`, `--dataset`, `--max-requests`, as for
`harness run`) replace the prompt set: every model gets the same requests of the workload (indices
0..N-1, seeded by `--seed`), N per round; `--output-tokens` sets their max_tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.client.policy import CONNECTION_POLICIES, DEFAULT_CONNECTION_POLICY
from harness.commands.run import add_workload_flags, workload_overrides
from harness.errors import InputError

__all__ = ["add_parser", "config_from_args"]

ENV_VARS = (
    "BENCH_MODELS",
    "BENCH_ROUNDS",
    "BENCH_PROMPT",
    "BENCH_STREAM",
    "BENCH_MAX_TOKENS",
    "BENCH_TEMPERATURE",
    "FOUNDRY_LOCAL_ENDPOINT",
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="compare models: latency, tokens/s, memory, quality", description=__doc__
    )
    g = p.add_argument_group("what to compare")
    g.add_argument(
        "--host",
        action="append",
        metavar="URL",
        help="host base URL (repeatable: hosts side by side); default: Foundry Local where it is found "
        "(FOUNDRY_LOCAL_ENDPOINT, `foundry service status`), else an embedded host with the shipped tiny model",
    )
    g.add_argument("--model", action="append", metavar="NAME", help="model id or alias (repeatable)")
    g.add_argument(
        "--models-file",
        type=Path,
        metavar="JSON",
        help="models.json: {alias: {capabilities: [...], size_mb: N, license: ...}}; its aliases are the "
        "models when no --model is given",
    )
    g.add_argument(
        "--model-dir",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="an ONNX Runtime GenAI model folder, benched on an embedded Foundry host of its own (repeatable)",
    )
    g.add_argument(
        "--model-id",
        action="append",
        default=[],
        metavar="ID",
        help="id for the --model-dir at the same position (default from the folder name)",
    )
    g = p.add_argument_group("how")
    g.add_argument(
        "--prompts-file", type=Path, metavar="JSON", help="prompts.json (default: the workshop's set)"
    )
    g.add_argument("--rounds", type=int, metavar="N", help="measured rounds over the prompt set (default 3)")
    g.add_argument("--warmup-rounds", type=int, default=1, metavar="N", help="warm-up rounds (default 1)")
    g.add_argument("--max-tokens", type=int, metavar="N", help="output tokens per request (default 150)")
    g.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (default 0)")
    g.add_argument(
        "--mode",
        choices=["stream", "plain", "both"],
        help="streaming, non-streaming or both (default stream)",
    )
    g.add_argument("--concurrency", metavar="LIST", default="1", help="e.g. 1 or 1,4 (default 1)")
    g = p.add_argument_group("workload (instead of the prompt set)")
    add_workload_flags(
        g,
        max_requests_help="requests per round for each model: the workload's requests 0..N-1, the same for "
        "every model (default: as many as the prompt set holds, 4 for the workshop's)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed for the workload's lengths and text (default 0)")
    g = p.add_argument_group("connection")
    g.add_argument(
        "--connection",
        choices=CONNECTION_POLICIES,
        default=DEFAULT_CONNECTION_POLICY,
        help=f"connection policy (default {DEFAULT_CONNECTION_POLICY}: the server's own timing)",
    )
    g = p.add_argument_group("cost and quality")
    g.add_argument("--power-watts", type=float, metavar="W", help="power draw for energy per 1,000 tokens")
    g.add_argument(
        "--price-per-kwh", type=float, metavar="P", help="electricity price, for cost per 1,000 tokens"
    )
    g.add_argument("--judge-url", metavar="URL", help="OpenAI-compatible host of a judge model (scores 1-5)")
    g.add_argument("--judge-model", metavar="NAME", help="the judge model (id or alias)")
    g = p.add_argument_group("output")
    g.add_argument(
        "--out", type=Path, default=Path("results"), help="parent of run folders (default results/)"
    )
    g.add_argument("--run-id", help="run folder name (default: time, 'bench', random suffix)")
    g.add_argument(
        "--rescore",
        type=Path,
        metavar="RUN_DIR",
        help="re-render RUN_DIR's table from its scoring.csv (and judge.jsonl; with --judge-* ask a judge now)",
    )
    p.set_defaults(func=run)


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r}: expected a whole number") from None


def _env_float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r}: expected a number") from None


def _concurrency(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"--concurrency {text!r}: expected whole numbers, e.g. 1 or 1,4") from None
    if not values or any(v < 1 for v in values):
        raise InputError(f"--concurrency {text!r}: expected positive whole numbers, e.g. 1 or 1,4")
    return list(dict.fromkeys(values))


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Any:
    """A `BenchConfig` from options, then the workshop's BENCH_* variables, then defaults."""
    from harness.benchconfig import DEFAULT_MAX_TOKENS, DEFAULT_ROUNDS, MODES, BenchConfig, load_models_file
    from harness.scenario import Prompt, load_prompts_file

    env = os.environ if env is None else env
    used: dict[str, str] = {}

    def take(name: str) -> None:
        if env.get(name, "").strip():
            used[name] = env[name]

    cfg = BenchConfig(out=args.out, run_id=args.run_id, connection=args.connection)
    cfg.hosts = list(args.host or [])
    cfg.model_dirs = list(args.model_dir)
    cfg.model_ids = list(args.model_id)
    if not cfg.hosts and env.get("FOUNDRY_LOCAL_ENDPOINT", "").strip():
        take("FOUNDRY_LOCAL_ENDPOINT")  # read by discovery; recorded here so the manifest says so
    if args.models_file is not None:
        cfg.catalog = load_models_file(args.models_file)
        cfg.models_file = str(args.models_file)
    if args.model:
        cfg.models = list(args.model)
    elif cfg.catalog:
        cfg.models = list(cfg.catalog)
    elif env.get("BENCH_MODELS", "").strip():
        take("BENCH_MODELS")
        cfg.models = [m.strip() for m in env["BENCH_MODELS"].split(",") if m.strip()]
    if args.prompts_file is not None:
        cfg.prompts = load_prompts_file(args.prompts_file)
        cfg.prompts_file = str(args.prompts_file)
    elif env.get("BENCH_PROMPT", "").strip():
        take("BENCH_PROMPT")
        cfg.prompts = [Prompt.model_validate({"id": "bench-prompt", "text": env["BENCH_PROMPT"].strip()})]
    rounds = args.rounds if args.rounds is not None else _env_int(env, "BENCH_ROUNDS")
    if args.rounds is None and rounds is not None:
        take("BENCH_ROUNDS")
    cfg.rounds = rounds if rounds is not None else DEFAULT_ROUNDS
    max_tokens = args.max_tokens if args.max_tokens is not None else _env_int(env, "BENCH_MAX_TOKENS")
    if args.max_tokens is None and max_tokens is not None:
        take("BENCH_MAX_TOKENS")
    cfg.max_tokens = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
    temperature = args.temperature if args.temperature is not None else _env_float(env, "BENCH_TEMPERATURE")
    if args.temperature is None and temperature is not None:
        take("BENCH_TEMPERATURE")
    cfg.temperature = temperature if temperature is not None else 0.0
    mode = args.mode
    if mode is None and env.get("BENCH_STREAM", "").strip():
        flag = env["BENCH_STREAM"].strip().lower()
        if flag not in ("0", "1", "true", "false", "yes", "no"):
            raise InputError(f"BENCH_STREAM={env['BENCH_STREAM']!r}: expected 1 (streaming) or 0")
        take("BENCH_STREAM")
        mode = "stream" if flag in ("1", "true", "yes") else "plain"
    cfg.streams = list(MODES[mode or "stream"])
    cfg.concurrency = _concurrency(args.concurrency)
    _workload(cfg, args)
    cfg.warmup_rounds = args.warmup_rounds
    cfg.power_watts = args.power_watts
    cfg.price_per_kwh = args.price_per_kwh
    cfg.judge_url = args.judge_url
    cfg.judge_model = args.judge_model
    cfg.from_env = used
    cfg.command_line = list(sys.argv)
    cfg.validate()
    return cfg


def _workload(cfg: Any, args: argparse.Namespace) -> None:
    """The workload flags, validated as `harness run` validates them (the same one-line messages);
    a dataset is read now, so a bad file stops the bench before any host starts."""
    from harness.scenario import load_scenario
    from harness.workload_run import check_workload_files

    overrides = workload_overrides(args)
    if not overrides:
        return
    if args.prompts_file is not None and (args.input_tokens is not None or args.dataset is not None):
        raise InputError(
            "--prompts-file and --input-tokens/--dataset: choose one (the prompt set, or the workload's prompts)"
        )
    sc = load_scenario(None, {**overrides, "seed": args.seed})
    check_workload_files(sc)
    cfg.workload = sc.workload
    cfg.seed = args.seed


def run(args: argparse.Namespace) -> int:
    from harness.bench import rescore, run_bench

    if args.rescore is not None:
        if bool(args.judge_url) != bool(args.judge_model):
            raise InputError("--judge-url and --judge-model go together: give both or neither")
        table, problems = rescore(
            args.rescore.resolve(),
            judge_url=args.judge_url,
            judge_model=args.judge_model,
            power_watts=args.power_watts,
            price_per_kwh=args.price_per_kwh,
        )
        print(table)
        for problem in problems:
            sys.stderr.write(f"harness: {problem}\n")
        print(args.rescore.resolve())
        return 0
    outcome = run_bench(config_from_args(args))
    print(outcome.table)
    for problem in outcome.problems:
        sys.stderr.write(f"harness: {problem}\n")
    print(outcome.run_dir)
    return outcome.exit_code
