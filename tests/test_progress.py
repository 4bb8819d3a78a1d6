"""Live progress of headless runs (harness.progress): window arithmetic with hand-made records, and
real `harness run`s against the simulated host whose progress lines are recomputed from the run's
records.jsonl (and checked against the sim's known timing and its own request count)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from harness_helpers import REPO, harness, last_line, records, sim_host, sim_stats

from harness.progress import ALL, Progress, ProgressState

LINE = re.compile(
    r"^harness: progress (?P<elapsed>[\d:]+)/(?P<total>[\d:]+) stage (?P<stage>\S+) (?P<stage_name>\S+), "
    r"users (?P<users>\S+), in flight (?P<inflight>\S+) \| window (?P<lo>[\d.]+)-(?P<hi>[\d.]+) s: "
    r"(?P<req>\d+) req, (?P<oks>[\d.]+) ok/s, (?P<tps>[\d.]+) tok/s, TTFT p50 (?P<p50>\S+) p95 (?P<p95>\S+) ms, "
    r"TPOT p50 (?P<tpot>\S+) ms, errors (?P<errors>.*)$"
)
GROUP = re.compile(
    r"^harness: progress   (?P<model>\S+) @ (?P<label>\S+): "
    r"(?P<req>\d+) req, (?P<oks>[\d.]+) ok/s, (?P<tps>[\d.]+) tok/s, TTFT p50 (?P<p50>\S+) p95 (?P<p95>\S+) ms, "
    r"TPOT p50 (?P<tpot>\S+) ms, errors (?P<errors>.*)$"
)
T0 = re.compile(r"windows from t0_unix (?P<t0>[\d.]+)")
LATE = re.compile(r"progress: (?P<n>\d+) record\(s\) reached the run folder after their window")


def _rec(sent_s: float, e2e_ms: float | None, **kw: Any) -> dict[str, Any]:
    base = {
        "host": "http://h1/v1",
        "model": "m1",
        "sent_unix_ns": int(sent_s * 1e9),
        "e2e_ms": e2e_ms,
        "ok": True,
        "error": None,
        "ttft_ms": 100.0,
        "tpot_ms": 10.0,
        "output_tokens": 32,
        "warmup": False,
    }
    return base | kw


def _errors(text: str) -> dict[str, int]:
    if text == "0":
        return {}
    inner = text.split("(", 1)[1].rstrip(")")
    return {k: int(v) for k, v in (part.rsplit(" ", 1) for part in inner.split(", "))}


def _num(text: str) -> float | None:
    return None if text == "-" else float(text)


# --- the arithmetic, with hand-made records ---------------------------------------------------


def test_window_holds_the_records_that_ended_in_it_per_host_and_model() -> None:
    st = ProgressState(t0=1000.0)
    st.add_record(_rec(1000.5, 400, ttft_ms=90.0, tpot_ms=9.0))  # ends 0.9: in [0, 1)
    st.add_record(_rec(1000.8, 400, ttft_ms=110.0, tpot_ms=11.0))  # ends 1.2: next window
    st.add_record(_rec(1000.1, None, ok=False, error="connect", ttft_ms=None, tpot_ms=None, output_tokens=0))
    st.add_record(_rec(1000.2, 300, host="http://h2/v1", ttft_ms=50.0, output_tokens=10))
    st.add_record(_rec(1000.3, 100, warmup=True))  # never counted
    w = st.window(0.0, 1.0)
    a = w[ALL]
    assert (a.requests, a.ok, a.output_tokens) == (3, 2, 42)
    assert a.errors == {"connect": 1}
    assert a.requests_per_s == 2.0 and a.tokens_per_s == 42.0
    assert a.ttft_p50_ms == pytest.approx(np.percentile([90.0, 50.0], 50))
    assert a.ttft_p95_ms == pytest.approx(np.percentile([90.0, 50.0], 95))
    assert w[("http://h2/v1", "m1")].requests == 1
    assert w[("http://h1/v1", "m1")].errors == {"connect": 1}
    nxt = st.window(1.0, 2.0)[ALL]
    assert (nxt.requests, nxt.ttft_p50_ms, nxt.tpot_p50_ms) == (1, 110.0, 11.0)


def test_users_and_in_flight_are_the_latest_sample_of_each_process_summed() -> None:
    st = ProgressState(t0=0.0)
    st.add_sample({"worker": "a:1", "t_unix_ns": 2, "users": 3, "inflight": 2, "stage": "s2",
                   "inflight_by": [["http://h1/v1", "m1", 2]]})  # fmt: skip
    st.add_sample(
        {"worker": "a:1", "t_unix_ns": 1, "users": 9, "inflight": 9, "stage": "s1"}
    )  # older: ignored
    st.add_sample({"worker": "b:2", "t_unix_ns": 2, "users": 4, "inflight": 1,
                   "inflight_by": [["http://h1/v1", "m1", 1]]})  # fmt: skip
    assert st.users() == 7
    assert st.inflight_by() == {ALL: 3, ("http://h1/v1", "m1"): 3}
    assert st.stage() == "s2"


def test_lines_wait_for_the_lag_and_a_late_record_is_reported(tmp_path: Path) -> None:
    now = [1000.0]
    recs, metrics = tmp_path / "records.jsonl", tmp_path / "client_metrics.jsonl"
    recs.write_bytes(orjson.dumps(_rec(999.0, 10, warmup=True)) + b"\n")  # warm-up, before the start
    out = tmp_path / "out.txt"
    with open(out, "w") as stream:
        p = Progress(recs, metrics, stages=["main"], total_s=10, labels={}, interval_s=2, lag_s=1.5,
                     mode="lines", stream=stream, clock=lambda: now[0])  # fmt: skip
        p.start()
        with open(recs, "ab") as fh:
            fh.write(orjson.dumps(_rec(1000.5, 500)) + b"\n")  # ends at 1.0
            fh.write(b'{"half a line')  # not complete yet: not read
        now[0] = 1003.4  # window [0, 2) is due at 3.5
        p._step(final=False)
        assert p.printed == 0
        now[0] = 1003.5
        p._step(final=False)
        assert p.printed == 1
        with open(recs, "ab") as fh:
            fh.write(b'"}\n')  # the half line completes (not a record: no send time)
            fh.write(orjson.dumps(_rec(1001.0, 500)) + b"\n")  # ends at 1.5: its window was shown
        now[0] = 1004.0
        p.stop()
    text = out.read_text()
    lines = [LINE.match(x) for x in text.splitlines() if x.startswith("harness: progress ")]
    assert [(m["lo"], m["hi"], m["req"]) for m in lines if m] == [
        ("0.00", "2.00", "1"),
        ("2.00", "4.00", "0"),
    ]
    late = LATE.search(text)
    assert late and late["n"] == "1"


# --- real runs --------------------------------------------------------------------------------


def _check_lines_against_records(out: str, run_dir: Path, users: int) -> list[re.Match[str]]:
    """Every progress line recomputed from records.jsonl over the same window (by end time)."""
    t0m = T0.search(out)
    assert t0m, out[-2000:]
    t0 = float(t0m["t0"])
    lines = [m for m in (LINE.match(x) for x in out.splitlines()) if m]
    recs = [r for r in records(run_dir) if not r.get("warmup")]
    ends = np.array([r["sent_unix_ns"] / 1e9 - t0 + (r["e2e_ms"] or 0) / 1000 for r in recs])
    late_m = LATE.search(out)
    late = int(late_m["n"]) if late_m else 0
    short = 0
    text = out.splitlines()
    for m in lines:
        lo, hi = float(m["lo"]), float(m["hi"])
        inside = [r for r, e in zip(recs, ends, strict=True) if lo <= e < hi]
        missing = len(inside) - int(m["req"])
        # A window shows fewer records only if the harness said records came late, never more.
        assert 0 <= missing <= late, (m.group(0), len(inside))
        short += missing
        if missing:
            continue
        _same_figures(m, inside, hi - lo)
        # The per-model lines right after it (when the window holds several): the same, per model.
        groups = []
        for x in text[text.index(m.group(0)) + 1 :]:
            g = GROUP.match(x)
            if g is None:
                break
            groups.append(g)
        models = {r["model"] for r in inside}
        assert {g["model"] for g in groups} == (models if len(models) > 1 else set())
        for g in groups:
            _same_figures(g, [r for r in inside if r["model"] == g["model"]], hi - lo)
    assert short == late
    # Late records are reported, and rare: a window shown before its records are in (a lag shorter
    # than the flush or report interval) would make most of them late.
    assert late <= 0.02 * len(recs), late
    # Every record is shown in exactly one window.
    assert sum(int(m["req"]) for m in lines) + late == len(recs)
    return lines


def _same_figures(m: re.Match[str], inside: list[dict[str, Any]], seconds: float) -> None:
    """The figures of one line against those recomputed from the records of its window."""
    assert int(m["req"]) == len(inside), m.group(0)
    ok = [r for r in inside if r["ok"]]
    assert float(m["oks"]) == pytest.approx(len(ok) / seconds, abs=0.0051)
    tokens = sum(r["output_tokens"] or 0 for r in ok)
    assert float(m["tps"]) == pytest.approx(tokens / seconds, abs=0.051)
    ttft = [r["ttft_ms"] for r in ok if r["ttft_ms"] is not None]
    tpot = [r["tpot_ms"] for r in ok if r["tpot_ms"] is not None]
    if ttft:
        assert _num(m["p50"]) == pytest.approx(np.percentile(ttft, 50), abs=0.051)
        assert _num(m["p95"]) == pytest.approx(np.percentile(ttft, 95), abs=0.051)
    else:
        assert m["p50"] == "-"
    if tpot:
        assert _num(m["tpot"]) == pytest.approx(np.percentile(tpot, 50), abs=0.0051)
    errors: dict[str, int] = {}
    for r in inside:
        if not r["ok"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    assert _errors(m["errors"]) == errors


@pytest.mark.parametrize("workers", [0, 2])
def test_piped_run_prints_lines_that_match_the_records(tmp_path: Path, workers: int) -> None:
    ttft, itl = 50.0, 5.0
    with sim_host("--ttft-ms", f"{ttft:g}", "--itl-ms", f"{itl:g}", "--fault-500", "0.1") as sim:
        p = harness(
            "run", "--host", sim.base_url, "--model", sim.models[0], "--model", sim.models[1],
            "--users", "4", "--spawn-rate", "4", "--duration", "12s",
            "--max-tokens", "32", "--progress-interval", "1", "--no-report", "--workers", str(workers),
            "--out", str(tmp_path), timeout=120,
        )  # fmt: skip
        stats = sim_stats(sim.base_url)
    assert p.returncode == 0, p.stderr[-2000:]
    run_dir = Path(last_line(p.stdout))
    lines = _check_lines_against_records(p.stderr, run_dir, users=4)
    assert len(lines) >= 10, p.stderr
    # The sim's own count: every chat request it got is a record (warm-up ones apart) shown once.
    warm = sum(1 for r in records(run_dir) if r.get("warmup"))
    assert (
        sum(int(m["req"]) for m in lines) + int((LATE.search(p.stderr) or {"n": 0})["n"]) + warm
        == stats["chat_requests"]
    )
    steady = [m for m in lines if float(m["lo"]) >= 4 and float(m["hi"]) <= 11 and int(m["req"]) >= 5]
    assert len(steady) >= 4, p.stderr
    for m in steady:
        assert m["users"] == "4"
        assert m["stage"] == "1/1"
        # Against the sim's known timing (a loaded machine can only add, and not much, at 4 users).
        assert ttft <= float(m["p50"]) < ttft + 25, m.group(0)
        assert itl - 0.2 <= float(m["tpot"]) < itl + 1.5, m.group(0)
        assert "http_5xx" in m["errors"] or m["errors"] == "0"
    assert any("http_5xx" in m["errors"] for m in lines)


def test_quiet_and_bad_interval(tmp_path: Path) -> None:
    with sim_host("--ttft-ms", "20", "--itl-ms", "2") as sim:
        p = harness(
            "run", "--host", sim.base_url, "--users", "2", "--duration", "3s", "--max-tokens", "8",
            "--progress-interval", "1", "--quiet", "--no-report", "--out", str(tmp_path),
        )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "harness: progress" not in p.stderr
    bad = harness("run", "--progress-interval", "0", "--out", str(tmp_path))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["harness: --progress-interval 0: expected seconds above 0"]


def test_terminal_shows_a_live_table(tmp_path: Path) -> None:
    """stderr on a pseudo-terminal: the rich table, redrawn, with the figures' columns."""
    with sim_host("--ttft-ms", "50", "--itl-ms", "5") as sim:
        master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"}
        cmd = [sys.executable, "-m", "harness", "run", "--host", sim.base_url, "--users", "3", "--duration",
               "5s", "--max-tokens", "16", "--progress-interval", "2", "--no-report", "--out", str(tmp_path)]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        screen = b""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                screen += chunk
            elif proc.poll() is not None:
                break
        proc.wait(30)
        os.close(master)
    text = screen.decode(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    for column in (
        "in flight",
        "req/s ok",
        "out tok/s",
        "TTFT p50 ms",
        "TTFT p95 ms",
        "TPOT p50 ms",
        "errors",
    ):
        assert column in text
    assert re.search(r"elapsed 0:0\d / 0:05", text)
    assert "users 3" in text
    # Redrawn in place (cursor movement), not printed as lines.
    assert "\x1b[" in text and "harness: progress " not in text
    # The last table shows figures of the run: TTFT p50 near the sim's 50 ms.
    assert re.search(r"\b5\d\.\d\b", text), text[-3000:]
