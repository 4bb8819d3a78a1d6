"""`bench.md`, `bench.csv`, `bench.json`: the model selection table of a `harness bench` run folder.

A report writer (`WRITERS["bench"]`): from the run's summary (latency and throughput per host, model
and stage, computed once by the report), its manifest (what the bench ran and why a model was
skipped), the host memory samples, the hand scores of `scoring.csv` and the judge's verdicts of
`judge.jsonl`, one row per (model, host, mode, concurrency), grouped by alias. Everything is read
from the folder, so `harness bench --rescore` renders exactly what the run rendered, plus new scores.
Formulas of energy and cost: `harness.metrics.energy_per_1k_tokens`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from harness.errors import HarnessError, InputError
from harness.metrics import energy_per_1k_tokens
from harness.quality import ScoreSummary, judges_used, read_judge, read_scoring_csv
from harness.records import read_records
from harness.rundir import RunDir, read_json, write_json

if TYPE_CHECKING:
    from harness.report.builder import ReportContext

__all__ = ["EMBEDDED_LABEL", "read_bench_manifest", "render_selection", "selection_rows", "write"]

#: How the table names a Foundry Local host the bench started for one model folder.
EMBEDDED_LABEL = "embedded foundry"


def write(ctx: ReportContext, out_dir: Path) -> list[Path]:
    """Render the selection table of every bench run in the report (other runs have none)."""
    written: list[Path] = []
    for run in ctx.summary.get("runs", []):
        run_dir = Path(run["dir"])
        try:
            read_bench_manifest(run_dir)
        except InputError:
            continue
        render_selection(run_dir, summary=ctx.summary)
        written += list(RunDir(run_dir).bench_tables)
    return written


def read_bench_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of a `harness bench` run folder; InputError for any other folder."""
    obj = read_json(RunDir(run_dir).manifest, "a folder written by `harness bench`")
    if obj.get("kind") != "bench":
        raise InputError(f"{run_dir}: not a `harness bench` run folder (its manifest has no bench section)")
    return obj


def summarize(run_dir: Path, problems: list[str]) -> dict[str, Any] | None:
    """The report's summary of a bench run, without trimming (every measured request counts)."""
    if not RunDir(run_dir).records.is_file() or not read_records(RunDir(run_dir).records)[0]:
        return None
    from harness.report import build

    try:
        return build([run_dir], run_dir, trim_s=0).summary
    except HarnessError as exc:
        problems.append(f"report: {exc}")
        return None


@dataclass(frozen=True)
class _Col:
    key: str
    header: str
    doc: str
    kind: str = "float"


# One line per column (header, then its explanation for the notes under the table).
# fmt: off
_COLUMNS = (
    _Col("alias", "alias", "the model as asked, or derived from its id (name without version and device); rows of one alias sit together", "str"),
    _Col("model", "model", "the exact variant id the host serves, as sent in every request", "str"),
    _Col("host", "host", f"where it ran; `{EMBEDDED_LABEL}`: a Foundry Local host the bench started for this model folder alone", "str"),
    _Col("ep", "EP", "execution provider / device named by the variant id (generic-cpu, cuda-gpu, ...); — when the id names none", "str"),
    _Col("mode", "mode", "stream: streamed, with time to first token; plain: complete responses (no TTFT)", "str"),
    _Col("concurrency", "c", "requests in flight at once", "int"),
    _Col("status", "status", "ok; skipped (not served, no prompt for its capabilities, host unreachable); failed (load failed, no answer, every request failed); reasons below", "str"),
    _Col("requests", "ok/sent", "measured requests that completed / were sent (warm-up excluded)", "str"),
    _Col("ttft_ms_p50", "TTFT p50 ms", "time to first token, median of successful measured requests (the report's summary)"),
    _Col("ttft_ms_p95", "TTFT p95 ms", "time to first token, 95th percentile"),
    _Col("e2e_ms_mean", "E2E mean ms", "whole response time, mean"),
    _Col("e2e_ms_p95", "E2E p95 ms", "whole response time, 95th percentile"),
    _Col("output_tokens_per_s", "out tok/s", "completion tokens of successful requests / the stage's window (first send to last end); prompt tokens never count (the workshop's script divided prompt + completion tokens by latency)"),
    _Col("load_s", "load s", "time to load the model: the embedded host's start-up (registration and load), or the host's load call when the bench had to load it; — when already loaded"),
    _Col("peak_rss_mb", "peak RSS MB", "highest resident memory of the host process, sampled every 0.1 s and at the start and end of each model, while this model was benched (warm-up included); a host serving several models counts them all; — when the host is not a process on this machine"),
    _Col("disk", "disk MB", "the model folder's size on disk (embedded host: the folder served; local Foundry service: found under its modelCachePath); `declared`: size_mb from models.json, not measured", "str"),
    _Col("quality_hand", "quality (hand)", "mean of the 1-5 scores filled into scoring.csv, n = answers scored", "str"),
    _Col("quality_judge", "quality (judge)", "mean of the judge model's 1-5 scores, n = verdicts with a score; unparsed verdicts counted, kept in judge.jsonl", "str"),
    _Col("license", "license", "as declared in models.json; — unknown", "str"),
    _Col("capabilities", "capabilities", "tags from models.json; prompts with `capabilities` go only to models sharing a tag", "str"),
    _Col("energy_j_per_1k", "J / 1k tok", "energy per 1,000 output tokens at --power-watts W: W × 1000 / (out tok/s)"),
    _Col("energy_wh_per_1k", "Wh / 1k tok", "the same in watt-hours: J / 3600"),
    _Col("cost_per_1k", "cost / 1k tok", "Wh / 1000 × --price-per-kwh"),
)
# fmt: on


def _stage_row(summary: dict[str, Any] | None, host: str, model: str, stage: str) -> dict[str, Any]:
    if not summary:
        return {}
    for row in summary.get("groups", []):
        key = row.get("key") or {}
        if key.get("host") == host and key.get("model") == model and key.get("stage") == stage:
            return dict(row)
    return {}


def _peak_rss_mb(samples: list[dict[str, Any]], entry: dict[str, Any]) -> float | None:
    lo, hi, host = entry.get("started_unix_ns"), entry.get("ended_unix_ns"), entry.get("host")
    if lo is None or hi is None or host is None:
        return None
    inside = [s["rss_bytes"] for s in samples if s.get("host") == host and lo <= s.get("t_unix_ns", -1) <= hi]
    return max(inside) / 1e6 if inside else None


def _host_samples(run_dir: Path) -> list[dict[str, Any]]:
    path = RunDir(run_dir).host_metrics
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if (
            isinstance(obj, dict)
            and isinstance(obj.get("rss_bytes"), int | float)
            and isinstance(obj.get("t_unix_ns"), int)
        ):
            out.append(obj)
    return out


def _load_summary(run_dir: Path, problems: list[str]) -> dict[str, Any] | None:
    """summary.json when it was computed without trimming (as the bench does), else computed anew."""
    path = RunDir(run_dir).summary
    if path.is_file():
        try:
            obj = orjson.loads(path.read_bytes())
            if isinstance(obj, dict) and (obj.get("trim") or {}).get("trim_s") == 0:
                return obj
        except orjson.JSONDecodeError:
            pass
    return summarize(run_dir, problems)


def selection_rows(
    manifest: dict[str, Any],
    summary: dict[str, Any] | None,
    samples: list[dict[str, Any]],
    hand: dict[tuple[str, str], ScoreSummary],
    judge: dict[tuple[str, str], ScoreSummary],
    *,
    power_watts: float | None,
    price_per_kwh: float | None,
) -> list[dict[str, Any]]:
    """One row per (host, model, stage) measured, one per model not measured; grouped by alias."""
    rows: list[dict[str, Any]] = []
    for e in manifest.get("models", []):
        host, model = e.get("host"), e.get("resolved")
        caps = e.get("capabilities") or []
        base: dict[str, Any] = {
            "alias": e.get("alias") or e.get("asked"),
            "asked": e.get("asked"),
            "model": model or e.get("asked"),
            "host": e.get("host_label"),
            "host_url": host,
            "ep": e.get("ep"),
            "status": e.get("status"),
            "reason": e.get("reason"),
            "load_s": e.get("load_s"),
            "peak_rss_mb": _peak_rss_mb(samples, e),
            "disk_mb": e.get("disk_mb"),
            "disk_source": e.get("disk_source"),
            "license": e.get("license"),
            "capabilities": caps,
        }
        key = (str(host), str(model))
        # A scoring.csv whose host column was deleted still scores the model (host read as "").
        hand_scores = hand.get(key) or hand.get(("", str(model)))
        for name, scores in (("hand", hand_scores), ("judge", judge.get(key))):
            s = scores or ScoreSummary()
            base |= {f"quality_{name}_mean": s.mean, f"quality_{name}_n": s.n, f"quality_{name}_sd": s.sd}
            base[f"quality_{name}_unparsed"] = s.unparsed
            base[f"quality_{name}"] = s.label()
        stages = e.get("stages") or []
        if not stages:
            rows.append(base | {"mode": None, "concurrency": None, "requests": None})
            continue
        for stage in stages:
            mode, _, c = stage.partition(" c=")
            g = _stage_row(summary, str(host), str(model), stage)
            tps = g.get("output_tokens_per_s")
            j, wh, cost = energy_per_1k_tokens(power_watts, tps, price_per_kwh)
            rows.append(
                base
                | {
                    "stage": stage,
                    "mode": mode,
                    "concurrency": int(c) if c.isdigit() else None,
                    "requests_sent": g.get("requests"),
                    "requests_ok": g.get("ok"),
                    "requests": f"{g['ok']}/{g['requests']}" if "requests" in g else None,
                    "ttft_ms_p50": g.get("ttft_ms_p50"),
                    "ttft_ms_p95": g.get("ttft_ms_p95"),
                    "e2e_ms_mean": g.get("e2e_ms_mean"),
                    "e2e_ms_p95": g.get("e2e_ms_p95"),
                    "output_tokens_per_s": tps,
                    "energy_j_per_1k": j,
                    "energy_wh_per_1k": wh,
                    "cost_per_1k": cost,
                }
            )
    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(str(r["alias"]), len(order))
    return sorted(rows, key=lambda r: order[str(r["alias"])])  # stable: bench order within an alias


def _cell(row: dict[str, Any], col: _Col) -> str:
    from harness.report.tables import format_value

    if col.key == "disk":
        mb = row.get("disk_mb")
        if mb is None:
            return "—"
        return format_value(mb) + (" declared" if row.get("disk_source") == "declared" else "")
    if col.key == "capabilities":
        return ", ".join(row.get("capabilities") or []) or "—"
    value = row.get(col.key)
    if value is None or value == "":
        return "—"
    if col.kind == "str":
        return str(value)
    if col.kind == "int":
        return f"{int(value):,}"
    if col.key in ("cost_per_1k", "energy_wh_per_1k"):
        return f"{float(value):.3g}"  # often far below 1: significant digits, not decimals
    return format_value(value)


def _shown_columns(
    rows: list[dict[str, Any]], power_watts: float | None, price_per_kwh: float | None
) -> list[_Col]:
    skip = set()
    if power_watts is None:
        skip |= {"energy_j_per_1k", "energy_wh_per_1k", "cost_per_1k"}
    if price_per_kwh is None:
        skip.add("cost_per_1k")
    if not any(r.get("quality_judge_n") or r.get("quality_judge_unparsed") for r in rows):
        skip.add("quality_judge")
    return [c for c in _COLUMNS if c.key not in skip]


def render_selection(
    run_dir: Path,
    *,
    summary: dict[str, Any] | None = None,
    power_watts: float | None = None,
    price_per_kwh: float | None = None,
    problems: Sequence[str] = (),
) -> str:
    """Write bench.md, bench.csv and bench.json from a bench run folder; returns a terminal table.

    Everything is read from the folder (manifest, summary, host samples, scoring.csv, judge.jsonl),
    so `harness bench --rescore` renders exactly what the run itself rendered, plus new scores.
    Power and price default to what the run was given.
    """
    manifest = read_bench_manifest(run_dir)
    # The run's own problems stay in the table after a rescore; new ones follow.
    notes = list(dict.fromkeys([*manifest.get("problems", []), *problems]))
    bench = manifest.get("bench") or {}
    power_watts = power_watts if power_watts is not None else bench.get("power_watts")
    price_per_kwh = price_per_kwh if price_per_kwh is not None else bench.get("price_per_kwh")
    if summary is None:
        summary = _load_summary(run_dir, notes)
    rd = RunDir(run_dir)
    hand, hand_problems = read_scoring_csv(rd.scoring)
    notes += hand_problems
    judge = read_judge(rd.judge)
    rows = selection_rows(
        manifest,
        summary,
        _host_samples(run_dir),
        hand,
        judge,
        power_watts=power_watts,
        price_per_kwh=price_per_kwh,
    )
    cols = _shown_columns(rows, power_watts, price_per_kwh)
    settings = {"power_watts": power_watts, "price_per_kwh": price_per_kwh}
    md_path, csv_path, json_path = rd.bench_tables
    _write_bench_json(json_path, manifest, rows, cols, settings, notes)
    _write_bench_csv(csv_path, rows, power_watts is not None, price_per_kwh is not None)
    md_path.write_text(
        _markdown(manifest, rows, cols, settings, notes, judges_used(rd.judge)), encoding="utf-8"
    )
    return _console(rows)


_CSV_KEYS = (
    "alias", "asked", "model", "host", "host_url", "ep", "mode", "concurrency", "status", "reason",
    "requests_sent", "requests_ok", "ttft_ms_p50", "ttft_ms_p95", "e2e_ms_mean", "e2e_ms_p95",
    "output_tokens_per_s", "load_s", "peak_rss_mb", "disk_mb", "disk_source",
    "quality_hand_mean", "quality_hand_n", "quality_judge_mean", "quality_judge_n", "quality_judge_unparsed",
    "license", "capabilities", "energy_j_per_1k", "energy_wh_per_1k", "cost_per_1k",
)  # fmt: skip


def _write_bench_csv(path: Path, rows: list[dict[str, Any]], energy: bool, cost: bool) -> None:
    keys = [k for k in _CSV_KEYS if (energy or not k.startswith("energy")) and (cost or k != "cost_per_1k")]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for r in rows:
            cells = []
            for k in keys:
                v = r.get(k)
                if isinstance(v, list):
                    v = " ".join(str(x) for x in v)
                elif isinstance(v, float):
                    v = f"{v:.6g}"
                cells.append("" if v is None else v)
            w.writerow(cells)


def _write_bench_json(
    path: Path,
    manifest: dict[str, Any],
    rows: list[dict[str, Any]],
    cols: list[_Col],
    settings: dict[str, Any],
    notes: list[str],
) -> None:
    from datetime import UTC, datetime

    bench = manifest.get("bench") or {}
    write_json(
        path,
        {
            "run_id": manifest.get("run_id"),
            "generated_utc": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "config": {k: v for k, v in bench.items() if k not in ("prompts", "catalog")} | settings,
            "columns": {c.key: c.doc for c in cols},
            "rows": rows,
            "problems": notes,
        },
    )


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(
    manifest: dict[str, Any],
    rows: list[dict[str, Any]],
    cols: list[_Col],
    settings: dict[str, Any],
    notes: list[str],
    judges: Sequence[tuple[str, str]] = (),
) -> str:
    bench = manifest.get("bench") or {}
    prompts = bench.get("prompts") or []
    temp = bench.get("temperature")
    out = [
        f"# Model selection: {manifest.get('run_id')}",
        "",
        f"- Started {manifest.get('started_utc')} on {manifest.get('machine', {}).get('platform')} "
        f"({manifest.get('machine', {}).get('cpus')} CPUs), harness {manifest.get('versions', {}).get('harness')}.",
        f"- {bench.get('rounds')} round(s) of {len(prompts)} prompt(s) ({', '.join(p['id'] for p in prompts)}) "
        f"per model and stage, after {bench.get('warmup_rounds')} warm-up round(s) (not measured); "
        f"max_tokens {bench.get('max_tokens')}, temperature {'server default' if temp is None else f'{temp:g}'}"
        + (" (deterministic)" if temp == 0 else "")
        + f"; modes {', '.join(bench.get('modes') or [])}; concurrency {', '.join(str(c) for c in bench.get('concurrency') or [])}; "
        f"connection `{bench.get('connection')}`.",
    ]
    if settings.get("power_watts") is not None:
        price = settings.get("price_per_kwh")
        out.append(
            f"- Energy at {settings['power_watts']:g} W"
            + (f", price {price:g} per kWh." if price is not None else ".")
        )
    if judges:
        out.append(
            "- Judge: " + ", ".join(f"`{model}` at {url}" for url, model in judges) + " (judge.jsonl)."
        )
    out += ["", "| " + " | ".join(c.header for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_md_escape(_cell(r, c)) for c in cols) + " |")
    out += ["", "Columns:", ""]
    out += [f"- **{c.header}**: {c.doc}." for c in cols]
    reasons = [r for r in rows if r.get("reason")]
    seen: set[tuple[str, str]] = set()
    if reasons:
        out += ["", "## Status reasons", ""]
        for r in reasons:
            ident = (str(r.get("host")), str(r.get("model")))
            if ident in seen:
                continue
            seen.add(ident)
            where = f" on {r['host']}" if r.get("host_url") else ""
            out.append(f"- `{r['model']}`{where}: **{r['status']}**: {_md_escape(str(r['reason']))}")
    samples = [e for e in manifest.get("models", []) if e.get("sample_answer")]
    if samples:
        out += ["", "## Sample answers (first measured answer, first 200 characters)", ""]
        out += [
            f"- `{e['resolved']}` on {e['host_label']}: “{_md_escape(e['sample_answer'].strip())}”"
            for e in samples
        ]
    if notes:
        out += ["", "## Notes", ""] + [f"- {_md_escape(n)}" for n in notes]
    out += [
        "",
        "Latency and throughput come from the run's `summary.json` (the post-processor, over raw records, no "
        "trimming). Hand scores: fill the `score` column of `scoring.csv`, then `harness bench --rescore RUN_DIR`.",
        "",
    ]
    return "\n".join(out)


def _console(rows: list[dict[str, Any]]) -> str:
    from harness.report.tables import fixed_width, format_value

    header = [
        "alias",
        "model",
        "host",
        "mode",
        "status",
        "TTFT p50",
        "E2E p95",
        "out tok/s",
        "RSS MB",
        "quality",
    ]
    body = []
    for r in rows:
        mode = f"{r['mode']} c={r['concurrency']}" if r.get("mode") else "-"
        # People's scores first; the judge's where nobody scored.
        quality = r.get("quality_hand") if r.get("quality_hand_n") else r.get("quality_judge")
        body.append(
            [
                str(r["alias"]),
                str(r["model"]),
                str(r["host"]),
                mode,
                str(r["status"]),
                format_value(r.get("ttft_ms_p50")),
                format_value(r.get("e2e_ms_p95")),
                format_value(r.get("output_tokens_per_s")),
                format_value(r.get("peak_rss_mb")),
                str(quality or "—"),
            ]
        )
    if not body:
        return "(no model was benched)"
    return (
        fixed_width(header, body, left=5)
        + "\n(latencies in ms; output tokens/s counts completion tokens only)"
    )
