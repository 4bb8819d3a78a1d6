"""Text both the Markdown and the HTML report show: what was measured, the headline figures, and
the notes on warm-up, trimming and broken lines."""

from __future__ import annotations

from typing import Any

from harness.report.tables import format_value, host_label

__all__ = ["highlights", "notes", "scope"]


def scope(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) lines saying which runs, hosts and models the report covers."""
    runs = ", ".join(
        f"{r['run_id']}" + (f" ({r['started_utc']} → {r['ended_utc']})" if r.get("started_utc") else "")
        for r in summary["runs"]
    )
    return [
        ("Runs", runs),
        ("Hosts", ", ".join(host_label(h) for h in summary["hosts"])),
        ("Models", ", ".join(summary["models"])),
        ("Grouped by", ", ".join(summary["by"])),
        ("Generated", f"{summary['generated_utc']} by harness {summary['harness_version']}"),
    ]


def highlights(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, value, unit) of the overall row's headline figures."""
    o = summary["overall"]
    return [
        ("Measured requests", format_value(o["requests"], "int"), ""),
        ("Error rate", format_value(o["error_rate"], "pct"), "%"),
        ("TTFT p50 / p99", f"{format_value(o['ttft_ms_p50'])} / {format_value(o['ttft_ms_p99'])}", "ms"),
        ("TPOT p50", format_value(o["tpot_ms_p50"]), "ms"),
        ("E2E p95", format_value(o["e2e_ms_p95"]), "ms"),
        ("Output tokens/s", format_value(o["output_tokens_per_s"]), "tok/s"),
        ("Requests/s", format_value(o["requests_per_s"]), "req/s"),
        (
            "Goodput",
            format_value(o["goodput_per_s"]),
            "req/s" if o["goodput_per_s"] is not None else "(no SLO set)",
        ),
    ]


def notes(summary: dict[str, Any]) -> list[str]:
    """Plain sentences on what was left out of the metrics, and why."""
    counts, trim = summary["counts"], summary["trim"]
    out = [
        f"{counts['records']:,} records read; {counts['measured']:,} measured.",
        f"Warm-up: {counts['warmup']:,} records marked `warmup` are counted here and excluded from every metric.",
        f"Trimming: {counts['trimmed']:,} records excluded; {trim['policy']}.",
    ]
    trimmed_stages = [s for s in trim["stages"] if s["trim_s"] > 0]
    if trimmed_stages:
        out.append(
            "Per stage: "
            + "; ".join(
                f"{s['stage']} ({s['run']}): {s['trim_s']:g} s of {s['span_s']:.1f} s, {s['trimmed']:,} trimmed"
                for s in trimmed_stages
            )
            + "."
        )
    if counts["broken_lines"]:
        out.append(
            f"Broken lines: {counts['broken_lines']:,} line(s) of records.jsonl were not JSON (a file cut mid-write) and were skipped."
        )
    slo = {r["run_id"]: r["slo"] for r in summary["runs"] if r["slo"]}
    out.append(
        "SLOs: "
        + "; ".join(f"{run}: " + ", ".join(f"{k} ≤ {v:g}" for k, v in s.items()) for run, s in slo.items())
        if slo
        else "SLOs: none set in the scenario, so goodput is not computed."
    )
    out.append(
        "Percentiles are computed once over the merged raw records of all workers (linear interpolation), "
        "latencies over successful requests only; throughput counts successful requests over the measured window."
    )
    return out + [f"Warning: {w}" for w in summary["warnings"]]
