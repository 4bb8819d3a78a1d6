"""The web UI's LLM tab: its arithmetic on hand-made records, and a real browser against `harness run --web`."""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from harness_helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, REPO, last_line, records, sim_host

from harness.errors import InputError
from harness.webui_choices import format_max_tokens, models_by_host, parse_max_tokens
from harness.webui_figures import (
    ALL,
    LiveFigures,
    _SortedValues,
    percentile,
    records_figures,
    sparkline,
    table_rows,
)
from harness.webui_report import snapshot

T0 = 1_800_000_000.0


def rec(
    host: str,
    model: str,
    sent_s: float,
    e2e_ms: float | None,
    *,
    ttft: float | None = None,
    tpot: float | None = None,
    tokens: int | None = None,
    error: str | None = None,
    warmup: bool = False,
) -> dict[str, Any]:
    return {
        "host": host,
        "model": model,
        "sent_unix_ns": round(sent_s * 1e9),
        "e2e_ms": e2e_ms,
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "output_tokens": tokens,
        "ok": error is None,
        "error": error,
        "warmup": warmup,
    }


def np_pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


# --- the arithmetic ------------------------------------------------------------------------
def test_percentile_is_numpys_linear_interpolation() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 10, 101):
        v = sorted(rng.exponential(50, n).tolist())
        for q in (0, 50, 90, 95, 99, 100):
            assert percentile(v, q) == pytest.approx(np_pct(v, q), rel=1e-12)
    assert percentile([], 50) is None


def test_sorted_values_give_exact_order_statistics_at_any_size() -> None:
    rng = np.random.default_rng(3)
    sv = _SortedValues()
    values: list[float] = []
    for n in (1, 2, 5, 1000, 5000):  # past 2·BLOCK values the blocks split
        while len(values) < n:
            v = float(rng.choice([rng.exponential(40), 7.0]))  # ties too
            values.append(v)
            sv.add(v)
        assert sv.values() == sorted(values)
        for q in (0, 50, 95, 99, 100):
            assert sv.percentile(q) == pytest.approx(np_pct(values, q), rel=1e-12)
    assert _SortedValues().percentile(50) is None


def test_live_figures_since_start_window_and_bins() -> None:
    now = [T0]
    live = LiveFigures(window_s=20, bin_s=5, clock=lambda: now[0])
    live.labels = {"http://a/v1": "a"}
    recs: list[dict[str, Any]] = []
    rng = np.random.default_rng(7)
    # 60 s of host a / model m (one request every 0.5 s), a few failures, one warm-up to ignore.
    for i in range(120):
        sent = T0 + i * 0.5
        if i % 17 == 5:
            recs.append(rec("http://a/v1", "m", sent, 30.0, error="http_5xx"))
        elif i % 29 == 7:
            recs.append(rec("http://a/v1", "m", sent, None, error="connect"))
        else:
            ttft = float(rng.uniform(10, 200))
            recs.append(
                rec("http://a/v1", "m", sent, ttft + 300, ttft=ttft, tpot=float(rng.uniform(2, 9)), tokens=32)
            )
    # A second model, sparser, with a one-token answer (no TPOT).
    for i in range(10):
        recs.append(
            rec(
                "http://a/v1",
                "m2",
                T0 + 3 + i * 5,
                120.0,
                ttft=100.0 + i,
                tpot=None if i == 0 else 4.0,
                tokens=1 if i == 0 else 16,
            )
        )
    recs.append(rec("http://a/v1", "m", T0 + 1, 10.0, ttft=1.0, tokens=5, warmup=True))
    recs.sort(key=lambda r: r["sent_unix_ns"] + (r["e2e_ms"] or 0) * 1e6)
    for r in recs:
        live.observe(r)

    now[0] = T0 + 61.0
    snap = live.snapshot({("http://a/v1", "m"): 2, ALL: 3})
    groups = {(g["host"], g["model"]): g for g in snap["groups"]}
    assert set(groups) == {("http://a/v1", "m"), ("http://a/v1", "m2"), ALL}
    g = groups[("http://a/v1", "m")]
    assert g["label"] == "a" and g["inflight"] == 2 and groups[ALL]["inflight"] == 3
    assert groups[("http://a/v1", "m2")]["inflight"] == 0

    # since start: exactly the hand computation over the group's measured records
    mine = [r for r in recs if r["model"] == "m" and not r["warmup"]]
    ok = [r for r in mine if r["ok"]]
    total = g["total"]
    assert total["requests"] == len(mine) == 120 and total["ok"] == len(ok)
    assert total["errors"] == {
        "connect": sum(r["error"] == "connect" for r in mine),
        "http_5xx": sum(r["error"] == "http_5xx" for r in mine),
    }
    assert total["ttft_p50_ms"] == pytest.approx(np_pct([r["ttft_ms"] for r in ok], 50))
    assert total["ttft_p95_ms"] == pytest.approx(np_pct([r["ttft_ms"] for r in ok], 95))
    assert total["tpot_p50_ms"] == pytest.approx(np_pct([r["tpot_ms"] for r in ok], 50))
    first = min(r["sent_unix_ns"] for r in mine) / 1e9
    last = max(r["sent_unix_ns"] / 1e9 + (r["e2e_ms"] or 0) / 1000 for r in mine)
    assert total["tokens_per_s"] == pytest.approx(32 * len(ok) / (last - first))
    direct = records_figures(mine).as_dict()
    assert direct.pop("errors") == total["errors"]
    assert direct == pytest.approx({k: v for k, v in total.items() if k != "errors"})
    # TPOT of the one-token answer does not exist; its tokens count
    m2 = groups[("http://a/v1", "m2")]["total"]
    assert m2["tpot_p50_ms"] == 4.0 and m2["output_tokens"] == 1 + 9 * 16
    # the sum row is every measured record
    assert groups[ALL]["total"]["requests"] == 130

    # now: records that ended in [now - 20 s, now)
    lo, hi = now[0] - 20, now[0]
    win = [r for r in mine if lo <= r["sent_unix_ns"] / 1e9 + (r["e2e_ms"] or 0) / 1000 < hi]
    win_ok = [r for r in win if r["ok"]]
    w = g["now"]
    assert w["requests"] == len(win) and w["seconds"] == pytest.approx(20)
    assert w["ttft_p95_ms"] == pytest.approx(np_pct([r["ttft_ms"] for r in win_ok], 95))
    assert w["tokens_per_s"] == pytest.approx(32 * len(win_ok) / 20)

    # bins: 5 s by end time, only the complete ones (12 of them at 61 s)
    series = g["series"]
    assert series["t_s"] == [5.0 * (i + 1) for i in range(12)]
    for i in range(12):
        in_bin = [
            r for r in ok if T0 + 5 * i <= r["sent_unix_ns"] / 1e9 + r["e2e_ms"] / 1000 < T0 + 5 * (i + 1)
        ]
        assert series["tokens_per_s"][i] == pytest.approx(32 * len(in_bin) / 5)
        assert series["ttft_p95_ms"][i] == pytest.approx(np_pct([r["ttft_ms"] for r in in_bin], 95))


def test_window_on_a_master_ends_before_now_and_starts_at_the_start() -> None:
    now = [T0]
    live = LiveFigures(window_s=20, lag_s=3, bin_s=5, clock=lambda: now[0])
    for i in range(10):
        live.observe(rec("h", "m", T0 + i, 100.0, ttft=10.0 + i, tpot=2.0, tokens=10))
    now[0] = T0 + 9.5
    snap = live.snapshot(None)
    g = next(x for x in snap["groups"] if x["model"] == "m")
    assert g["inflight"] is None
    # window [start, now - 3 s): the 7 requests that ended by 6.1 s, over 6.5 s
    assert g["now"]["requests"] == 7 and g["now"]["seconds"] == pytest.approx(6.5)
    assert g["now"]["tokens_per_s"] == pytest.approx(70 / 6.5)
    assert g["series"]["t_s"] == [5.0]  # the bin 5-10 s is not complete until 13 s
    assert g["series"]["tokens_per_s"] == [pytest.approx(50 / 5)]
    # a worker's late batch lands in a bin already shown: the bin is computed again
    live.observe(rec("h", "m", T0 + 0.5, 100.0, ttft=500.0, tpot=2.0, tokens=10))
    g = next(x for x in live.snapshot(None)["groups"] if x["model"] == "m")
    assert g["series"]["tokens_per_s"] == [pytest.approx(60 / 5)]
    assert g["series"]["ttft_p95_ms"] == [pytest.approx(np_pct([10, 11, 12, 13, 14, 500], 95))]
    live.reset(reason="reset")
    (only,) = live.snapshot(None)["groups"]
    assert only["all"] and only["total"]["requests"] == 0 and only["series"]["t_s"] == []


def test_table_rows_two_per_group_with_text_charts() -> None:
    now = [T0]
    live = LiveFigures(window_s=20, bin_s=5, clock=lambda: now[0])
    live.labels = {"http://a/v1": "a", "http://b/v1": "b"}
    for i in range(60):
        live.observe(rec("http://a/v1", "m", T0 + i, 200.0, ttft=50.0 + i, tpot=3.0, tokens=10 + i))
    live.observe(rec("http://b/v1", "m", T0 + 1, 5.0, error="timeout"))
    now[0] = T0 + 62
    rows = table_rows(live.snapshot({ALL: 1}), clock_format=lambda t: "12:00:00")
    assert [(r["name"], r["span"]) for r in rows] == [
        ("m @ a", "last 20 s"),
        ("m @ a", "since start 12:00:00"),
        ("m @ b", "last 20 s"),
        ("m @ b", "since start 12:00:00"),
        ("∑ all hosts and models", "last 20 s"),
        ("∑ all hosts and models", "since start 12:00:00"),
    ]
    a_now, a_total, b_now, b_total, all_now, all_total = rows
    assert a_total["requests"] == 60 and a_total["ttftP50"] == pytest.approx(79.5)
    assert b_total["errors"] == "1: timeout 1" and b_now["errors"] == "0" and a_total["errors"] == "0"
    assert all_now["inflight"] == 1 and all_total["inflight"] is None
    # 12 complete bins; tokens/s rises with i, so the chart ends on its tallest block
    bars, top = a_now["tokensChart"].split(" max ")
    assert len(bars) == 12 and bars.endswith("█") and top.endswith(" tok/s")
    assert a_now["ttftChart"].endswith(" ms")
    # one host and one model: no sum rows
    live2 = LiveFigures(clock=lambda: now[0])
    live2.observe(rec("h", "m", T0, 10.0, ttft=5.0, tokens=2))
    assert len(table_rows(live2.snapshot(None), clock_format=str)) == 2


def test_sparkline_scales_from_zero_to_the_largest() -> None:
    assert sparkline([0, 50, 100, None]) == "▁▅█ "
    assert sparkline([0.0, 0.0]) == "▁▁"
    assert sparkline([]) == ""


def test_form_texts() -> None:
    assert parse_max_tokens("128") == 128
    assert (
        parse_max_tokens(" 64-192 ")
        == (64, 192)
        == parse_max_tokens("[64, 192]")
        == parse_max_tokens("64,192")
    )
    for bad in ("0", "x", "200-100", "1-2-3", ""):
        with pytest.raises(InputError, match="llm_max_tokens"):
            parse_max_tokens(bad)
    assert format_max_tokens(16) == "16" and format_max_tokens([8, 12]) == "8-12"
    hosts = [("http://a:1/v1", "a"), ("http://b:2/v1", "b")]
    fallback = {"http://a:1/v1": ("x",), "http://b:2/v1": ("y",)}
    assert models_by_host("p, q", hosts, fallback) == {
        "http://a:1/v1": ("p", "q"),
        "http://b:2/v1": ("p", "q"),
    }
    assert models_by_host("b=z; p", hosts, fallback) == {"http://a:1/v1": ("p",), "http://b:2/v1": ("z",)}
    assert models_by_host("http://a:1=w", hosts, fallback) == {
        "http://a:1/v1": ("w",),
        "http://b:2/v1": ("y",),
    }
    with pytest.raises(InputError, match="no host named 'c'"):
        models_by_host("c=z", hosts, fallback)


def test_report_snapshot_keeps_complete_lines_only(tmp_path: Path) -> None:
    run = tmp_path / "run1"
    run.mkdir()
    (run / "records.jsonl").write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": 3, "cut')
    (run / "plan.json").write_bytes(orjson.dumps({"run_id": "run1", "scenario": {"slo": {}}, "targets": []}))
    snap = snapshot(run, tmp_path / "snap")
    assert (snap / "records.jsonl").read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    assert orjson.loads((snap / "manifest.json").read_bytes())["run_id"] == "run1"


# --- a real browser ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[str], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"harness run exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"web UI at {url} did not answer within {timeout_s} s")


def _number(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


@pytest.mark.slow
@pytest.mark.browser
def test_llm_tab_in_a_real_browser_matches_the_records(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (make system-deps)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("needs playwright (pip install -e '.[test]')")
    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with sim_host("--ttft-ms", "20", "--itl-ms", "2") as sim:
        name = f"{sim.models[0]} @ {sim.base_url.split('//')[1].split('/')[0]}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", "--web", "--web-port", str(port), "--host", sim.base_url]
            + ["--max-tokens", "16", "--out", str(tmp_path), "--run-id", "web1"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            _wait_http(url, proc)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1700, "height": 900})
                page.goto(url)
                # The start form: users, spawn rate, and one of the scenario's choices.
                page.fill("input[name=userCount]", "3")
                page.fill("input[name=spawnRate]", "3")
                page.get_by_text("Custom parameters").click()
                assert page.input_value("input[name=llmMaxTokens]") == "16"  # the scenario's
                assert page.input_value("input[name=llmHosts]") == sim.base_url
                page.fill("input[name=llmMaxTokens]", "12")
                page.get_by_role("button", name="Start").click()
                page.wait_for_timeout(7000)
                page.get_by_role("tab", name="LLM").click()
                page.wait_for_timeout(500)
                page.wait_for_function(
                    "() => [...document.querySelectorAll('td')].some(td => td.textContent.startsWith('since start'))"
                )
                shown = page.evaluate(
                    """() => {
                      const table = [...document.querySelectorAll('table')].find(
                        t => [...t.querySelectorAll('th')].some(th => th.textContent === 'TTFT p95 ms'));
                      const heads = [...table.querySelectorAll('thead th')].map(th => th.textContent);
                      return [...table.querySelectorAll('tbody tr')].map(tr =>
                        Object.fromEntries([...tr.querySelectorAll('td')].map((td, i) => [heads[i], td.textContent])));
                    }"""
                )
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "webui-llm-tab.png"), full_page=True)
                # The live page with the SVG charts, linked from the "Download Data" tab.
                charts = browser.new_page(viewport={"width": 1300, "height": 900})
                charts.goto(url + "llm")
                charts.wait_for_function("() => document.querySelectorAll('#tps path').length > 0")
                assert name in charts.inner_text("#table")
                charts.screenshot(path=str(ARTIFACTS / "webui-llm-page.png"), full_page=True)
                charts.close()
                # The downloads, while the test runs.
                with urllib.request.urlopen(url + "llm/records.jsonl", timeout=30) as resp:
                    served = resp.read().splitlines()
                with urllib.request.urlopen(url + "llm/report.html", timeout=120) as resp:
                    report = resp.read()
                page.get_by_role("button", name="Stop").click()
                page.wait_for_timeout(1500)
                browser.close()
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
    run_dir = Path(last_line(out))
    assert run_dir == tmp_path / "web1", err

    rows = {row["figures over"].split(" ")[0]: row for row in shown if row["model @ host"] == name}
    assert set(rows) == {"last", "since"}, shown
    since, now = rows["since"], rows["last"]
    n = int(since["requests"])
    assert n >= 20
    assert 0 <= int(now["in flight"]) <= 3
    assert since["errors by category"] == "0"
    assert "max" in since["tok/s chart"] and since["TTFT p95 chart"].endswith(" ms")

    # What the tab showed is what the records say: the first n measured records (the order the
    # observer saw them in is the order the single Locust process wrote them).
    measured = [r for r in records(run_dir) if not r["warmup"]]
    shown_set = measured[:n]
    assert len(measured) >= n
    assert all(r["ok"] and r["output_tokens"] == 12 and r["max_tokens"] == 12 for r in shown_set)
    ttft = [r["ttft_ms"] for r in shown_set]
    tpot = [r["tpot_ms"] for r in shown_set]
    first = min(r["sent_unix_ns"] for r in shown_set) / 1e9
    last = max(r["sent_unix_ns"] / 1e9 + r["e2e_ms"] / 1000 for r in shown_set)
    expect = {
        "TTFT p50 ms": (np_pct(ttft, 50), 0.05),
        "TTFT p95 ms": (np_pct(ttft, 95), 0.05),
        "TPOT p50 ms": (np_pct(tpot, 50), 0.005),
        "output tok/s": (12 * n / (last - first), 0.05),
    }
    for col, (value, rounding) in expect.items():
        got = _number(since[col])
        assert got is not None and math.isclose(got, value, abs_tol=rounding + 1e-9), (col, got, value)

    # The downloads: the run's records so far (warm-up included), and a report.
    assert len(served) >= n + 1 and all(orjson.loads(line) for line in served)
    assert b"<html" in report[:200].lower() and b"web1" in report
    changes = [orjson.loads(x) for x in (run_dir / "webui_changes.jsonl").read_bytes().splitlines()]
    assert changes[-1]["max_tokens"] == 12


@pytest.mark.slow
def test_command_line_choices_reach_local_worker_processes(tmp_path: Path) -> None:
    """Plain locust, headless, one master and two worker processes: `--llm-models` and
    `--llm-max-tokens` are applied before the warm-up and travel to the workers with the plan."""
    with sim_host("--ttft-ms", "5", "--itl-ms", "1") as sim:
        proc = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / "chat.py"), "--headless"]
            + ["--host", sim.base_url, "-u", "2", "-r", "2", "-t", "3s", "--processes", "2"]
            + ["--llm-models", "phi-4-mini", "--llm-max-tokens", "5", "--run-dir", str(tmp_path / "r")]
            # a stream still running at -t's end is recorded `stopped` (a failure to Locust's exit code)
            + ["--loglevel", "WARNING", "--only-summary", "--exit-code-on-error", "0"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        bad = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / "chat.py"), "--headless"]
            + ["--host", sim.base_url, "-u", "1", "-t", "1s", "--llm-models", "nope"]
            + ["--run-dir", str(tmp_path / "bad")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = records(tmp_path / "r")
    measured = [r for r in recs if not r["warmup"]]
    assert measured and len({r["worker"] for r in measured}) == 2
    assert {r["model"] for r in recs} == {"phi-4-mini-instruct-generic-cpu:1"}
    assert {r["output_tokens"] for r in recs if r["ok"]} == {5}
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("harness: host ") and "nope" in bad.stderr
