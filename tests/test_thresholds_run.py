"""Thresholds and load from the command line, for real: `harness run` against the simulated host
running as its own process, exit codes, the checks in summary.json / report.md / the console, and
the load counted by the host itself (`/sim/stats`).

Expectations derive from the sim's configured timing: with `--ttft-ms 50` no first token can come
sooner than 50 ms after the send, so `ttft_p50_ms<40` must fail; `ttft_p50_ms<200` leaves 150 ms for
a loaded machine and must hold.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from harness_helpers import harness, last_line, records, sim_host, sim_stats

from harness.servers.ready import ChildHost

pytestmark = pytest.mark.slow

TTFT_MS = 50


@pytest.fixture(scope="module")
def sim() -> Iterator[ChildHost]:
    with sim_host("--ttft-ms", str(TTFT_MS), "--itl-ms", "2") as host:
        yield host


def run(sim: ChildHost, out: Path, *args: str) -> tuple[int, str, str, Path]:
    proc = harness(
        "run", *args, "--host", sim.base_url, "--max-tokens", "8", "--out", str(out), "--run-id", "r"
    )
    return proc.returncode, proc.stdout, proc.stderr, out / "r"


def summary(run_dir: Path) -> dict[str, Any]:
    s: dict[str, Any] = orjson.loads((run_dir / "summary.json").read_bytes())
    return s


def test_threshold_that_holds_exits_0_with_its_result_everywhere(sim: ChildHost, tmp_path: Path) -> None:
    code, out, err, run_dir = run(
        sim, tmp_path, "--users", "2", "--duration", "2s", "--threshold", "ttft_p50_ms<200"
    )
    assert code == 0, err
    assert Path(last_line(out)) == run_dir
    s = summary(run_dir)
    (group,) = s["groups"]
    (result,) = s["thresholds"]
    # The value judged is the summary's own figure for the group, and the group is its key.
    assert result["value"] == group["ttft_ms_p50"] and result["group"] == group["key"]
    assert TTFT_MS <= result["value"] < 200
    assert (result["metric"], result["op"], result["limit"], result["passed"]) == (
        "ttft_p50_ms",
        "<",
        200,
        True,
    )
    assert f"pass ttft_p50_ms < 200: {result['value']:.6g}" in out
    md = (run_dir / "report.md").read_text()
    assert "## Thresholds" in md and "1 of 1 checks held." in md
    assert f"| ttft_p50_ms | {result['value']:.6g} | < | 200 | pass |" in md
    assert "threshold failed" not in err


def test_failed_threshold_exits_1_naming_each_failed_check_on_one_line(
    sim: ChildHost, tmp_path: Path
) -> None:
    """One check from the scenario file fails, one from the command line holds, one fails."""
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump({"name": "t", "thresholds": [f"ttft_p50_ms<{TTFT_MS - 10}"]}))
    code, _, err, run_dir = run(
        sim,
        tmp_path,
        str(scenario),
        "--users",
        "2",
        "--duration",
        "2s",
        # Streams running at the end finish (not `stopped`): every request succeeds, error rate 0.
        "--stop-timeout",
        "5s",
        "--threshold",
        "ttft_p50_ms<200",
        "--threshold",
        "error_rate>0.5",
    )
    assert code == 1, err
    s = summary(run_dir)
    (group,) = s["groups"]
    results = {(r["metric"], r["limit"]): r for r in s["thresholds"]}
    assert [r["passed"] for r in results.values()] == [False, True, False]
    assert results[("ttft_p50_ms", 40)]["value"] == group["ttft_ms_p50"] >= TTFT_MS
    assert results[("error_rate", 0.5)]["value"] == group["error_rate"] == 0
    failed = [line for line in err.splitlines() if "threshold failed" in line]
    assert len(failed) == 2, err
    assert failed[0].startswith(
        f"harness: threshold failed: ttft_p50_ms < 40: {group['ttft_ms_p50']:.6g} (host "
    )
    assert failed[1].startswith("harness: threshold failed: error_rate > 0.5: 0 (host ")
    assert all(f"model {group['key']['model']}" in line for line in failed)
    # The run itself is whole: records kept, the manifest complete; only the check failed.
    assert orjson.loads((run_dir / "manifest.json").read_bytes())["state"] == "complete"
    assert (
        "2 of 3" not in (run_dir / "report.md").read_text()
        and "1 of 3 checks held." in (run_dir / "report.md").read_text()
    )


@pytest.mark.parametrize(
    ("scenario", "args", "expected"),
    [
        (None, ["--threshold", "ttft_p95<500"], "--threshold 'ttft_p95<500': unknown metric 'ttft_p95'"),
        (
            None,
            ["--threshold", "ttft_p95_ms=500"],
            "--threshold 'ttft_p95_ms=500': expected METRIC OP NUMBER",
        ),
        (None, ["--threshold", "error_rate<x"], "--threshold 'error_rate<x': limit 'x' is not a number"),
        (
            {"thresholds": ["ttft_p95_ms=5"]},
            [],
            "s.yaml: thresholds: [0] 'ttft_p95_ms=5': expected METRIC OP",
        ),
        ({"thresholds": ["e2e_p99<5"]}, [], "s.yaml: thresholds[0] 'e2e_p99<5': unknown metric 'e2e_p99'"),
        (None, ["--concurrency", "1,x"], "--concurrency '1,x': expected a comma-separated list"),
        (None, ["--concurrency", "0"], "--concurrency '0': expected a comma-separated list"),
        (None, ["--rate", "0"], "--rate 0: expected requests per second above 0"),
        (None, ["--rate", "2", "--concurrency", "1,2"], "--rate and --concurrency: choose one"),
        (None, ["--arrival", "burst"], "--arrival: invalid choice: 'burst'"),
    ],
)
def test_bad_thresholds_and_load_flags_exit_2_with_one_line_before_anything_starts(
    tmp_path: Path,
    scenario: dict | None,
    args: list[str],
    expected: str,
) -> None:
    head = []
    if scenario is not None:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(scenario))
        head = [str(path)]
    out = tmp_path / "out"
    # A host that is never reached: input is checked before hosts are started or probed.
    proc = harness("run", *head, "--host", "http://127.0.0.1:9/v1", *args, "--out", str(out))
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert expected in err, err
    assert not out.exists()


def test_rate_with_constant_arrivals_sends_that_rate(sim: ChildHost, tmp_path: Path) -> None:
    """10 req/s for 4 s, constant spacing: the host receives 40 load requests (one every 100 ms)."""
    before = sim_stats(sim.base_url)["chat_requests"]
    code, _, err, run_dir = run(
        sim, tmp_path, "--rate", "10", "--arrival", "constant", "--duration", "4s", "--stop-timeout", "5s"
    )
    received = sim_stats(sim.base_url)["chat_requests"] - before
    assert code == 0, err
    recs = records(run_dir)
    load = [r for r in recs if not r["warmup"]]
    assert received == len(recs)  # every request the host saw has its record, warm-up included
    assert 38 <= len(load) <= 42, len(load)
    sends = sorted(r["sched_unix_ns"] for r in load)
    gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(sends)]
    # Constant arrivals: every gap 100 ms (Poisson's median would be ~69 ms).
    assert 99 <= statistics.median(gaps) <= 101, statistics.median(gaps)
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    (stage,) = manifest["stages"]
    assert (stage["rate"], stage["arrival"], stage["duration_s"]) == (10, "constant", 4)


def test_concurrency_sweep_gives_a_console_row_per_step(tmp_path: Path) -> None:
    # A host of its own: its highest count of streams at once is this run's.
    with sim_host("--ttft-ms", str(TTFT_MS), "--itl-ms", "2") as sim:
        code, out, err, run_dir = run(sim, tmp_path, "--concurrency", "1,2", "--duration", "2s")
        stats = sim_stats(sim.base_url)
    assert code == 0, err
    assert stats["max_in_flight"] == 2
    s = summary(run_dir)
    assert [g["key"]["stage"] for g in s["groups"]] == ["c=1", "c=2"]
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert [(st["name"], st["users"], st["duration_s"]) for st in manifest["stages"]] == [
        ("c=1", 1, 2),
        ("c=2", 2, 2),
    ]
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["host", "model", "stage"]
    for g in s["groups"]:
        (row,) = [line for line in lines if f" {g['key']['stage']} " in line]
        assert row.split()[2:4] == [g["key"]["stage"], str(g["requests"])]
    assert [line.split()[0] for line in lines if line.startswith("all ")] == ["all"]


def test_report_and_compare_hold_a_run_to_the_same_expressions(sim: ChildHost, tmp_path: Path) -> None:
    """A CI job with a run folder: absolute limits (`report --threshold`), or a baseline and limits
    together (`compare --threshold`); both judge the summary's own figures."""
    code, _, err, run_dir = run(sim, tmp_path, "--users", "1", "--duration", "2s")
    assert code == 0, err
    p50 = summary(run_dir)["groups"][0]["ttft_ms_p50"]

    held = harness("report", str(run_dir), "--threshold", "ttft_p50_ms<200")
    assert held.returncode == 0, held.stderr
    assert summary(run_dir)["thresholds"][0]["passed"] is True
    failed = harness("report", str(run_dir), "--threshold", f"ttft_p50_ms<{TTFT_MS - 10}")
    assert failed.returncode == 1, failed.stderr
    assert f"harness: threshold failed: ttft_p50_ms < 40: {p50:.6g} (host " in failed.stderr
    assert summary(run_dir)["thresholds"][0]["value"] == p50

    out = tmp_path / "cmp"
    base = [
        "compare",
        str(run_dir),
        str(run_dir),
        "--metrics",
        "ttft_p50_ms,error_rate",
        "--resamples",
        "100",
    ]
    same = harness(*base, "--threshold", "ttft_p50_ms<200", "--out", str(out))
    assert same.returncode == 0, same.stderr
    assert "ttft_ms_p50" in same.stdout and "pass ttft_p50_ms < 200" in same.stdout
    assert orjson.loads((out / "compare.json").read_bytes())["thresholds"][0]["value"] == p50
    worse = harness(*base, "--threshold", f"ttft_p50_ms<{TTFT_MS - 10}")
    assert worse.returncode == 1, worse.stderr
    lines = worse.stderr.strip().splitlines()
    assert (
        lines[0].startswith(f"harness: threshold failed: ttft_p50_ms < 40: {p50:.6g} (host ")
        and len(lines) == 2
    )
    bad = harness(*base, "--threshold", "ttft_p50<200")
    assert bad.returncode == 2 and "--threshold 'ttft_p50<200': unknown metric" in bad.stderr
