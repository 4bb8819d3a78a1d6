"""`build()`: run folders in, `summary.json` dict and report files out.

Owns the order of the report's steps (load -> select measured -> summarize -> write) and the shape of
`summary.json`; the steps themselves live in `load`, `measured`, `aggregate` and `writers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import __version__
from harness.errors import InputError
from harness.report import wire, workload
from harness.report.aggregate import DEFAULT_BY, Row, Summarizer, check_by
from harness.report.load import Dataset, load_runs
from harness.report.measured import Selection, select
from harness.report.tables import Table, build_tables, fixed_width, format_value, host_label
from harness.thresholds import Threshold, evaluate

__all__ = ["FORMATS", "SCHEMA_VERSION", "Report", "ReportContext", "build", "check_formats", "make_out_dir"]

FORMATS = ("md", "csv", "html", "json")
SCHEMA_VERSION = 1
HOST_MODEL = ("host", "model")


@dataclass(frozen=True)
class ReportContext:
    """Everything a writer may render: the summary, its tables, and the records for plots."""

    summary: dict[str, Any]
    tables: list[Table]
    dataset: Dataset
    summarizer: Summarizer
    stage_rows: list[Row]
    """Rows per (run, host, model, stage), for latency-against-throughput curves."""
    prepared: dict[str, Any] = field(default_factory=dict)
    """What was computed in the report's one streamed pass over the event offsets for writers
    (`token_bins`: `plots.TokenBins`); a writer computes what is missing itself."""


@dataclass
class Report:
    """What `build` made: `summary` is the `summary.json` dict; `files` what was written."""

    summary: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return list(self.summary["warnings"])

    def console_table(self) -> str:
        """A compact fixed-width table per host and model, for a terminal."""
        columns = (
            ("requests", "req", "int"),
            ("failed", "err", "int"),
            ("ttft_ms_p50", "TTFT p50", "float"),
            ("ttft_ms_p95", "p95", "float"),
            ("ttft_ms_p99", "p99", "float"),
            ("tpot_ms_p50", "TPOT p50", "float"),
            ("e2e_ms_p95", "E2E p95", "float"),
            ("output_tokens_per_s", "out tok/s", "float"),
            ("requests_per_s", "req/s", "float"),
        )
        rows = self.summary["by_host_model"]
        keys = ["host", "model"]
        # Stages (a sweep's steps): one row per host, model and stage, in the order they ran.
        groups = self.summary["groups"]
        if "stage" in self.summary["by"] and len({g["key"].get("stage") for g in groups}) > 1:
            rows, keys = groups, ["host", "model", "stage"]
        body = [
            [
                *(host_label(r["key"][k] or "-") if k == "host" else r["key"][k] or "-" for k in keys),
                *(format_value(r.get(k), kind) for k, _, kind in columns),
            ]
            for r in rows
        ]
        if len(rows) > 1:
            overall = self.summary["overall"]
            body.append(
                [
                    "all",
                    *[""] * (len(keys) - 1),
                    *(format_value(overall.get(k), kind) for k, _, kind in columns),
                ]
            )
        table = fixed_width([*keys, *(h for _, h, _ in columns)], body, left=len(keys))
        extra = "".join(f"\n{line}" for line in workload.console_lines(self.summary))
        return table + "\n(latencies in ms; output tokens/s and requests/s of successful requests)" + extra


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(f.strip() for f in formats if f.strip()))
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise InputError(
            f"--format: unknown format {', '.join(unknown) or '(none given)'}; expected any of {', '.join(FORMATS)}"
        )
    return names


def build(
    run_dirs: Sequence[Path],
    out_dir: Path,
    *,
    formats: Sequence[str] = FORMATS,
    by: Sequence[str] | None = None,
    trim_s: float | None = None,
    thresholds: Sequence[Threshold] = (),
) -> Report:
    """Merge run folders into one report written to `out_dir`.

    `by`: group keys (default run, host, model, stage); `trim_s`: seconds dropped at each end of every
    (run, stage), None for automatic (see `measured.default_trim_s`), 0 for none; `thresholds`:
    checks judged on every group, their results in `summary["thresholds"]` (`harness.thresholds`).
    """
    from harness.report.writers import WRITERS

    names = check_formats(formats)
    keys = check_by(by)
    if trim_s is not None and not trim_s >= 0:
        raise InputError(f"--trim-s: {trim_s} is not a number of seconds ≥ 0")
    ds = load_runs([Path(d) for d in run_dirs])
    try:
        return _build(ds, out_dir, names, keys, trim_s, WRITERS, thresholds)
    finally:
        ds.close()


def _build(
    ds: Dataset,
    out_dir: Path,
    names: Sequence[str],
    keys: tuple[str, ...],
    trim_s: float | None,
    writers: dict[str, Any],
    thresholds: Sequence[Threshold] = (),
) -> Report:
    if trim_s is None:
        # A run may say how it wants trimming (`harness bench` measures every request: trim 0).
        asked = {(run.manifest.get("report") or {}).get("trim_s") for run in ds.runs}
        if len(asked) == 1 and (only := asked.pop()) is not None:
            trim_s = float(only)
    selection = select(ds, trim_s)
    summarizer = Summarizer(ds)
    groupings = [summarizer.grouping(keys)]
    for extra in (HOST_MODEL, DEFAULT_BY):
        if extra != keys:
            groupings.append(summarizer.grouping(extra))
    # One streamed pass over the event offsets feeds everything computed from them.
    itl = summarizer.itl_gaps(groupings[0])
    diag_sample = wire.sample(ds, summarizer)
    consumers: list[Any] = [itl, diag_sample]
    prepared: dict[str, Any] = {}
    if "html" in names:
        from harness.report import plots

        prepared["token_bins"] = plots.token_bins(ds, summarizer)
        consumers += [prepared["token_bins"]] if prepared["token_bins"] is not None else []
    ds.engine.stream(consumers)
    *per_grouping, (overall,) = summarizer.rows(groupings, itl={0}, overall=True, pooled_itl={0: itl.pooled})
    groups = per_grouping[0]
    by_host_model = groups if keys == HOST_MODEL else per_grouping[1]
    stage_rows = groups if keys == DEFAULT_BY else per_grouping[-1]
    summary = _summary(ds, summarizer, selection, keys, groups, overall, by_host_model)
    if thresholds:
        summary["thresholds"] = [r.to_dict() for r in evaluate(thresholds, groups)]
    health = wire.client_health(ds, diag_sample)
    summary["client_health"] = health
    summary["diagnostics"] = wire.diagnostics(ds, summarizer, health, diag_sample)
    summary["warnings"] += [
        f"run {h['run_id']}, stage {h['stage']}: {h['verdict']} (worker CPU max {h['cpu_percent_max']:.0f} %, "
        f"loop lag p99 {h['loop_lag_ms_p99']:.1f} ms)"
        for h in health
        if h["client_limited"]
    ]
    # Workload figures (requested lengths, turns, prefixes): only when records carry workload keys.
    if (work := workload.summarize(ds, summarizer, keys)) is not None:
        summary["workload"] = work
        summary["warnings"] += workload.warnings(work)
    tables = build_tables(summary) + workload.tables(summary)
    ctx = ReportContext(summary, tables, ds, summarizer, stage_rows, prepared)
    make_out_dir(out_dir)
    report = Report(summary)
    for name in names:
        report.files += writers[name](ctx, out_dir)
    return report


def make_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out_dir}: cannot create this folder ({exc.strerror or exc})") from exc


def _summary(
    ds: Dataset,
    summarizer: Summarizer,
    selection: Selection,
    by: Sequence[str],
    groups: list[Row],
    overall: Row,
    by_host_model: list[Row],
) -> dict[str, Any]:
    warnings = [
        f"{path}: skipped {n} broken line(s) (not JSON: cut mid-write?)"
        for run in ds.runs
        for path, n in run.broken_by_file.items()
    ]
    warnings += [
        f"run {t.run}, stage {t.stage}: all {t.records} records trimmed (stage spans {t.span_s:.1f} s, trim {t.trim_s:g} s at each end)"
        for t in selection.stages
        if t.records and t.trimmed == t.records
    ]
    if selection.records == 0:
        warnings.append("no records: records.jsonl is empty")
    elif selection.measured == 0:
        warnings.append("no measured records: every record was warm-up or trimmed")
    return {
        "schema_version": SCHEMA_VERSION,
        "harness_version": __version__,
        "generated_utc": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "runs": [
            {
                "run_id": run.run_id,
                "dir": str(run.dir),
                "started_utc": run.manifest.get("started_utc"),
                "ended_utc": run.manifest.get("ended_utc"),
                "records": run.records,
                "broken_lines": run.broken_lines,
                "slo": run.slo or None,
                "from_cache": run.from_cache,
            }
            for run in ds.runs
        ],
        "hosts": [str(h) for h in summarizer.values_in_order("host")],
        "models": [str(m) for m in summarizer.values_in_order("model")],
        "by": list(by),
        "counts": {
            "records": selection.records,
            "warmup": selection.warmup,
            "trimmed": selection.trimmed,
            "measured": selection.measured,
            "broken_lines": sum(run.broken_lines for run in ds.runs),
        },
        "trim": {
            "trim_s": selection.trim_s,
            "policy": "requests sent in the first and last trim_s seconds of each (run, stage) are dropped; "
            + (
                "trim_s as given"
                if selection.trim_s is not None
                else "automatic trim_s: 0 below 3 s of stage, else min(5 s, 10% of the stage)"
            ),
            "stages": [
                {
                    "run": t.run,
                    "stage": t.stage,
                    "span_s": t.span_s,
                    "trim_s": t.trim_s,
                    "records": t.records,
                    "trimmed": t.trimmed,
                }
                for t in selection.stages
            ],
        },
        "groups": groups,
        "overall": overall,
        "by_host_model": by_host_model,
        "warnings": warnings,
    }
