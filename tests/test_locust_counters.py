"""What Locust's own counters and the console say (real processes against `harness serve sim`):

- Locust counts one request per LLM request: its Aggregated row (console, `--csv`, `--html`) equals
  the records and the host's own count, failures included, locally and with workers, while `TTFT`
  and `TPOT` stay visible as entries of their own;
- the web UI header (`/stats/requests`) counts the same, as the LLM tab's own count of the records;
- a plain `locust -t` whose only failures are streams cut by the end of the run exits 0;
- `harness run` names a wire pattern (Nagle on reuse) in one line after its table.
"""

from __future__ import annotations

import csv
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness_helpers import REPO, harness, last_line, records, sim_host, sim_stats

from harness.diagnostics import console_hints

pytestmark = pytest.mark.slow

AGGREGATED = ("", "Aggregated")


def csv_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as fh:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(fh)}


def html_rows(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    found = re.search(r"window\.templateArgs = (\{.*?\})\s*\n", path.read_text())
    assert found, "Locust's HTML report carries its figures as window.templateArgs"
    args = orjson.loads(found.group(1))
    return {(r["method"], r["name"]): r for r in args["requests_statistics"]}


def console_aggregated(log: Path) -> tuple[int, int]:
    """(requests, failures) of the Aggregated line of Locust's final console table."""
    lines = re.findall(r"^\s+Aggregated\s+(\d+)\s+(\d+)\(", log.read_text(), flags=re.M)
    assert lines, "Locust printed its summary table"
    return int(lines[-1][0]), int(lines[-1][1])


def records_rate(measured: list[dict[str, Any]]) -> float:
    """Requests/s of the records: all measured requests over first send to last end."""
    start = min(r["sent_unix_ns"] for r in measured)
    end = max(r["sent_unix_ns"] + (r["e2e_ms"] or 0) * 1e6 for r in measured)
    return len(measured) / ((end - start) / 1e9)


@pytest.mark.parametrize("workers", [0, 2])
def test_locust_counts_one_request_per_llm_request(tmp_path: Path, workers: int) -> None:
    scenario = tmp_path / "s.yaml"
    # No stagger and every user at once: the first request leaves as the test starts, so Locust's
    # window (test start to last request) and the records' (first send to last end) are the same.
    scenario.write_text(
        "name: counters\nrequest: {max_tokens: 16}\n"
        "load: {users: 4, spawn_rate: 100, duration: 10s, stagger: 0}\n"
    )
    # Seeded faults: the warm-up request (the host's first) succeeds, some later ones get a 500;
    # streams running at the end (stop_timeout 0) are cut (`stopped`): both are Locust failures.
    with sim_host("--ttft-ms", "100", "--itl-ms", "10", "--fault-500", "0.05", "--seed", "1") as sim:
        proc = harness(
            "run", str(scenario), "--host", sim.base_url, "--workers", str(workers), "--out", str(tmp_path)
        )
        host = sim_stats(sim.base_url)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    recs = records(run_dir)
    measured = [r for r in recs if not r["warmup"]]
    failed = [r for r in measured if not r["ok"]]
    assert len(recs) == host["chat_requests"], "one record per request the host received"
    # Streams cut by the end are usually among them; the plain-locust test below always has some.
    errors = {r["error"] for r in failed}
    assert "http_5xx" in errors and errors <= {"http_5xx", "stopped"}, errors
    if workers:
        assert len({r["worker"] for r in measured}) == workers

    name = next(name for method, name in csv_rows(run_dir / "locust" / "locust_stats.csv") if method == "E2E")
    tables = {
        "csv": csv_rows(run_dir / "locust" / "locust_stats.csv"),
        "html": html_rows(run_dir / "locust" / "report.html"),
    }
    fields = {
        "csv": ("Request Count", "Failure Count", "Requests/s"),
        "html": ("num_requests", "num_failures", "total_rps"),
    }
    expected_rate = records_rate(measured)
    for kind, rows in tables.items():
        n, f, rps = fields[kind]
        total = rows[AGGREGATED]
        assert int(total[n]) == len(measured), (kind, total[n], len(measured))
        assert int(total[f]) == len(failed), (kind, total[f], len(failed))
        # Two-sided. With workers, Locust's window opens when the master starts the test, a few
        # hundred ms before the workers' first requests leave: up to 5 % of a 10 s run, never above.
        low = 0.95 if workers else 0.98
        assert low * expected_rate <= float(total[rps]) <= 1.02 * expected_rate, (
            kind,
            total[rps],
            expected_rate,
        )
        # TTFT and TPOT stay visible, outside the total.
        assert int(rows[("TTFT", name)][n]) == sum(1 for r in measured if r["ttft_ms"] is not None)
        assert int(rows[("TPOT", name)][n]) == sum(
            1 for r in measured if r["ok"] and r["tpot_ms"] is not None
        )
        assert int(rows[("E2E", name)][n]) == len(measured)
    with open(run_dir / "locust" / "locust_failures.csv", newline="") as fh:
        assert sum(int(r["Occurrences"]) for r in csv.DictReader(fh)) == len(failed)
    assert console_aggregated(run_dir / "locust" / "locust.log") == (len(measured), len(failed))
    counts = orjson.loads((run_dir / "locust_counts.json").read_bytes())
    assert counts["total"] == {"requests": len(measured), "failures": len(failed)}


def plain_locust(host: str, run_dir: Path, seconds: int) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "locust", "-f", "locustfiles/chat.py", "--headless", "-u", "4", "-r", "4"]
    cmd += ["-t", f"{seconds}s", "--host", host, "--run-dir", str(run_dir), "--csv", str(run_dir / "locust")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=REPO)


def test_plain_locust_exits_0_when_only_streams_cut_by_the_end_failed(tmp_path: Path) -> None:
    # Streams of ~1.4 s (TTFT 100 ms, 128 tokens 10 ms apart): the end of the run cuts some.
    with sim_host("--ttft-ms", "100", "--itl-ms", "10") as sim:
        proc = plain_locust(sim.base_url, tmp_path / "plain", 10)
        host = sim_stats(sim.base_url)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(tmp_path / "plain")
    measured = [r for r in recs if not r["warmup"]]
    assert len(recs) == host["chat_requests"]
    assert {r["error"] for r in measured if not r["ok"]} == {"stopped"}, "streams cut by the end, recorded"
    total = csv_rows(tmp_path / "plain" / "locust_stats.csv")[AGGREGATED]
    assert int(total["Request Count"]) == len(measured)
    assert int(total["Failure Count"]) == sum(1 for r in measured if not r["ok"])


def test_plain_locust_still_fails_on_a_real_failure(tmp_path: Path) -> None:
    with sim_host("--ttft-ms", "5", "--itl-ms", "1", "--fault-500", "0.3", "--seed", "1") as sim:
        proc = plain_locust(sim.base_url, tmp_path / "plain", 3)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert any(r["error"] == "http_5xx" for r in records(tmp_path / "plain"))


@pytest.mark.parametrize(("policy", "named"), [("reuse", True), ("reuse-quickack", False)])
def test_run_names_nagle_after_the_table(tmp_path: Path, policy: str, named: bool) -> None:
    # A host faster than the 40 ms delayed-ACK floor that leaves Nagle on, as Foundry Local does.
    with sim_host("--nagle", "--ttft-ms", "2", "--itl-ms", "1") as sim:
        proc = harness(
            "run",
            "--host",
            sim.base_url,
            "--connection",
            policy,
            "--users",
            "2",
            "--duration",
            "4s",
            "--max-tokens",
            "16",
            "--out",
            str(tmp_path),
        )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    after_table = lines[lines.index(next(x for x in lines if x.startswith("(latencies in ms"))) + 1 : -1]
    nagle = [x for x in after_table if x.startswith("harness: Nagle on reuse: ")]
    if named:
        assert len(nagle) == 1 and "delayed-ACK floor" in nagle[0] and "report.md" in nagle[0], proc.stdout
    else:
        assert not [x for x in lines if "Nagle" in x], proc.stdout


def test_console_hints_one_line_per_pattern() -> None:
    def group(host: str, stage: str, *patterns: str) -> dict[str, Any]:
        key = {"host": host, "model": "m", "stage": stage, "connection": "reuse"}
        return {"key": key, "findings": [{"pattern": p, "message": f"{p} seen"} for p in patterns]}

    diags = [
        group("http://127.0.0.1:1/v1", "s1", "nagle", "first_wave"),
        group("http://127.0.0.1:1/v1", "s2", "nagle"),
        group("http://127.0.0.1:2/v1", "s1"),
    ]
    assert console_hints(diags) == [
        "Nagle on reuse: nagle seen [127.0.0.1:1, m, s1, reuse; 1 more group(s); see report.md, Stream diagnostics]",
        "first wave: first_wave seen [127.0.0.1:1, m, s1, reuse; see report.md, Stream diagnostics]",
    ]
    assert console_hints([group("h", "s1")]) == []


def test_web_ui_header_counts_one_request_per_llm_request(tmp_path: Path) -> None:
    """What the web UI header reads (`/stats/requests`: Aggregated requests, requests/s, failure
    ratio), against the LLM tab's count from the raw records in the same poll and the records."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: web\nrequest: {max_tokens: 16}\nload: {stagger: 0}\n")
    with sim_host("--ttft-ms", "20", "--itl-ms", "5") as sim:
        cmd = [sys.executable, "-m", "harness", "run", str(scenario), "--web", "--web-port", str(port)]
        cmd += ["--host", sim.base_url, "--out", str(tmp_path), "--run-id", "web"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, "web UI did not come up"
                try:
                    urllib.request.urlopen(url + "/", timeout=2).close()
                    break
                except OSError:
                    time.sleep(0.3)
            form = b"user_count=4&spawn_rate=100"
            urllib.request.urlopen(urllib.request.Request(url + "/swarm", data=form), timeout=10).close()
            time.sleep(8)
            with urllib.request.urlopen(url + "/stats/requests", timeout=10) as resp:
                polled = orjson.loads(resp.read())
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    rows = {(r["method"], r["name"]): r for r in polled["stats"]}
    total = rows[("", "Aggregated")]
    e2e = next(r for (method, _), r in rows.items() if method == "E2E")
    (llm,) = [x for x in polled["extended_stats"] if x["key"] == "llm"]
    since = next(row for row in llm["data"] if row["span"].startswith("since start"))
    # The records seen by the LLM tab (its own count, from the raw records) at the same instant.
    n = since["requests"]
    assert n >= 20 and total["num_requests"] == e2e["num_requests"] == n, (total, since)
    assert total["num_failures"] == 0 and polled["fail_ratio"] == 0
    measured = [r for r in records(Path(last_line(out))) if not r["warmup"]][:n]
    expected_rate = records_rate(measured)
    assert 0.98 * expected_rate <= polled["total_rps"] <= 1.02 * expected_rate, (
        polled["total_rps"],
        expected_rate,
    )
