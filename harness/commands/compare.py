"""`harness compare BASE_RUN NEW_RUN`: headline metrics side by side, with the change's bootstrap
95% confidence interval and a verdict per metric (`harness.report.compare`). Exits 1 when a metric
regressed beyond the threshold, or NEW_RUN misses an absolute limit (`--threshold`, the expressions
of `harness run --threshold`: `harness.thresholds`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from harness import thresholds
from harness.commands.report import BY_KEYS, split_list
from harness.errors import CheckFailed, InputError

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two runs: changes with bootstrap confidence intervals; exit 1 on a regression",
        description="Compare two run folders group by group. A metric is worse when the 95%% confidence interval "
        "of its change lies entirely on the bad side and the change is beyond --threshold-pct.",
    )
    p.add_argument("base", type=Path, metavar="BASE_RUN", help="run folder to compare against")
    p.add_argument("new", type=Path, metavar="NEW_RUN", help="run folder to judge")
    p.add_argument(
        "--threshold-pct", type=float, default=5.0, help="smallest change that counts, in %% (default 5)"
    )
    p.add_argument(
        "--metrics",
        help="comma-separated metrics (default: ttft_ms_p50,ttft_ms_p95,tpot_ms_p50,e2e_ms_p95,"
        "output_tokens_per_s,error_rate)",
    )
    p.add_argument(
        "--by", default="host,model", help=f"comma-separated group keys from {BY_KEYS} (default: host,model)"
    )
    p.add_argument("--out", type=Path, help="folder to write compare.md and compare.json into")
    p.add_argument(
        "--trim-s", type=float, help="seconds dropped at each end of every stage (default: automatic)"
    )
    p.add_argument(
        "--threshold",
        action="append",
        metavar="EXPR",
        help="also hold NEW_RUN to an absolute limit, as `harness run --threshold` does (METRIC OP NUMBER, "
        "e.g. ttft_p95_ms<500; repeatable), judged per group of --by; a failed one exits 1",
    )
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.report.builder import make_out_dir
    from harness.report.compare import DEFAULT_METRICS, compare

    checks = _thresholds(args.threshold or [])
    result = compare(
        args.base,
        args.new,
        by=split_list(args.by),
        # Metric names as thresholds spell them (ttft_p95_ms) or as the summary does (ttft_ms_p95).
        metrics=[thresholds.summary_key(m) for m in split_list(args.metrics) or DEFAULT_METRICS],
        threshold_pct=args.threshold_pct,
        resamples=args.resamples,
        seed=args.seed,
        trim_s=args.trim_s,
    )
    print(result.console_table())
    results = _judge(args, checks)
    if results:
        print("thresholds (NEW_RUN):")
        print("\n".join(f"  {r.line()}" for r in results))
    if args.out is not None:
        make_out_dir(args.out)
        (args.out / "compare.md").write_text(result.markdown(), encoding="utf-8")
        (args.out / "compare.json").write_bytes(
            orjson.dumps(
                result.to_dict() | {"thresholds": [r.to_dict() for r in results]}, option=orjson.OPT_INDENT_2
            )
            + b"\n"
        )
        print(args.out)
    failed = thresholds.failure_lines(results)
    problems = []
    if result.regressions:
        worst = ", ".join(
            f"{c.metric} {c.change_pct:+.1f}%" if c.change_pct is not None else c.metric
            for c in result.regressions
        )
        problems.append(
            f"{len(result.regressions)} metric(s) regressed beyond {args.threshold_pct:g}%: {worst}"
        )
    if problems or failed:
        for line in failed:
            sys.stderr.write(f"harness: {line}\n")
        raise CheckFailed("; ".join(problems) or f"{len(failed)} threshold check(s) failed")
    return 0


def _thresholds(exprs: list[str]) -> list[thresholds.Threshold]:
    if not exprs:
        return []
    try:
        return thresholds.parse_all([("--threshold", e) for e in exprs], thresholds.known_metrics())
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _judge(args: argparse.Namespace, checks: list[thresholds.Threshold]) -> list[thresholds.Result]:
    """The thresholds judged on NEW_RUN's summary, grouped by --by (as `harness run` judges them)."""
    if not checks:
        return []
    import tempfile

    from harness.report import build

    with tempfile.TemporaryDirectory(prefix="harness-compare-") as tmp:
        report = build([args.new], Path(tmp), formats=["json"], by=split_list(args.by), trim_s=args.trim_s)
    return thresholds.evaluate(checks, report.summary["groups"])
