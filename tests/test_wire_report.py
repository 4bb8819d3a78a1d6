"""The report's wire-level sections: client health from client_metrics.jsonl, and stream
diagnostics naming Foundry Local's Nagle artefact for the `reuse` policy only (real runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from harness_helpers import harness, last_line
from recordgen import T0_NS, record, write_run

from harness.diagnostics import DELAYED_ACK_MS
from harness.report import build


def metrics_line(
    worker: str,
    t_s: float,
    cpu: float,
    lag: float,
    stage: str = "s1",
    kernel: bool | None = False,
    watch: bool | None = None,
) -> bytes:
    sample = {
        "worker": worker,
        "t_unix_ns": T0_NS + int(t_s * 1e9),
        "stage": stage,
        "cpu_percent": cpu,
        "loop_lag_ms_p50": lag / 2,
        "loop_lag_ms_p99": lag,
        "loop_lag_ms_max": lag,
        "users": 4,
        "inflight": 2,
        "kernel_stamps": kernel,
    }
    if watch is not None:
        sample["first_token_watch"] = watch
    return orjson.dumps(sample) + b"\n"


@pytest.mark.parametrize(
    ("cpu", "lag", "verdict"),
    [(30.0, 1.0, "ok"), (95.0, 1.0, "client-limited (CPU)"), (20.0, 40.0, "client starved")],
)
def test_client_health_flags_busy_or_starved_clients(
    tmp_path: Path, cpu: float, lag: float, verdict: str
) -> None:
    run = write_run(tmp_path / "r", [record(t_s=i * 0.5, seq=i) for i in range(20)])
    lines = [metrics_line("a:1", t, 20.0, 0.5) for t in range(10)] + [metrics_line("b:2", 5, cpu, lag)]
    (run / "client_metrics.jsonl").write_bytes(b"".join(lines))
    report = build([run], run, formats=["md", "json", "html"])
    (health,) = report.summary["client_health"]
    assert health["workers"] == 2 and health["cpu_percent_max"] == max(cpu, 20.0)
    assert health["verdict"].startswith(verdict)
    flagged = [w for w in report.warnings if "stage s1" in w]
    assert bool(flagged) == (verdict != "ok")
    md = (run / "report.md").read_text()
    assert "## Client health" in md and verdict.split(" (")[0] in md
    assert "Stream diagnostics" in (run / "report.html").read_text()


def test_diagnostics_group_per_connection_policy(tmp_path: Path) -> None:
    recs = [record(t_s=i * 0.1, seq=i, connection="reuse" if i % 2 else "new") for i in range(40)]
    run = write_run(tmp_path / "r", recs)
    summary = build([run], run, formats=["json"], trim_s=0).summary
    assert {d["key"]["connection"] for d in summary["diagnostics"]} == {"reuse", "new"}
    for d in summary["diagnostics"]:
        assert d["stats"]["requests"] == 20 and d["stats"]["tokens_per_read_p50"] is not None


@pytest.mark.slow
@pytest.mark.foundry
def test_report_names_nagle_for_reuse_runs_against_foundry(tmp_path: Path) -> None:
    runs = []
    for policy in ("reuse", "new", "reuse-quickack"):
        proc = harness(
            "run",
            "--connection",
            policy,
            "--users",
            "2",
            "--duration",
            "4s",
            "--max-tokens",
            "64",
            "--stop-timeout",
            "10s",
            "--out",
            str(tmp_path),
            "--run-id",
            policy,
            "--no-report",
        )
        assert proc.returncode == 0, proc.stderr
        runs.append(Path(last_line(proc.stdout)))
    summary = build(runs, tmp_path / "report", formats=["md", "json"]).summary
    diags = {d["key"]["connection"]: d for d in summary["diagnostics"]}
    found = {policy: {f["pattern"] for f in d["findings"]} for policy, d in diags.items()}
    # Whether `reuse` must show Nagle follows from this host's own speed, measured by the `new` run
    # (fresh connections ACK at once) on this machine: named when the host is clearly faster than
    # the 40 ms delayed-ACK floor, not when it is slower, either way within a few ms of it.
    own = diags["new"]["stats"]["fresh_ttfb_to_ttft_ms_p50"]
    assert own is not None
    if own < DELAYED_ACK_MS - 10:
        assert "nagle" in found["reuse"], (own, summary["diagnostics"])
        assert "Nagle" in (tmp_path / "report" / "report.md").read_text()
    elif own > DELAYED_ACK_MS + 5:
        assert "nagle" not in found["reuse"], (own, summary["diagnostics"])
    assert "nagle" not in found["new"] and "nagle" not in found["reuse-quickack"], (own, found)


def test_a_run_can_ask_for_no_trimming(tmp_path: Path) -> None:
    recs = [record(t_s=i * 0.5, seq=i) for i in range(40)]  # a 20 s stage: 2 s trimmed at each end by default
    run = write_run(tmp_path / "r", recs)
    assert build([run], run, formats=["json"]).summary["counts"]["trimmed"] > 0
    manifest = orjson.loads((run / "manifest.json").read_bytes()) | {"report": {"trim_s": 0}}
    (run / "manifest.json").write_bytes(orjson.dumps(manifest))
    assert build([run], run, formats=["json"]).summary["counts"]["trimmed"] == 0


def test_a_late_loop_is_no_verdict_when_reads_carry_kernel_stamps(tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", [record(t_s=i * 0.5, seq=i) for i in range(20)])
    lines = [metrics_line("a:1", 0, 5.0, 0.2, kernel=None)]  # before the first connection
    lines += [metrics_line("a:1", t, 20.0, 40.0, kernel=True) for t in range(1, 10)]
    (run / "client_metrics.jsonl").write_bytes(b"".join(lines))
    report = build([run], run, formats=["json"])
    (health,) = report.summary["client_health"]
    assert health["verdict"].startswith("ok (event loop late") and not health["client_limited"]
    assert not [w for w in report.warnings if "stage s1" in w]


def merged_first(rec: dict[str, Any]) -> dict[str, Any]:
    """The record as a late read leaves it: the first content event stamped with the second's arrival
    (TTFT one token gap late)."""
    offs = rec["event_offsets_us"]
    rec["event_offsets_us"] = [offs[1], *offs[1:]]
    rec["ttft_ms"] = offs[1] / 1000
    return rec


def health_of(tmp_path: Path, merged: int, cpu: float, lag: float, watch: bool | None) -> dict[str, Any]:
    """Client health of a stage of 40 requests (10 ms token gaps at the host), `merged` of them with
    their first two events on one stamp, one worker at `cpu` % with loop lag `lag`."""
    recs = [record(t_s=i * 0.5, seq=i) for i in range(40)]
    recs = [merged_first(r) if i < merged else r for i, r in enumerate(recs)]
    run = write_run(tmp_path / f"r{merged}-{cpu:g}-{lag:g}-{watch}", recs)
    lines = [metrics_line("a:1", 0, 5.0, 0.2, kernel=None)]  # before the first connection
    lines += [metrics_line("a:1", t, cpu, lag, kernel=True, watch=watch) for t in range(1, 20)]
    (run / "client_metrics.jsonl").write_bytes(b"".join(lines))
    report = build([run], run, formats=["md", "json"], trim_s=0)
    (health,) = report.summary["client_health"]
    health["warned"] = [w for w in report.warnings if "stage s1" in w]
    health["md"] = (run / "report.md").read_text()
    return health


@pytest.mark.parametrize(
    ("merged", "cpu", "lag", "watch", "ttft", "rest"),
    [
        # The watcher and kernel stamps keep the first token's arrival at 90 % CPU: TTFT stays.
        (0, 90.0, 1.0, True, False, True),
        # Without the watcher a late read merges the first token with the second: 80 % as before.
        (0, 90.0, 1.0, False, True, True),
        # Above 95 % the watcher's thread competes with the loop for the core.
        (0, 97.0, 1.0, True, True, True),
        # Evidence: a busy client (late loop) whose first tokens did get merged, 2 of 40.
        (2, 50.0, 30.0, True, True, False),
        # The same late loop with every first token on its own stamp: nothing to blame.
        (0, 50.0, 30.0, True, False, False),
        # Merged first tokens from a client that was not busy: the host's bursts, not the client.
        (40, 30.0, 1.0, True, False, False),
    ],
)
def test_ttft_is_judged_by_the_watcher_and_merged_first_tokens(
    tmp_path: Path, merged: int, cpu: float, lag: float, watch: bool, ttft: bool, rest: bool
) -> None:
    health = health_of(tmp_path, merged, cpu, lag, watch)
    assert health["first_token_watch"] is watch and health["kernel_stamps"] is True
    assert health["first_two_requests"] == 40 and health["first_two_alike_share"] == merged / 40
    assert (health["ttft_client_limited"], health["client_limited"]) == (ttft, ttft or rest), health
    assert bool(health["warned"]) == (ttft or rest)
    if rest and not ttft:
        assert health["verdict"].startswith("client-limited (CPU): TPOT and E2E not trustworthy")
        assert "TTFT kept" in health["verdict"]
    elif ttft and not rest:
        assert health["verdict"].startswith("client-limited (first token): TTFT not trustworthy")
        assert "5.0 %" in health["verdict"]
    assert health["verdict"] in health["md"] and "First-token watcher" in health["md"]


def test_one_merged_first_token_in_a_busy_stage_is_under_the_limit(tmp_path: Path) -> None:
    # 1 of 150 = 0.7 %, under FIRST_ALIKE_LIMIT (1 %): a stray late read, not a pattern.
    recs = [record(t_s=i * 0.1, seq=i) for i in range(150)]
    recs[0] = merged_first(recs[0])
    run = write_run(tmp_path / "r", recs)
    lines = [metrics_line("a:1", t, 50.0, 30.0, kernel=True, watch=True) for t in range(16)]
    (run / "client_metrics.jsonl").write_bytes(b"".join(lines))
    (health,) = build([run], run, formats=["json"], trim_s=0).summary["client_health"]
    assert health["first_two_alike_share"] == round(1 / 150, 4) and not health["ttft_client_limited"]


def test_all_tokens_in_one_write_are_no_evidence_against_the_client(tmp_path: Path) -> None:
    # A host that sends the whole answer at once (TPOT 0): its first two events must share a stamp.
    recs = [record(t_s=i * 0.5, seq=i, tpot_ms=0.0) for i in range(40)]
    run = write_run(tmp_path / "r", recs)
    lines = [metrics_line("a:1", t, 50.0, 30.0, kernel=True, watch=True) for t in range(20)]
    (run / "client_metrics.jsonl").write_bytes(b"".join(lines))
    (health,) = build([run], run, formats=["json"], trim_s=0).summary["client_health"]
    assert health["first_two_requests"] == 0 and health["first_two_alike_share"] is None
    assert not health["ttft_client_limited"] and health["verdict"].startswith("ok (event loop late")


def first_two_alike(run_dir: Path) -> tuple[int, int]:
    """(requests whose host spread its tokens, those with their first two events on one stamp),
    counted from records.jsonl, apart from the report."""
    pairs = alike = 0
    for line in (run_dir / "records.jsonl").read_bytes().splitlines():
        r = orjson.loads(line)
        offs = r.get("event_offsets_us") or []
        if r.get("warmup") or not r.get("ok") or r.get("ttft_ms") is None or len(offs) < 2:
            continue
        if offs[-1] - offs[0] >= 500 * (len(offs) - 1):
            pairs += 1
            alike += offs[0] == offs[1]
    return pairs, alike


@pytest.mark.slow
def test_a_host_that_sends_its_first_tokens_together_is_not_blamed_on_the_client(tmp_path: Path) -> None:
    # The simulated host with Nagle on and `reuse`: each reused connection's first token waits for the
    # client's delayed ACK (~40 ms) while the host makes a token every 2 ms, so the first tokens leave
    # in one segment: first two events on one stamp whether the client kept up or not. The report
    # names Nagle and leaves these requests out of the evidence against the client. The second run has
    # the watcher switched off, which its samples must say.
    scenario = tmp_path / "nagle.yaml"
    scenario.write_text(
        "name: nagle\n"
        "hosts: [{embedded: sim, options: {ttft_ms: 2, itl_ms: 2, nagle: true}}]\n"
        "request: {max_tokens: 32}\n"
        "load: {users: 2, duration: 4s, stop_timeout: 10s}\n"
    )
    for watch in ("1", "0"):
        proc = harness(
            "run",
            str(scenario),
            "--connection",
            "reuse",
            "--out",
            str(tmp_path),
            "--run-id",
            f"watch{watch}",
            "--no-report",
            env={"HARNESS_FIRST_TOKEN_WATCH": watch},
        )
        assert proc.returncode == 0, proc.stderr
        run = Path(last_line(proc.stdout))
        samples = [orjson.loads(x) for x in (run / "client_metrics.jsonl").read_bytes().splitlines()]
        assert {m["kernel_stamps"] for m in samples} - {None} == {True}
        assert {m["first_token_watch"] for m in samples} - {None} == {watch == "1"}, samples
        summary = build([run], tmp_path / f"report{watch}", formats=["json"], trim_s=0).summary
        (health,) = summary["client_health"]
        assert health["first_token_watch"] is (watch == "1")
        (diag,) = summary["diagnostics"]
        assert "nagle" in {f["pattern"] for f in diag["findings"]}, diag
        pairs, alike = first_two_alike(run)
        # The evidence is there (the host's bursts), counted apart from the report...
        assert pairs > 10 and alike / pairs > 0.5, (pairs, alike)
        # ...and left out: no request counts against the client, whether it was busy or not.
        assert health["first_two_nagle_requests"] == pairs and health["first_two_requests"] == 0
        assert health["first_two_alike_share"] is None
        limit = 95 if watch == "1" else 80
        assert health["ttft_client_limited"] is (health["cpu_percent_max"] > limit), health
