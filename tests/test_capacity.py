"""`harness capacity` for real: searches against the simulated host running as its own process with
`--max-concurrency 3` (at most 3 replies generate at once, the rest wait FIFO, so queueing shows up
in TTFT), the capacity run folder, its report in headless Chromium, and bad input. The search logic
itself is unit-tested on a known boundary.

Expectations derive from the sim's configured timing: unqueued TTFT is 60 ms, so `ttft_p95_ms<110`
holds with up to 3 users and fails with 4 (the 4th user's request waits for a slot: a third of a
150 ms request on average); open loop with constant arrivals, the host serves at most 3 requests per
request duration, the duration measured here from the search's own first (unqueued) step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness_helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, harness, last_line, sim_host, sim_stats

from harness.capacity import FAIL, PASS, UNCLEAR, Search, verdict_of
from harness.thresholds import parse

N = 3
TTFT_MS, ITL_MS, TOKENS = 60, 10, 10
SLO = "ttft_p95_ms<110"


def scenario(tmp: Path, url: str) -> Path:
    path = tmp / "cap.yaml"
    path.write_text(
        f"name: cap\nhosts: [{{url: {url}}}]\nrequest: {{max_tokens: {TOKENS}}}\n"
        "load: {max_in_flight: 16, arrival: constant}\n"
    )
    return path


def capacity(sc: Path, out: Path, *args: str) -> tuple[Any, float]:
    t = time.monotonic()
    proc = harness(
        "capacity", str(sc), "--slo", SLO, "--step-duration", "3s", "--out", str(out), "--run-id", "c", *args
    )
    return proc, time.monotonic() - t


def records(cap_dir: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted((cap_dir / "steps").glob("*/records.jsonl")):
        out += [orjson.loads(line) for line in f.read_bytes().splitlines() if line.strip()]
    return out


def doc(cap_dir: Path) -> dict[str, Any]:
    d: dict[str, Any] = orjson.loads((cap_dir / "capacity.json").read_bytes())
    return d


@pytest.fixture(scope="module")
def users_search(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Any, Path, dict[str, Any], float]]:
    tmp = tmp_path_factory.mktemp("cap-users")
    with sim_host("--max-concurrency", str(N), "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS)) as host:
        proc, took = capacity(scenario(tmp, host.base_url), tmp / "out")
        stats = sim_stats(host.base_url)
    yield proc, tmp / "out" / "c", stats, took


# --- the search on a known boundary (logic only) ----------------------------------------------------


@pytest.mark.parametrize("boundary", [1, 2, 3, 7, 8, 24, 100])
def test_users_search_finds_the_exact_boundary(boundary: int) -> None:
    s = Search("users", 1)
    while (level := s.next()) is not None:
        s.tell(level, level <= boundary)
    assert (s.lo, s.hi) == (boundary, boundary + 1)
    assert len(s.tried) <= 2 * boundary.bit_length() + 1


def test_users_search_with_nothing_passing_says_so() -> None:
    s = Search("users", 4)
    while (level := s.next()) is not None:
        s.tell(level, False)
    assert (s.lo, s.hi) == (0, 1)


@pytest.mark.parametrize(("start", "boundary"), [(1.0, 31.3), (8.0, 5.2), (50.0, 0.9)])
def test_rate_search_brackets_the_boundary_to_the_resolution(start: float, boundary: float) -> None:
    s = Search("rate", start, resolution=0.05)
    while (level := s.next()) is not None:
        s.tell(level, level <= boundary)
    assert s.hi is not None and s.lo <= boundary < s.hi
    assert s.hi / s.lo - 1 <= 0.05


def test_verdict_needs_the_whole_interval_on_one_side() -> None:
    lt, gt = parse("ttft_p95_ms<100"), parse("output_tokens_per_s>50")
    assert verdict_of(lt, 90, 80, 99) == PASS
    assert verdict_of(lt, 110, 101, 120) == FAIL
    assert verdict_of(lt, 95, 90, 105) == UNCLEAR
    assert verdict_of(gt, 60, 51, 70) == PASS
    assert verdict_of(gt, 40, 30, 49) == FAIL
    assert verdict_of(gt, 55, 45, 65) == UNCLEAR
    assert verdict_of(lt, 90, None, None) == PASS  # no interval: the value decides
    assert verdict_of(lt, None, None, None) == FAIL


# --- against the simulated host ---------------------------------------------------------------------


@pytest.mark.slow
def test_users_search_returns_exactly_the_hosts_concurrency(
    users_search: tuple[Any, Path, dict[str, Any], float],
) -> None:
    proc, cap_dir, stats, took = users_search
    assert proc.returncode == 0, proc.stderr
    print(f"users search took {took:.1f} s")
    assert Path(last_line(proc.stdout)) == cap_dir
    answer = [line for line in proc.stdout.splitlines() if " users (" in line]
    assert len(answer) == 1 and f": {N} users ({N}–{N + 1})" in answer[0], proc.stdout
    (target,) = doc(cap_dir)["targets"]
    assert target["answer"]["highest_passing"] == N and target["answer"]["lowest_failing"] == N + 1
    verdicts = {s["level"]: s["verdict"] for s in target["steps"]}
    assert verdicts[N] == PASS and verdicts[N + 1] == FAIL
    for step in target["steps"]:
        (slo,) = step["judgement"]["slos"]
        assert slo["ci_low"] <= slo["value"] <= slo["ci_high"]
    # One console row per step.
    assert sum(line.startswith("step ") for line in proc.stdout.splitlines()) == len(target["steps"])
    # The host's own counts: it never generated more than N at once, queued only when asked for more,
    # and every request it received is a record in a step's run folder.
    assert stats["max_generating"] == N and stats["queued_total"] > 0
    assert stats["chat_requests"] == len(records(cap_dir))


@pytest.mark.slow
def test_rate_search_returns_the_hosts_throughput(tmp_path: Path) -> None:
    with sim_host("--max-concurrency", str(N), "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS)) as host:
        proc, took = capacity(
            scenario(tmp_path, host.base_url),
            tmp_path / "out",
            "--mode",
            "rate",
            "--start",
            "12",
            "--max-extensions",
            "1",
        )
        stats = sim_stats(host.base_url)
    assert proc.returncode == 0, proc.stderr
    print(f"rate search took {took:.1f} s")
    cap_dir = tmp_path / "out" / "c"
    (target,) = doc(cap_dir)["targets"]
    lo, hi = target["answer"]["highest_passing"], target["answer"]["lowest_failing"]
    assert hi / lo - 1 <= 0.05
    # One request's duration, measured: the first step (12/s) is far from queueing.
    first = [r["e2e_ms"] for r in records(cap_dir) if r["ok"] and not r["warmup"] and r["stage"] == "rate=12"]
    duration_s = statistics.median(first) / 1000
    expected = N / duration_s
    assert abs(lo / expected - 1) <= 0.10, (lo, expected, proc.stdout)
    assert f"{lo:.3g} req/s" in proc.stdout
    assert stats["max_generating"] == N and stats["chat_requests"] == len(records(cap_dir))


@pytest.mark.slow
@pytest.mark.browser
def test_capacity_report_draws_the_knee_and_the_slo_line(
    users_search: tuple[Any, Path, dict[str, Any], float],
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright for Python")
    _, cap_dir, _, _ = users_search
    rep = harness("report", str(cap_dir))
    assert rep.returncode == 0, rep.stderr
    assert f"{N} users ({N}–{N + 1})" in rep.stdout
    page_path = cap_dir / "capacity.html"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith("file:") else None)
            page.goto(page_path.as_uri(), wait_until="load")
            sizes = page.eval_on_selector_all(
                "svg.chart",
                "els => els.map(e => [e.getBoundingClientRect().width, e.getBoundingClientRect().height])",
            )
            slo_lines = page.eval_on_selector_all(
                "svg.chart .slo-line",
                "els => els.map(e => { const b = e.getBoundingClientRect(); return [b.width, e.getAttribute('y1')]; })",
            )
            knees = page.eval_on_selector_all("svg.chart circle.knee", "els => els.length")
            bars = page.eval_on_selector_all(
                "svg.chart rect.goodput", "els => els.map(e => e.getBoundingClientRect().height)"
            )
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "capacity-report.png"), full_page=True)
        finally:
            browser.close()
    assert outside == []
    # One knee plot (one SLO) and one goodput chart, each drawn with a size.
    assert len(sizes) == 2 and all(w > 200 and h > 100 for w, h in sizes), sizes
    (slo_line,) = slo_lines
    assert slo_line[0] > 200  # spans the plot
    assert knees == 1
    (target,) = doc(cap_dir)["targets"]
    # Bars in level order; every passing step served requests within the SLO, so its bar shows.
    by_level = sorted(target["steps"], key=lambda s: s["level"])
    assert len(bars) == len(by_level)
    passing = [h for s, h in zip(by_level, bars, strict=True) if s["verdict"] == PASS]
    assert len(passing) >= 2 and all(h > 0 for h in passing), (bars, by_level)


@pytest.mark.slow
def test_time_budget_ends_the_search_with_the_bracket_so_far(tmp_path: Path) -> None:
    """A budget with room for one step: the search stops after it and says so; the answer is what
    that step showed (1 user holds, the boundary not reached)."""
    with sim_host("--max-concurrency", str(N), "--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS)) as host:
        proc, _ = capacity(scenario(tmp_path, host.base_url), tmp_path / "out", "--budget", "5s")
    assert proc.returncode == 0, proc.stderr
    (target,) = doc(tmp_path / "out" / "c")["targets"]
    assert [s["level"] for s in target["steps"]] == [1] and target["budget_ended"] is True
    assert "at least 1 users (no failing level reached)" in proc.stdout and "time budget ended" in proc.stdout


@pytest.mark.slow
def test_pairs_the_budget_never_reached_are_not_tried_and_embedded_hosts_keep_their_identity(
    tmp_path: Path,
) -> None:
    """Two embedded sims searched in turn under one budget with room for the first pair only: the
    second is `not tried`, not failing (exit 0); every step's run folder names the embedded host
    it ran against (kind and pid, sampled into host_metrics.jsonl)."""
    sc = tmp_path / "two.yaml"
    opts = f"{{max_concurrency: {N}, ttft_ms: {TTFT_MS}, itl_ms: {ITL_MS}}}"
    sc.write_text(
        f"name: two\nhosts:\n  - {{embedded: sim, name: a, options: {opts}}}\n"
        f"  - {{embedded: sim, name: b, options: {opts}}}\nrequest: {{max_tokens: {TOKENS}}}\n"
    )
    proc, _ = capacity(sc, tmp_path / "out", "--budget", "9s", "--input-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    cap_dir = tmp_path / "out" / "c"
    # The workload flag reached every step: each request asked for 24 prompt tokens.
    recs = [r for r in records(cap_dir) if not r["warmup"]]
    assert recs and {r["requested_input_tokens"] for r in recs} == {24}
    first, second = doc(cap_dir)["targets"]
    assert first["steps"] and not first.get("not_tried")
    assert second["steps"] == [] and second["not_tried"] is True
    assert "not tried (time budget ended)" in proc.stdout
    assert "no load level met the SLOs" not in proc.stdout
    step_dirs = sorted((cap_dir / "steps").iterdir())
    assert step_dirs
    for d in step_dirs:
        (h,) = orjson.loads((d / "manifest.json").read_bytes())["hosts"]
        assert h["embedded"] == "sim" and h["pid"] > 0, h
        assert (d / "host_metrics.jsonl").stat().st_size > 0


def test_bad_slo_syntax_exits_2_with_one_line(tmp_path: Path) -> None:
    for bad, says in (
        ("ttft_p95_ms=5", "expected METRIC OP NUMBER"),
        ("ttft_p95_ms<fast", "is not a number"),
        ("ttft_p96_ms<5", "unknown metric"),
    ):
        proc = harness("capacity", "--slo", bad, "--host", "http://127.0.0.1:9/v1", "--out", str(tmp_path))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("harness: --slo") and says in lines[0], proc.stderr
        assert not list(tmp_path.iterdir())  # nothing started, no run folder
    proc = harness(
        "capacity",
        "--slo",
        SLO,
        "--step-duration",
        "2s",
        "--trim",
        "1s",
        "--host",
        "http://127.0.0.1:9/v1",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--trim" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--max-level", "-3"], "--max-level -3: expected a level above 0"),
        (["--max-level", "0"], "--max-level 0: expected a level above 0"),
        (["--max-level", "2.5"], "--max-level 2.5: users mode needs a whole number"),
        (["--start", "8", "--max-level", "4"], "--start 8: above --max-level 4"),
        (["--mode", "rate", "--start", "5000"], "--start 5000: above --max-level 4096"),
        (["--trim", "-1s"], "--trim"),
        (["--max-requests", "10"], "--max-requests 10: not with harness capacity"),
        (["--max-requests", "10", "--workers", "4"], "--max-requests 10: not with harness capacity"),
        (["--input-tokens", "abc"], "--input-tokens"),
        (["--dataset", "/nonexistent.jsonl"], "--dataset /nonexistent.jsonl: file not found"),
    ],
)
def test_bad_levels_and_workload_flags_exit_2_before_anything_starts(
    tmp_path: Path, flags: list[str], says: str
) -> None:
    proc = harness(
        "capacity", "--slo", SLO, "--host", "http://127.0.0.1:9/v1", "--out", str(tmp_path), *flags
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())  # nothing started, no run folder


def test_a_scenario_request_limit_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """`workload.max_requests` would stop every step early; with more workers than the first level
    it would also fail mid-search: refused at once, whatever --workers says."""
    sc = tmp_path / "limit.yaml"
    sc.write_text("name: limit\nhosts: [{url: 'http://127.0.0.1:9/v1'}]\nworkload: {max_requests: 50}\n")
    out = tmp_path / "out"
    proc = harness("capacity", str(sc), "--slo", SLO, "--workers", "4", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert f"{sc}: workload.max_requests 50: not with harness capacity" in line
    assert not out.exists()


def test_trim_0_is_accepted_and_means_no_trimming() -> None:
    from harness.cli import build_parser
    from harness.commands.capacity import _options

    args = build_parser().parse_args(["capacity", "--slo", SLO, "--trim", "0"])
    assert _options(args)["trim_s"] == 0.0


def test_answer_lines_rate_mode_not_tried_and_report_share_one_text() -> None:
    from harness.report.writers.capacity import answer_lines

    step = {
        "level": 12.5,
        "verdict": PASS,
        "segments": [{}],
        "judgement": {"output_tokens_per_s": 1234.0, "slos": [{"metric": "ttft_p95_ms", "value": 99.0}]},
    }
    doc_ = {
        "mode": "rate",
        "targets": [
            {
                "host": "http://127.0.0.1:1/v1",
                "model": "m",
                "steps": [step],
                "answer": {"highest_passing": 12.5, "lowest_failing": 13.0},
            },
            {
                "host": "http://127.0.0.1:2/v1",
                "model": "m",
                "steps": [],
                "budget_ended": True,
                "not_tried": True,
                "answer": {"highest_passing": None, "lowest_failing": None},
            },
        ],
    }
    first, second = answer_lines(doc_)
    assert first.endswith(": 12.5 req/s (12.5–13), 1,234 output tok/s, ttft_p95_ms 99 at the limit"), first
    assert second.endswith(": not tried (time budget ended)"), second


def _hand_made_capacity_dir(path: Path, **drop: bool) -> Path:
    d = {
        "run_id": "c",
        "mode": "users",
        "slos": [SLO],
        "step_duration_s": 3,
        "trim_s": 0.6,
        "targets": [
            {
                "host": "http://127.0.0.1:1/v1",
                "model": "m",
                "steps": [],
                "answer": {"highest_passing": None, "lowest_failing": 1},
            }
        ],
    }
    for key in drop:
        del d[key]
    path.mkdir()
    (path / "capacity.json").write_bytes(orjson.dumps(d))
    return path


def test_report_on_a_capacity_folder_refuses_records_flags_and_checks_its_keys(tmp_path: Path) -> None:
    cap = _hand_made_capacity_dir(tmp_path / "cap")
    ok = harness("report", str(cap))
    assert ok.returncode == 0, ok.stderr
    assert (cap / "capacity.html").is_file() and "no load level met the SLOs" in ok.stdout
    other = tmp_path / "other"
    other.mkdir()
    for flags, says in (
        (["--format", "json"], "--format: not for a capacity run folder"),
        (["--by", "stage", "--trim-s", "1"], "--by, --trim-s: not for a capacity run folder"),
        (["--threshold", SLO], "--threshold: not for a capacity run folder"),
        ([str(other)], "a capacity run folder is reported alone"),
    ):
        proc = harness("report", str(cap), *flags)
        assert proc.returncode == 2, (flags, proc.stderr)
        (line,) = proc.stderr.strip().splitlines()
        assert says in line, line
    bad = _hand_made_capacity_dir(tmp_path / "bad", run_id=True)
    proc = harness("report", str(bad))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "capacity.json: no 'run_id'" in line, line
    assert not (bad / "capacity.html").exists()
