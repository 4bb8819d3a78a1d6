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
import urllib.parse
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
    assert set(series) == {"t_s", "requests", "errors", "tokens_per_s", "ttft_p50_ms", "ttft_p95_ms"}

    def end_s(r: dict[str, Any]) -> float:
        return float(r["sent_unix_ns"] / 1e9 + (r["e2e_ms"] or 0) / 1000)

    for i in range(12):
        in_bin = [r for r in mine if T0 + 5 * i <= end_s(r) < T0 + 5 * (i + 1)]
        ok_in_bin = [r for r in in_bin if r["ok"]]
        assert series["requests"][i] == len(in_bin)
        assert series["errors"][i] == len(in_bin) - len(ok_in_bin)
        assert series["tokens_per_s"][i] == pytest.approx(32 * len(ok_in_bin) / 5)
        assert series["ttft_p50_ms"][i] == pytest.approx(np_pct([r["ttft_ms"] for r in ok_in_bin], 50))
        assert series["ttft_p95_ms"][i] == pytest.approx(np_pct([r["ttft_ms"] for r in ok_in_bin], 95))
    assert sum(series["errors"]) == sum(total["errors"].values())  # every failure ended in some bin
    # m2's last request ended at 48.1 s: its last bin has no TTFT (a gap in the chart), zero tokens/s
    m2_series = groups[("http://a/v1", "m2")]["series"]
    assert m2_series["requests"][-3:] == [1, 0, 0] and m2_series["tokens_per_s"][-1] == 0.0
    assert m2_series["ttft_p95_ms"][-2:] == [None, None] and m2_series["ttft_p50_ms"][-3] == 109.0


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
    assert g["series"]["ttft_p50_ms"] == [pytest.approx(np_pct([10, 11, 12, 13, 14, 500], 50))]
    assert g["series"]["requests"] == [6] and g["series"]["errors"] == [0]
    live.observe(rec("h", "m", T0 + 1.0, 100.0, error="http_5xx"))
    g = next(x for x in live.snapshot(None)["groups"] if x["model"] == "m")
    assert g["series"]["requests"] == [7] and g["series"]["errors"] == [1]
    live.reset(reason="reset")
    (only,) = live.snapshot(None)["groups"]
    assert only["all"] and only["total"]["requests"] == 0 and only["series"]["t_s"] == []


def test_table_rows_two_per_group() -> None:
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
    # the charts are drawn in the browser from the series, not as text in the table
    assert set(a_now) == {
        "name",
        "span",
        "requests",
        "inflight",
        "ttftP50",
        "ttftP95",
        "tpotP50",
        "tokensPerS",
        "errors",
    }
    # one host and one model: no sum rows
    live2 = LiveFigures(clock=lambda: now[0])
    live2.observe(rec("h", "m", T0, 10.0, ttft=5.0, tokens=2))
    assert len(table_rows(live2.snapshot(None), clock_format=str)) == 2


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
                charts.wait_for_function(
                    "() => document.querySelectorAll('#charts svg[data-chart=tps] path').length > 0"
                )
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
    port = str(_free_port())  # not Locust's default 5557: another run on this machine may hold it
    with sim_host("--ttft-ms", "5", "--itl-ms", "1") as sim:
        proc = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(REPO / "locustfiles" / "chat.py"), "--headless"]
            + ["--host", sim.base_url, "-u", "2", "-r", "2", "-t", "3s", "--processes", "2"]
            + ["--master-bind-port", port, "--master-port", port]
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


# --- the LLM tab's charts in a real browser -------------------------------------------------
_SCALES = ("x0", "x1", "y0", "y1", "tmax", "vmax", "generated", "since")
#: The series each chart draws, one line per group and key.
_CHART_KEYS = {"ttft": ("ttft_p95_ms", "ttft_p50_ms"), "tps": ("tokens_per_s",), "errors": ("errors",)}

_READ_CHARTS = """() => {
  const box = document.getElementById('harness-llm-charts');
  if (!box) return null;
  return [...box.querySelectorAll('svg[data-chart]')].map(svg => {
    const r = svg.getBoundingClientRect();
    const out = {chart: svg.dataset.chart, width: r.width, height: r.height, paths: []};
    for (const k of SCALES) out[k] = Number(svg.dataset[k]);
    for (const p of svg.querySelectorAll('path[data-key]'))
      out.paths.push({group: p.dataset.group, key: p.dataset.key, d: p.getAttribute('d')});
    return out;
  });
}""".replace("SCALES", orjson.dumps(_SCALES).decode())


def _group_name(g: dict[str, Any]) -> str:
    return "∑ all hosts and models" if g["all"] else f"{g['model']} @ {g['label']}"


def _drawn_points(d: str) -> list[tuple[float, float]]:
    import re

    return [(float(x), float(y)) for x, y in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", d)]


def _check_drawing(charts: list[dict[str, Any]], stats: dict[str, Any]) -> dict[tuple[str, str], int]:
    """Every line drawn is its series in `stats` (the /llm/stats.json the page drew from): one path
    per group and key, one point per bin with a value, each point read back through the chart's
    scales equal to (bin end, value) to 0.01 px. Returns the points per (chart, key) of the sum."""
    groups = [g for g in stats["groups"] if not g["all"]]
    if len(groups) > 1:
        groups = stats["groups"]
    points: dict[tuple[str, str], int] = {}
    assert sorted(c["chart"] for c in charts) == sorted(_CHART_KEYS)
    for c in charts:
        assert c["width"] > 200 and c["height"] > 100, c
        assert c["generated"] == stats["generated_unix"] and c["since"] == stats["since_unix"]
        px_t = c["tmax"] / (c["x1"] - c["x0"])
        px_v = c["vmax"] / (c["y0"] - c["y1"])
        drawn = {(p["group"], p["key"]): _drawn_points(p["d"]) for p in c["paths"]}
        expected = set()
        for g in groups:
            s = g["series"]
            for key in _CHART_KEYS[c["chart"]]:
                want = [(t, v) for t, v in zip(s["t_s"], s[key], strict=True) if v is not None]
                if not want:
                    continue
                expected.add((_group_name(g), key))
                got = drawn[(_group_name(g), key)]
                assert len(got) == len(want), (c["chart"], key, len(got), len(want))
                for (x, y), (t, v) in zip(got, want, strict=True):
                    assert (x - c["x0"]) * px_t == pytest.approx(t, abs=0.01 * px_t)
                    assert (c["y0"] - y) * px_v == pytest.approx(v, abs=0.01 * px_v)
                if g["all"] or len(groups) == 1:
                    points[(c["chart"], key)] = len(got)
        assert set(drawn) == expected, (c["chart"], set(drawn) ^ expected)
    return points


def _series_of_records(
    measured: list[dict[str, Any]], since: float, bin_s: float, bins: int
) -> dict[str, list[Any]]:
    """A group's series computed directly from its records: the reference for /llm/stats.json."""
    by_bin: list[list[dict[str, Any]]] = [[] for _ in range(bins)]
    for r in measured:
        i = math.floor((r["sent_unix_ns"] / 1e9 + (r["e2e_ms"] or 0) / 1000 - since) / bin_s)
        if 0 <= i < bins:
            by_bin[i].append(r)
    out: dict[str, list[Any]] = {
        k: [] for k in ("requests", "errors", "tokens_per_s", "ttft_p50_ms", "ttft_p95_ms")
    }
    for recs in by_bin:
        ok = [r for r in recs if r["ok"]]
        ttft = [r["ttft_ms"] for r in ok if r["ttft_ms"] is not None]
        out["requests"].append(len(recs))
        out["errors"].append(len(recs) - len(ok))
        out["tokens_per_s"].append(sum(r["output_tokens"] or 0 for r in ok) / bin_s)
        out["ttft_p50_ms"].append(np_pct(ttft, 50) if ttft else None)
        out["ttft_p95_ms"].append(np_pct(ttft, 95) if ttft else None)
    return out


@pytest.mark.slow
@pytest.mark.browser
def test_llm_tab_charts_draw_the_live_series_of_the_records(tmp_path: Path) -> None:
    """`harness run --web --workers 2`, two models, 10 % of requests failing: the LLM tab of Locust's
    page draws TTFT p50/p95, output tokens/s and errors over time per host and model; every drawn
    point is the value of the /llm/stats.json the page fetched, the lines grow while the test runs,
    and the series of stats.json are those of the records, merged from both workers."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (make system-deps)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("needs playwright (pip install -e '.[test]')")
    from playwright.sync_api import Route, sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    received: dict[float, dict[str, Any]] = {}

    def capture(route: Route) -> None:
        # What the page gets is what it draws from: keep every stats.json it received.
        resp = route.fetch()
        body = orjson.loads(resp.body())
        received[body["generated_unix"]] = body
        route.fulfill(response=resp)

    with sim_host("--ttft-ms", "20", "--itl-ms", "2", "--jitter-ms", "5", "--fault-500", "0.1") as sim:
        models = sim.models[:2]
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", "--web", "--web-port", str(port), "--host", sim.base_url]
            + ["--model", models[0], "--model", models[1], "--workers", "2", "--max-tokens", "12"]
            + ["--out", str(tmp_path), "--run-id", "charts1"],
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
                page = browser.new_page(viewport={"width": 1700, "height": 1000})
                page.route("**/llm/stats.json", capture)
                page.goto(url)
                page.fill("input[name=userCount]", "4")
                page.fill("input[name=spawnRate]", "4")
                page.get_by_role("button", name="Start").click()
                page.get_by_role("tab", name="LLM").click()
                # Lines of a few bins for the sum of both models, errors among them.
                page.wait_for_function(
                    """() => { const d = [...document.querySelectorAll(
                        '#harness-llm-charts svg[data-chart=tps] path')].map(p => p.getAttribute('d'));
                      return d.length === 3 && d.every(x => x.split('L').length >= 4); }""",
                    # generous: the workers start and warm up first, on a loaded CI machine too
                    timeout=240_000,
                )
                first = page.evaluate(_READ_CHARTS)
                points1 = _check_drawing(first, received[first[0]["generated"]])
                # Live: a later poll draws more bins.
                page.wait_for_function(
                    f"""() => [...document.querySelectorAll('#harness-llm-charts svg[data-chart=tps]')]
                          .some(s => Number(s.dataset.generated) > {first[0]["generated"]} + 6)""",
                    timeout=120_000,
                )
                second = page.evaluate(_READ_CHARTS)
                live = received[second[0]["generated"]]
                points2 = _check_drawing(second, live)
                assert points2[("tps", "tokens_per_s")] > points1[("tps", "tokens_per_s")]
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "webui-llm-tab-charts.png"), full_page=True)
                # Only under the LLM tab.
                page.get_by_role("tab", name="Charts").click()
                page.wait_for_timeout(600)
                assert page.evaluate(_READ_CHARTS) is None
                page.get_by_role("tab", name="LLM").click()
                page.wait_for_function(
                    "() => document.querySelector('#harness-llm-charts svg path') !== null"
                )
                page.get_by_role("button", name="Stop").click()
                # Settled: the master has every worker's last records (they come with the stop),
                # nothing is in flight, and the bins those records ended in are complete.
                settled: dict[str, Any] = {}
                stable_at = math.inf
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    page.wait_for_timeout(1000)
                    with urllib.request.urlopen(url + "llm/stats.json", timeout=10) as resp:
                        now = orjson.loads(resp.read())
                    quiet = now["groups"][-1]["inflight"] == 0
                    if quiet and settled and now["records"] == settled["records"]:
                        stable_at = min(stable_at, settled["generated_unix"])
                    else:
                        stable_at = math.inf
                    settled = now
                    if now["window_hi_unix"] >= stable_at + now["bin_s"]:
                        break
                browser.close()
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
    assert out.strip(), (proc.returncode, err[-3000:])
    run_dir = Path(last_line(out))
    assert run_dir == tmp_path / "charts1", err

    measured = [r for r in records(run_dir) if not r["warmup"]]
    assert len({r["worker"] for r in measured}) == 2  # merged from both workers
    assert settled["records"] == len(measured)
    assert sum(not r["ok"] for r in measured) >= 3 and {r["error"] for r in measured if not r["ok"]} <= {
        "http_5xx",
        "stopped",
    }
    since, bin_s = settled["since_unix"], settled["bin_s"]
    by_name = {_group_name(g): g for g in settled["groups"]}
    assert len(by_name) == 3
    for g in settled["groups"]:
        mine = [r for r in measured if g["all"] or (r["host"], r["model"]) == (g["host"], g["model"])]
        s = g["series"]
        bins = len(s["t_s"])
        assert s["t_s"] == [pytest.approx((i + 1) * bin_s) for i in range(bins)]
        want = _series_of_records(mine, since, bin_s, bins)
        ends = [r["sent_unix_ns"] / 1e9 + (r["e2e_ms"] or 0) / 1000 - since for r in mine]
        assert sum(want["requests"]) == len(mine), (
            min(ends),
            max(ends),
            bins,
            settled["window_hi_unix"] - since,
        )
        for key, values in want.items():
            assert s[key] == [None if v is None else pytest.approx(v, rel=1e-9) for v in values], (
                _group_name(g),
                key,
            )
        # What the page drew while the test ran: the same bins, but for records a worker had not
        # reported yet. A bin's records then are a subset of its records now, so a bin with as many
        # requests is the same records, and every value of it must be equal.
        lg = next(x for x in live["groups"] if _group_name(x) == _group_name(g))
        assert lg["series"]["t_s"] == s["t_s"][: len(lg["series"]["t_s"])]
        same = [i for i, n in enumerate(lg["series"]["requests"]) if n == s["requests"][i]]
        assert len(same) >= 2, (lg["series"]["requests"], s["requests"])
        for key in want:
            assert [lg["series"][key][i] for i in same] == [s[key][i] for i in same], (_group_name(g), key)
        assert all(a <= b for a, b in zip(lg["series"]["requests"], s["requests"], strict=False))


def _post(url: str, data: dict[str, Any] | None = None) -> None:
    body = urllib.parse.urlencode(data or {}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as resp:
        assert resp.status == 200


def _state(url: str) -> str:
    with urllib.request.urlopen(url + "stats/requests", timeout=10) as resp:
        return str(orjson.loads(resp.read())["state"])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_second_start_after_a_request_limit_sends_the_limit_again(tmp_path: Path, workers: int) -> None:
    """Web UI, `--max-requests 6`: the first Start ends at 6 requests; a second Start (after the
    limit stopped the test) sends 6 more and stops again, by the host's own count, alone and with
    two worker processes. It used to send nothing and never stop: the pool was built once per
    process and the limit's flags never reset."""
    from harness_helpers import sim_stats

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    with sim_host("--ttft-ms", "5", "--itl-ms", "5") as sim:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness", "run", "--web", "--web-port", str(port), "--host", sim.base_url]
            + ["--output-tokens", "5", "--max-requests", "6", "--out", str(tmp_path), "--run-id", "web2"]
            + ["--workers", str(workers), "--users", "2"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            _wait_http(url, proc)
            before = sim_stats(sim.base_url)["chat_requests"]  # the warm-up
            out = err = ""
            for start in (1, 2):
                _post(url + "swarm", {"user_count": "2", "spawn_rate": "2"})
                deadline = time.monotonic() + 30
                # The spawn reaches workers a moment after /swarm answers: wait for the requests
                # first, then for the stop the limit makes.
                while (sent := sim_stats(sim.base_url)["chat_requests"] - before) < 6 * start or (
                    _state(url) != "stopped"
                ):
                    assert time.monotonic() < deadline, (
                        f"Start {start}: {sent} sent, the limit never stopped it"
                    )
                    time.sleep(0.2)
                time.sleep(0.5)  # nothing more comes after the stop
                sent = sim_stats(sim.base_url)["chat_requests"] - before
                assert sent == 6 * start, (start, sent)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    # Two Starts, 12 requests: no "stopped before ... of the 6 requests asked" (a web session's
    # count is its user's), and the session ends as a web session does, on Ctrl-C.
    assert proc.returncode == 0 and "requests asked" not in err, err[-2000:]
    assert len([r for r in records(Path(last_line(out))) if not r["warmup"]]) == 12
