"""The post-processor on hand-built run folders whose right answers are known by construction.

`build_report(run_dir)` is the seam for a test against a real `harness run` folder: it returns the
report and checks what every report must hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from harness_helpers import harness, last_line
from recordgen import T0_NS, record, write_run

from harness.errors import InputError
from harness.records import ERROR_CATEGORIES
from harness.report import Report, build, load, measured, plots
from harness.report.aggregate import Summarizer


def build_report(run_dirs: Path | list[Path], out: Path | None = None, **kwargs: Any) -> Report:
    """Build every format and check what holds for any report."""
    dirs = run_dirs if isinstance(run_dirs, list) else [run_dirs]
    out = out or dirs[0]
    report = build(dirs, out, **kwargs)
    names = {p.name for p in report.files}
    assert {"report.md", "report.html", "summary.json", "requests.csv", "ttft.csv", "models.csv"} <= names
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert (
        summary["counts"]["records"]
        == summary["counts"]["warmup"] + summary["counts"]["trimmed"] + summary["counts"]["measured"]
    )
    assert (
        summary["overall"]["requests"]
        == summary["counts"]["measured"]
        == sum(g["requests"] for g in summary["groups"])
    )
    md = (out / "report.md").read_text()
    assert "| Model | Avg latency (ms) | p95 (ms) | TPS |" in md
    html = (out / "report.html").read_text()
    assert "<script" not in html and "src=" not in html and "<link" not in html  # self-contained
    return report


def group(report: Report, **key: str) -> dict[str, Any]:
    (found,) = [g for g in report.summary["groups"] if all(g["key"].get(k) == v for k, v in key.items())]
    return found


# --- percentiles, windows, throughput ---------------------------------------------------------------


def test_percentiles_are_computed_over_merged_raw_records(tmp_path: Path) -> None:
    # Worker 1: TTFT 100..199 ms; worker 2: 1000..1009 ms. The merged p50 is not the mean of per-worker p50s.
    recs = [record(t_s=i * 0.01, ttft_ms=100.0 + i, worker="a:1") for i in range(100)]
    recs += [record(t_s=i * 0.01, ttft_ms=1000.0 + i, worker="b:2") for i in range(10)]
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    all_ttft = np.array([r["ttft_ms"] for r in recs])
    overall = report.summary["overall"]
    for q in (50, 90, 95, 99):
        assert overall[f"ttft_ms_p{q}"] == pytest.approx(np.percentile(all_ttft, q))
    assert overall["ttft_ms_max"] == 1009.0
    assert overall["ttft_ms_count"] == 110
    assert overall["ttft_ms_mean"] == pytest.approx(all_ttft.mean())


def test_throughput_window_tpot_and_itl(tmp_path: Path) -> None:
    # One request per second for 10 s, each 11 tokens, TTFT 100 ms, TPOT 10 ms: ends 200 ms after sending.
    recs = [record(t_s=i, ttft_ms=100.0, tpot_ms=10.0, tokens=11) for i in range(10)]
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    g = report.summary["overall"]
    assert g["window_s"] == pytest.approx(9.2)  # first send (0 s) to last end (9 s + 200 ms)
    assert g["output_tokens"] == 110
    assert g["output_tokens_per_s"] == pytest.approx(110 / 9.2)
    assert g["requests_per_s"] == pytest.approx(10 / 9.2)
    assert g["tpot_ms_p50"] == 10.0
    assert g["stream_tokens_per_s_p50"] == 100.0
    assert g["itl_ms_count"] == 100  # 10 gaps per request, never across requests
    assert g["itl_ms_p50"] == g["itl_ms_max"] == 10.0
    assert g["e2e_ms_p50"] == 200.0


def test_errors_by_category_are_counted_not_averaged_in(tmp_path: Path) -> None:
    recs = [record(t_s=i * 0.1, ttft_ms=100.0) for i in range(16)]
    recs += [
        record(t_s=2 + i * 0.1, ok=False, error=cat, ttft_ms=None, tokens=0, e2e_ms=5000.0)
        for i, cat in enumerate(ERROR_CATEGORIES)
    ]
    recs.append(record(t_s=3, ok=False, error=None, ttft_ms=None, tokens=0))
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    g = report.summary["overall"]
    assert g["requests"] == 26
    assert g["failed"] == 10
    assert g["errors"] == {cat: 1 for cat in ERROR_CATEGORIES} | {"unknown": 1}
    assert g["error_rate"] == pytest.approx(10 / 26)
    assert g["e2e_ms_max"] < 5000  # failed requests stay out of latency
    csv_head = (tmp_path / "r" / "requests.csv").read_text().splitlines()[0]
    assert "errors.http_429" in csv_head


def test_goodput_against_the_manifest_slo(tmp_path: Path) -> None:
    recs = [record(t_s=i, ttft_ms=100.0 if i % 2 else 500.0, tokens=11) for i in range(10)]
    report = build_report(
        write_run(tmp_path / "slo", recs, slo={"ttft_ms": 200.0, "e2e_ms": 10_000.0}), trim_s=0
    )
    g = report.summary["overall"]
    assert g["slo_met"] == 5
    assert g["goodput_per_s"] == pytest.approx(5 / g["window_s"])
    no_slo = build_report(write_run(tmp_path / "none", recs), trim_s=0)
    assert no_slo.summary["overall"]["goodput_per_s"] is None
    assert no_slo.summary["overall"]["slo_met"] is None


def test_dispatch_delay_and_latency_from_schedule(tmp_path: Path) -> None:
    recs = [
        record(t_s=i * 0.1, ttft_ms=100.0, tokens=2, tpot_ms=100.0, dispatch_delay_ms=float(i))
        for i in range(11)
    ]
    g = build_report(write_run(tmp_path / "r", recs), trim_s=0).summary["overall"]
    assert g["dispatch_delay_ms_p50"] == 5.0
    assert g["dispatch_delay_ms_max"] == 10.0
    assert g["sched_e2e_ms_max"] == 210.0
    assert g["sched_ttft_ms_p50"] == 105.0


def test_queue_time_from_the_concurrency_1_stage(tmp_path: Path) -> None:
    recs = [record(t_s=i * 0.1, stage="c1", users=1, ttft_ms=100.0) for i in range(10)]
    # Concurrency 4 over two workers with 2 users each; TTFT 250 ms.
    recs += [
        record(t_s=5 + i * 0.1, stage="c4", users=2, worker=f"w:{i % 2}", ttft_ms=250.0) for i in range(10)
    ]
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    assert group(report, stage="c4")["concurrency"] == 4
    assert group(report, stage="c4")["queue_time_ms_p50"] == 150.0
    assert group(report, stage="c1")["queue_time_ms_p50"] == 0.0
    no_c1 = build_report(write_run(tmp_path / "n", recs[10:]), trim_s=0)
    assert no_c1.summary["overall"]["queue_time_ms_p50"] is None


def test_token_mismatch_and_events_per_read(tmp_path: Path) -> None:
    recs = [record(t_s=0.1 * i, tokens=10, content_reads=5) for i in range(4)]
    recs += [record(t_s=1, tokens=10, usage_tokens=12)]  # usage says 12, 10 events counted
    g = build_report(write_run(tmp_path / "r", recs), trim_s=0).summary["overall"]
    assert g["token_mismatch"] == 1
    assert g["output_tokens"] == 52  # usage counts win
    assert g["events_per_read_p50"] == 2.0
    assert g["events_per_read_max"] == 2.0


def test_host_peak_memory_while_the_group_ran(tmp_path: Path) -> None:
    host = "http://127.0.0.1:8001/v1"
    recs = [record(t_s=i, host=host) for i in range(5)]
    samples = [
        {"host": host, "t_unix_ns": T0_NS + s * 1_000_000_000, "rss_bytes": rss, "cpu_percent": 50.0}
        for s, rss in ((1, 100_000_000), (2, 300_000_000), (60, 900_000_000))  # the last: after the run
    ]
    report = build_report(write_run(tmp_path / "r", recs, host_samples=samples), trim_s=0)
    assert report.summary["overall"]["host_peak_rss_mb"] == 300.0
    assert (
        build_report(write_run(tmp_path / "none", recs), trim_s=0).summary["overall"]["host_peak_rss_mb"]
        is None
    )


# --- what is measured --------------------------------------------------------------------------------


def test_warmup_is_counted_but_excluded(tmp_path: Path) -> None:
    recs = [record(t_s=0.1 * i, warmup=True, ttft_ms=9000.0) for i in range(5)]
    recs += [record(t_s=1 + 0.1 * i, ttft_ms=100.0) for i in range(10)]
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    assert report.summary["counts"]["warmup"] == 5
    assert report.summary["overall"]["requests"] == 10
    assert report.summary["overall"]["ttft_ms_max"] == 100.0
    assert "5 records marked `warmup`" in (tmp_path / "r" / "report.md").read_text()


def test_default_trimming_drops_each_stage_edges(tmp_path: Path) -> None:
    # Stage "long": one request per second for 60 s (span 59 s -> 5 s trimmed at each end);
    # stage "short": 2 s (never trimmed by default).
    recs = [record(t_s=i, stage="long") for i in range(60)]
    recs += [record(t_s=100 + 0.5 * i, stage="short") for i in range(5)]
    report = build_report(write_run(tmp_path / "r", recs))
    # Sent at 0-4 s and 55-59 s: 10 records trimmed.
    assert group(report, stage="long")["requests"] == 50
    assert group(report, stage="short")["requests"] == 5
    assert report.summary["counts"]["trimmed"] == 10
    stages = {s["stage"]: s for s in report.summary["trim"]["stages"]}
    assert stages["long"]["trim_s"] == 5.0 and stages["long"]["trimmed"] == 10
    assert stages["short"]["trim_s"] == 0.0
    fixed = build_report(write_run(tmp_path / "f", recs), trim_s=10)
    assert group(fixed, stage="long")["requests"] == 40  # 10-49 s
    assert fixed.summary["counts"]["trimmed"] == 20 + 5  # the short stage entirely
    assert [g["key"]["stage"] for g in fixed.summary["groups"]] == ["long"]
    assert any("all 5 records trimmed" in w for w in fixed.warnings)
    none = build_report(write_run(tmp_path / "n", recs), trim_s=0)
    assert none.summary["counts"]["trimmed"] == 0


def test_grouping_by_any_keys(tmp_path: Path) -> None:
    recs = [
        record(
            t_s=0.1 * i,
            host=f"http://h{i % 2}:1/v1",
            model=f"m{i % 3}",
            prompt_id=f"p{i % 4}",
            connection="new" if i < 6 else "reuse",
        )
        for i in range(24)
    ]
    run = write_run(tmp_path / "r", recs)
    default = build_report(run, trim_s=0)
    assert default.summary["by"] == ["run", "host", "model", "stage"]
    assert len(default.summary["groups"]) == 6
    by_prompt = build_report(run, tmp_path / "o1", by=["prompt_id"], trim_s=0)
    assert [g["key"] for g in by_prompt.summary["groups"]] == [{"prompt_id": f"p{i}"} for i in range(4)]
    assert [g["requests"] for g in by_prompt.summary["groups"]] == [6, 6, 6, 6]
    by_conn = build_report(run, tmp_path / "o2", by=["connection", "host"], trim_s=0)
    assert group(by_conn, connection="new", host="http://h0:1/v1")["requests"] == 3
    assert len(default.summary["by_host_model"]) == 6
    with pytest.raises(InputError, match="--by: unknown key colour"):
        build([run], tmp_path / "o3", by=["host", "colour"])


def test_several_runs_merge_and_group_by_run(tmp_path: Path) -> None:
    a = write_run(
        tmp_path / "a",
        [record(t_s=i * 0.1, run_id="run-a", ttft_ms=100.0) for i in range(10)],
        run_id="run-a",
    )
    # Run b an hour later: the overall window is the two runs' windows, not the hour between them.
    b = write_run(
        tmp_path / "b",
        [record(t_s=3600 + i * 0.1, run_id="run-b", ttft_ms=300.0) for i in range(10)],
        run_id="run-b",
    )
    report = build_report([a, b], tmp_path / "out", trim_s=0)
    assert group(report, run="run-a")["ttft_ms_p50"] == 100.0
    assert group(report, run="run-b")["ttft_ms_p50"] == 300.0
    assert report.summary["overall"]["ttft_ms_p50"] == 200.0
    assert group(report, run="run-a")["window_s"] == pytest.approx(0.9 + 0.19)
    assert report.summary["overall"]["window_s"] == pytest.approx((0.9 + 0.19) + (0.9 + 0.39))
    # Runs at the same time (two harnesses side by side): their windows overlap and count once.
    c = write_run(
        tmp_path / "c",
        [record(t_s=i * 0.1, run_id="run-c", ttft_ms=300.0) for i in range(10)],
        run_id="run-c",
    )
    side_by_side = build_report([a, c], tmp_path / "out2", trim_s=0)
    assert side_by_side.summary["overall"]["window_s"] == pytest.approx(0.9 + 0.39)


# --- reading records -----------------------------------------------------------------------------------


def test_broken_last_line_is_skipped_and_reported(tmp_path: Path) -> None:
    recs = [record(t_s=0.1 * i) for i in range(10)]
    cut = orjson.dumps(record(t_s=2))[:57]
    report = build_report(write_run(tmp_path / "r", recs, tail=cut), trim_s=0)
    assert report.summary["counts"]["broken_lines"] == 1
    assert report.summary["counts"]["records"] == 10
    assert any("skipped 1 broken line" in w for w in report.warnings)
    assert "Broken lines: 1 line(s)" in (tmp_path / "r" / "report.md").read_text()


def test_a_json_line_that_is_not_a_record_names_file_and_line(tmp_path: Path) -> None:
    recs = [record(t_s=0.1 * i) for i in range(3)]
    bad = dict(recs[1])
    del bad["sent_unix_ns"]
    run = write_run(tmp_path / "r", [recs[0], bad, recs[2]])
    with pytest.raises(InputError, match=r"records\.jsonl:2: not a record: .*sent_unix_ns"):
        build([run], run)


def test_offsets_in_nanoseconds_by_mistake_are_refused(tmp_path: Path) -> None:
    rec = record() | {"event_offsets_us": [100_000_000_000, 110_000_000_000]}
    with pytest.raises(InputError, match=r":1: not a record: event_offsets_us beyond"):
        build([write_run(tmp_path / "r", [rec])], tmp_path / "r")


def test_outputs_and_summary_shape(tmp_path: Path) -> None:
    recs = [record(t_s=0.1 * i, model=f"m{i % 2}", ttft_ms=100.0 + i) for i in range(20)]
    out = tmp_path / "out"
    report = build_report(
        write_run(tmp_path / "r", recs), out, trim_s=0, formats=["json", "md", "csv", "html"]
    )
    s = orjson.loads((out / "summary.json").read_bytes())
    assert s == orjson.loads(orjson.dumps(report.summary))
    assert {
        "schema_version",
        "runs",
        "hosts",
        "models",
        "by",
        "counts",
        "trim",
        "groups",
        "overall",
        "by_host_model",
        "warnings",
    } <= s.keys()
    g = s["groups"][0]
    for key in (
        "ttft_ms_p50",
        "ttft_ms_p99",
        "e2e_ms_p95",
        "tpot_ms_mean",
        "itl_ms_p90",
        "output_tokens_per_s",
        "requests_per_s",
        "errors",
        "error_rate",
    ):
        assert key in g
    md = (out / "report.md").read_text()
    assert md.index("| Model | Avg latency (ms) | p95 (ms) | TPS |") < md.index("## Requests and errors")
    assert "| m0 |" in md
    console = report.console_table()
    assert "TTFT p50" in console and "out tok/s" in console and "m1" in console
    only_json = build([tmp_path / "r"], tmp_path / "j", formats=["json"], trim_s=0)
    assert [p.name for p in only_json.files] == ["summary.json"]
    with pytest.raises(InputError, match="--format: unknown format pdf"):
        build([tmp_path / "r"], tmp_path / "x", formats=["md", "pdf"])


def test_missing_inputs_raise_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        build([tmp_path / "nope"], tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no records\.jsonl"):
        build([tmp_path / "empty"], tmp_path)
    run = write_run(tmp_path / "r", [record()])
    with pytest.raises(InputError, match="--trim-s"):
        build([run], run, trim_s=-1)


# --- the command line -----------------------------------------------------------------------------------


def test_cli_report_writes_into_the_run_folder(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", [record(t_s=0.1 * i) for i in range(10)])
    done = harness("report", str(run), "--trim-s", "0", "--by", "host,model")
    assert done.returncode == 0, done.stderr
    assert last_line(done.stdout) == str(run)
    assert (run / "report.html").is_file() and (run / "summary.json").is_file()
    assert orjson.loads((run / "summary.json").read_bytes())["by"] == ["host", "model"]


def test_cli_report_several_runs_needs_out_or_writes_results(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", [record(t_s=0.1 * i) for i in range(5)], run_id="a")
    b = write_run(tmp_path / "b", [record(t_s=0.1 * i) for i in range(5)], run_id="b")
    done = harness("report", str(a), str(b), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = Path(last_line(done.stdout))
    assert out.parts[0] == "results" and out.name.startswith("report-")
    assert (tmp_path / out / "report.md").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing"], "no such folder"),
        (["empty"], "no records.jsonl"),
        (["run", "--by", "host,colour"], "--by: unknown key colour"),
        (["run", "--format", "md,pdf"], "--format: unknown format pdf"),
        (["run", "--trim-s", "x"], "--trim-s"),
    ],
)
def test_cli_report_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "run", [record()])
    done = harness("report", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert message in done.stderr


def test_itl_per_group_matches_gaps_computed_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Random event timings over several groups, parsed in many small blocks, against plain numpy.
    rng = np.random.default_rng(5)
    recs = []
    for i in range(600):
        offsets = np.cumsum(rng.integers(1, 90_000, int(rng.integers(0, 12)))).tolist()
        rec = record(
            t_s=0.01 * i,
            model=f"m{i % 3}",
            stage=f"s{i % 2}",
            ok=i % 11 != 0,
            error=None if i % 11 else "stall",
        )
        recs.append(rec | {"event_offsets_us": offsets, "content_events": len(offsets)})
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    for g in [*report.summary["groups"], report.summary["overall"]]:
        key = g["key"]
        mine = [
            r
            for r in recs
            if r["ok"] and (key == "all" or (r["model"], r["stage"]) == (key["model"], key["stage"]))
        ]
        gaps = np.concatenate([np.diff(r["event_offsets_us"]) for r in mine]) / 1000
        assert g["itl_ms_count"] == gaps.size
        for q in (50, 90, 95, 99):
            assert g[f"itl_ms_p{q}"] == pytest.approx(np.percentile(gaps, q))
        assert g["itl_ms_max"] == pytest.approx(gaps.max())
        assert g["itl_ms_mean"] == pytest.approx(gaps.mean())


def test_tokens_over_time_add_up_to_the_output_tokens(tmp_path: Path) -> None:
    # 1 request per second, 11 tokens each, 3 s apart from TTFT 0.5 s to 1.5 s: spans 1 s bins.
    recs = [
        record(t_s=i, ttft_ms=500.0, tpot_ms=100.0, tokens=11, usage_tokens=22 if i == 3 else None)
        for i in range(6)
    ]
    run = write_run(tmp_path / "r", recs)
    ds = load.load_runs([run])
    measured.select(ds, 0)
    bins = plots.token_bins(ds, Summarizer(ds))
    assert bins is not None
    assert (bins.bin_ns, bins.n_bins) == (1_000_000_000, 7)  # 0 s to 6.5 s: 7 bins of 1 s
    ds.engine.stream([bins])
    ds.close()
    counts = bins.counts()
    # Record i sends 5 events in [i + 0.5, i + 0.9] and 6 in [i + 1.0, i + 1.5]; record 3 weighs 2 each.
    expected = np.zeros(7)
    for i in range(6):
        weight = 2 if i == 3 else 1
        expected[i] += 5 * weight
        expected[i + 1] += 6 * weight
    assert counts[0].tolist() == expected.tolist()
    assert counts.sum() == 6 * 11 + 11


def test_an_empty_records_file_gives_an_empty_report(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "records.jsonl").write_bytes(b"")
    report = build_report(run)
    assert report.summary["counts"]["records"] == 0
    assert report.warnings == ["no records: records.jsonl is empty"]


# --- the engine ------------------------------------------------------------------------------------


def test_percentiles_equal_numpy_over_the_raw_records(tmp_path: Path) -> None:
    # Values with fractions of a µs, odd and even group sizes: numpy's interpolation bit for bit
    # (DuckDB's own quantile_cont differs from it in the last bit when the fraction is ≥ 0.5).
    rng = np.random.default_rng(7)
    recs = []
    for i in range(2001):
        ttft = float(np.round(rng.lognormal(4.5, 0.7), 3))
        recs.append(
            record(
                t_s=0.001 * i,
                ttft_ms=ttft,
                tpot_ms=float(np.round(rng.uniform(5, 30), 4)),
                tokens=int(rng.integers(2, 6)),
                stage=f"s{i % 3}",
                dispatch_delay_ms=float(np.round(rng.exponential(2.0), 3)),
                ok=i % 17 != 0,
                error=None if i % 17 else "timeout",
            )
        )
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    for g in [*report.summary["groups"], report.summary["overall"]]:
        mine = [r for r in recs if g["key"] == "all" or r["stage"] == g["key"]["stage"]]
        ok = [r for r in mine if r["ok"]]
        for name, values in (
            ("ttft_ms", [r["ttft_ms"] for r in ok]),
            ("e2e_ms", [r["e2e_ms"] for r in ok]),
            ("tpot_ms", [r["tpot_ms"] for r in ok]),
            ("dispatch_delay_ms", [r["dispatch_delay_ms"] for r in mine]),
            ("sched_e2e_ms", [r["dispatch_delay_ms"] + r["e2e_ms"] for r in ok]),
        ):
            v = np.array(values)
            for q in (50, 90, 95, 99):
                assert g[f"{name}_p{q}"] == float(np.percentile(v, q)), (name, q, g["key"])
            assert g[f"{name}_mean"] == float(v.mean())
            assert g[f"{name}_count"] == v.size
            assert g[f"{name}_max"] == float(v.max())


def test_stream_diagnostics_equal_the_per_record_function(tmp_path: Path) -> None:
    # The report computes stream statistics vectorised; `diagnostics.stream_stats` is the definition.
    from dataclasses import asdict

    from harness.diagnostics import stream_stats

    rng = np.random.default_rng(3)
    recs = []
    for i in range(400):
        # Every third request's events come in bursts (several in one read: equal offsets).
        high = 1_020 if i % 3 == 0 else 90_000
        offsets = np.sort(rng.integers(1_000, high, int(rng.integers(0, 9)))).tolist()
        rec = record(t_s=0.01 * i, connection="new" if i % 5 == 0 else "reuse", seq=i % 3)
        rec |= {
            "event_offsets_us": offsets,  # sorted draws repeat now and then: bursts
            "content_events": len(offsets),
            "content_reads": int(rng.integers(0, 4)),
            "ttfb_ms": None if i % 7 == 0 else rec["ttft_ms"] - float(rng.integers(0, 50)),
            "tpot_ms": None if i % 9 == 0 else float(np.round(rng.uniform(1, 20), 3)),
            "ttft_ms": float(np.round(rng.uniform(50, 500), 3)),
        }
        recs.append(rec)
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    diags = report.summary["diagnostics"]
    assert [d["key"]["connection"] for d in diags] == ["new", "reuse"]
    for d in diags:
        mine = [r for r in recs if r["connection"] == d["key"]["connection"]]
        assert d["stats"] == asdict(stream_stats(mine))
        assert 0 < d["stats"]["burst_share"] < 1


def test_records_lacking_newer_optional_keys_are_read(tmp_path: Path) -> None:
    # An older run: none of the keys beyond the contract's required ones.
    from harness.records import REQUIRED_KEYS

    recs = [{k: v for k, v in record(t_s=0.1 * i, tokens=5).items() if k in REQUIRED_KEYS} for i in range(10)]
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    g = report.summary["overall"]
    assert g["requests"] == 10 and g["ttft_ms_p50"] == 100.0
    assert g["events_per_read_count"] == 0  # no content_reads: no ratio, no made-up value
    assert g["itl_ms_count"] == 40
    assert g["token_mismatch"] == 0  # the events counted stand in for the missing content_events
    by_conn = build_report(write_run(tmp_path / "c", recs), by=["connection"], trim_s=0)
    assert [x["key"] for x in by_conn.summary["groups"]] == [{"connection": None}]


def test_report_over_a_fleets_spools_and_another_run(tmp_path: Path) -> None:
    # A fleet run folder without records.jsonl: 100 worker spools, one cut by a crash.
    fleet = tmp_path / "fleet"
    (fleet / "spool").mkdir(parents=True)
    expected = 0
    for w in range(100):
        recs = [record(t_s=0.5 * i + 0.001 * w, worker=f"box{w // 10}:{w}", seq=i) for i in range(w % 7 + 1)]
        expected += len(recs)
        lines = b"".join(orjson.dumps(r) + b"\n" for r in recs)
        (fleet / "spool" / f"w{w:03d}.records.jsonl").write_bytes(
            lines + (b'{"run_id": "ru' if w == 42 else b"")
        )
    (fleet / "manifest.json").write_bytes(orjson.dumps({"run_id": "fleet"}))
    other = write_run(
        tmp_path / "other", [record(t_s=0.1 * i, run_id="other") for i in range(9)], run_id="other"
    )
    report = build_report([fleet, other], tmp_path / "out", trim_s=0, by=["run"])
    assert report.summary["counts"]["records"] == expected + 9
    assert [g["requests"] for g in report.summary["groups"]] == [expected, 9]
    assert report.summary["counts"]["broken_lines"] == 1
    assert [w for w in report.warnings if "broken" in w] == [
        f"{fleet / 'spool' / 'w042.records.jsonl'}: skipped 1 broken line(s) (not JSON: cut mid-write?)"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"sent_unix_ns": "soon"}', "missing required key"),
        (b"[1, 2, 3]", "expected a JSON object, got list"),
        (b"42", "expected a JSON object, got int"),
    ],
)
def test_json_lines_that_are_not_records(tmp_path: Path, line: bytes, message: str) -> None:
    recs = [record(t_s=0.1 * i) for i in range(4)]
    run = write_run(tmp_path / "r", recs, tail=b"\n" + line + b"\n")  # a blank line before it counts too
    with pytest.raises(InputError, match=rf"records\.jsonl:6: not a record: {message}"):
        build([run], run)


def test_a_wrong_type_in_a_required_field_is_not_a_record(tmp_path: Path) -> None:
    recs = [record(t_s=0.1 * i) for i in range(4)]
    recs[2] = recs[2] | {"sent_unix_ns": "soon"}
    with pytest.raises(
        InputError, match=r"records\.jsonl:3: not a record: sent_unix_ns: expected bigint, got str"
    ):
        build([write_run(tmp_path / "r", recs)], tmp_path / "r")


def test_column_types_come_from_the_record_dataclass() -> None:
    from dataclasses import fields as dc_fields

    from harness.records import Record
    from harness.report.engine import COLUMN_TYPES, NOT_NULL, duckdb_type

    assert list(COLUMN_TYPES) == [f.name for f in dc_fields(Record)]
    assert COLUMN_TYPES["ttft_ms"] == ("DOUBLE", True)
    assert COLUMN_TYPES["sent_unix_ns"] == ("BIGINT", False)
    assert COLUMN_TYPES["event_offsets_us"] == ("INTEGER[]", False)  # µs: int32 holds 35 minutes
    assert COLUMN_TYPES["extra"] == ("JSON", False)
    assert "sent_unix_ns" in NOT_NULL and "ttft_ms" not in NOT_NULL
    assert duckdb_type(int | None) == ("BIGINT", True)
    assert duckdb_type(list[str]) == ("VARCHAR[]", False)
    with pytest.raises(TypeError):
        duckdb_type(complex)


def test_a_small_memory_limit_gives_the_same_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    recs = [
        record(
            t_s=0.002 * i, ttft_ms=float(np.round(rng.uniform(50, 150), 3)), tokens=40, prompt_id=f"p{i % 50}"
        )
        for i in range(6000)
    ]
    run = write_run(tmp_path / "r", recs)
    normal = build_report(run, tmp_path / "a", by=["prompt_id"])
    monkeypatch.setenv("HARNESS_REPORT_MEMORY", "64MB")
    small = build_report(run, tmp_path / "b", by=["prompt_id"])
    for s in (normal.summary, small.summary):
        s.pop("generated_utc")
    assert small.summary == normal.summary
    monkeypatch.setenv("HARNESS_REPORT_MEMORY", "lots")
    with pytest.raises(InputError, match="HARNESS_REPORT_MEMORY"):
        build([run], tmp_path / "c")
    # Below what the JSON reader needs: one line naming the setting, not a DuckDB traceback.
    done = harness("report", str(run), "--out", str(tmp_path / "d"), env={"HARNESS_REPORT_MEMORY": "4MB"})
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert "raise it (e.g. HARNESS_REPORT_MEMORY=2GB)" in done.stderr


def test_a_stage_of_warm_up_only_leaves_the_others_untrimmed(tmp_path: Path) -> None:
    # `harness bench`: a "warmup" stage with no live record beside the measured one, trim 0.
    recs = [record(t_s=0.1 * i, stage="warmup", warmup=True) for i in range(4)]
    # Sends a few ns off a multiple of 256 ns: what a float cannot hold at 1.8e18.
    recs += [record(t_s=1 + 0.0173 * i + 200e-9, stage="c1") for i in range(8)]
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    assert report.summary["counts"]["trimmed"] == 0
    assert report.summary["overall"]["requests"] == 8


def test_itl_when_a_batch_holds_no_gap(tmp_path: Path) -> None:
    # Successful one-token answers only (no gap) beside failed ones with events: nothing to pool.
    recs = [record(t_s=0.1 * i, tokens=1) for i in range(5)]
    recs += [record(t_s=1 + 0.1 * i, ok=False, error="stall", tokens=6) for i in range(3)]
    report = build_report(write_run(tmp_path / "r", recs), trim_s=0)
    assert report.summary["overall"]["itl_ms_count"] == 0
    assert report.summary["overall"]["itl_ms_p50"] is None


# --- the columnar copy ------------------------------------------------------------------------------


def test_the_columnar_copy_is_written_once_read_after_and_rewritten_when_records_change(
    tmp_path: Path,
) -> None:
    import os

    recs = [record(t_s=0.1 * i, ttft_ms=100.0 + i) for i in range(10)]
    cut = orjson.dumps(record(t_s=2))[:57]
    run = write_run(tmp_path / "r", recs, tail=cut)
    first = build_report(run, tmp_path / "a", trim_s=0)
    copy = run / "records.duckdb"
    assert copy.is_file()
    stamp = copy.stat().st_mtime_ns
    second = build_report(run, tmp_path / "b", trim_s=0)
    assert copy.stat().st_mtime_ns == stamp  # attached, not written again
    # The copy keeps what the JSONL read found: the broken line is still counted and named.
    assert second.summary["counts"] == first.summary["counts"]
    assert second.summary["counts"]["broken_lines"] == 1
    assert second.summary["overall"]["ttft_ms_p50"] == first.summary["overall"]["ttft_ms_p50"]
    # Records appended (the cut line completed, one more record): the copy is stale, written again.
    with open(run / "records.jsonl", "ab") as fh:
        fh.write(b"\n" + orjson.dumps(record(t_s=3, ttft_ms=500.0)) + b"\n")
    third = build_report(run, tmp_path / "c", trim_s=0)
    assert copy.stat().st_mtime_ns != stamp
    assert third.summary["counts"]["records"] == 11
    # A copy that is not a DuckDB database (a half-written file, another version): written again.
    copy.write_bytes(b"not a database")
    fourth = build_report(run, tmp_path / "d", trim_s=0)
    assert fourth.summary["counts"]["records"] == 11
    assert copy.stat().st_size > 100
    # A read-only run folder: a private copy, nothing left in the folder.
    copy.unlink()
    os.chmod(run, 0o555)
    try:
        if not os.access(run, os.W_OK):  # root ignores the mode: nothing to check then
            fifth = build_report(run, tmp_path / "e", trim_s=0)
            assert fifth.summary["counts"]["records"] == 11
            assert not copy.exists()
    finally:
        os.chmod(run, 0o755)
