"""`harness run` with a workload, end to end: real `harness run` processes, real Locust master and
workers, the simulated host (`harness serve sim`, embedded) on 127.0.0.1.

- `--max-requests N` is exact over all workers by the host's own count (the sim's final stats line),
  and the same seed gives the same multiset of requests with 1 and with 2 worker processes;
- a 4-turn conversation run: the host received every earlier turn with its own replies (the sim's
  `usage.prompt_tokens` is ceil(characters / 4) of every message it got), records hold session and turn;
- bad flags and bad dataset files: one line naming the flag or the file and line, exit 2, no run.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness_helpers import embedded_sim_stats, harness, last_line, records

from harness.plan import Plan
from harness.workload import Conversation, SessionSpec
from harness.workload_run import workload_from_plan

pytestmark = pytest.mark.slow

SIM = """
hosts:
  - embedded: sim
    options: {ttft_ms: 2, itl_ms: 1}
load: {users: 3, duration: 60s}
warmup: {requests: 0}
"""


def _scenario(tmp_path: Path, extra: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "scenario.yaml"
    path.write_text(SIM + extra)
    return path


def _run(tmp_path: Path, *args: str, extra: str = "") -> tuple[Path, float]:
    t = time.monotonic()
    proc = harness(
        "run", str(_scenario(tmp_path, extra)), "--no-report", "--out", str(tmp_path / "out"), *args
    )
    took = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr
    return Path(last_line(proc.stdout)), took


def _manifest(run_dir: Path) -> dict[str, Any]:
    return orjson.loads((run_dir / "manifest.json").read_bytes())


def _calibration_probes(run_dir: Path) -> int:
    """Requests the harness sent to the host before the load: its calibration probes (the sim
    serves no tokenizer, so lengths are calibrated against it, through the same send path)."""
    wl = _manifest(run_dir)["workload"]
    assert wl["counter"] == "calibrated"
    return len(wl["calibration"]["probes"])


@pytest.mark.parametrize("n", [17])
def test_max_requests_is_exact_and_the_same_requests_for_0_1_and_2_workers(tmp_path: Path, n: int) -> None:
    flags = ("--input-tokens", "40:120", "--output-tokens", "list:4,8,12", "--seed", "7")
    seen = []
    for workers in (0, 1, 2):  # one process; one worker process; two
        run_dir, took = _run(
            tmp_path / f"w{workers}", *flags, "--max-requests", str(n), "--workers", str(workers)
        )
        recs = [r for r in records(run_dir) if not r["warmup"]]
        # The host's own count: every chat request it served, less the calibration probes.
        (stats,) = embedded_sim_stats(run_dir).values()
        assert stats["chat_requests"] - _calibration_probes(run_dir) == n == len(recs)
        assert all(r["ok"] for r in recs)
        if workers == 2:
            assert len({r["worker"] for r in recs}) == 2, "both workers sent their share"
        assert took < 45, f"the run ended at its request limit, not its 60 s duration ({took:.1f} s)"
        man = _manifest(run_dir)
        assert man["state"] == "complete" and man["records"]["locust_counted"] == n
        seen.append(
            Counter((r["prompt_id"], r["requested_input_tokens"], r["requested_output_tokens"]) for r in recs)
        )
        # The first n requests of the seeded sequence, each once.
        assert sorted(p for p, _, _ in seen[-1]) == sorted(f"syn-{i}" for i in range(n))
        assert all(40 <= i <= 120 and o in (4, 8, 12) for _, i, o in seen[-1])
        assert all(r["output_tokens"] == r["requested_output_tokens"] == r["max_tokens"] for r in recs)
    assert seen[0] == seen[1] == seen[2]


def test_a_four_turn_conversation_run_sends_the_history_the_host_answered(tmp_path: Path) -> None:
    extra = """
workload:
  input_tokens: "20:40"
  output_tokens: 6
  conversation: {turns: 4}
  max_requests: 10
"""
    run_dir, _ = _run(tmp_path, "--users", "2", extra=extra)
    recs = [r for r in records(run_dir) if not r["warmup"]]
    (stats,) = embedded_sim_stats(run_dir).values()
    assert stats["chat_requests"] - _calibration_probes(run_dir) == 10 == len(recs)
    by_session: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        assert r["ok"], r["error_detail"]
        by_session.setdefault(r["session_id"], []).append(r)
    # 10 requests: two whole conversations of 4 turns and the third cut to 2 at the limit.
    assert sorted((s, len(v)) for s, v in by_session.items()) == [("s0", 4), ("s1", 4), ("s2", 2)]
    # The planned user turns, rebuilt from the run's plan as any worker does.
    plan = Plan.from_json((run_dir / "plan.json").read_bytes())
    workload = workload_from_plan(plan)
    assert workload is not None
    sessions = {s.session_id: s for s in workload.build([0, 1, 2]) if isinstance(s, SessionSpec)}
    for sid, turns in by_session.items():
        turns.sort(key=lambda r: r["turn"])
        assert [r["turn"] for r in turns] == list(range(1, len(turns) + 1))
        conv = Conversation(sessions[sid])
        for r in turns:
            req = conv.next_request()
            assert (
                req.prompt_id == r["prompt_id"] and req.requested_input_tokens == r["requested_input_tokens"]
            )
            # What the host counted is every message of this turn: the earlier user turns, the
            # host's own earlier replies (from the records), and this turn's user message.
            chars = sum(len(m["content"]) for m in req.messages)
            assert r["input_tokens"] == max(1, (chars + 3) // 4), (sid, r["turn"])
            assert r["text"], "a conversation keeps the reply: it is the next turn's history"
            conv.add_reply(r["text"])
        counts = [r["input_tokens"] for r in turns]
        assert counts == sorted(counts) and len(set(counts)) == len(counts), counts


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--input-tokens", "abc"], "--input-tokens"),
        (["--output-tokens", "normal:5"], "--output-tokens"),
        (["--input-tokens", "200:100"], "--input-tokens"),
        (["--max-requests", "0"], "--max-requests"),
        (["--max-requests", "x"], "--max-requests"),
        (["--max-tokens", "8", "--output-tokens", "8"], "--max-tokens and --output-tokens"),
        (["--dataset", "no-such-file.jsonl"], "--dataset"),
        (["--dataset", "{bad}"], "bad.jsonl:3:"),
        (["--dataset", "{bad}", "--input-tokens", "normal:50,5"], "with a dataset, input_tokens"),
        (["--max-requests", "4", "--workers", "2", "--users", "1"], "--max-requests with --workers 2"),
        (
            ["--max-requests", "4", "--master", "--expect-workers", "3", "--users", "2"],
            "--master --expect-workers 3: needs at least 3 users in every stage (the first stage has 2)",
        ),
    ],
)
def test_bad_workload_flags_are_one_line_naming_the_flag_or_file_line(
    tmp_path: Path, args: list[str], names: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "one"}\n\n{"prompt": \n')
    args = [str(bad) if a == "{bad}" else a for a in args]
    proc = harness("run", str(_scenario(tmp_path)), "--out", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists(), "bad input stops the run before a run folder is made"


def test_a_request_limit_with_workers_needs_their_users_in_every_stage(tmp_path: Path) -> None:
    """A later stage with fewer users than workers would leave a worker's share unsent (the run
    then delivers fewer than N, quietly): refused up front."""
    path = tmp_path / "scenario.yaml"
    path.write_text(
        SIM.replace(
            "load: {users: 3, duration: 60s}",
            "load: {stages: [{duration: 5s, users: 4}, {duration: 60s, users: 1}]}",
        )
        + "workload: {output_tokens: 8, max_requests: 40}\n"
    )
    proc = harness("run", str(path), "--out", str(tmp_path / "out"), "--workers", "2")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs at least 2 users in every stage (stage 2 has 1)" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_a_bad_workload_section_names_the_field(tmp_path: Path) -> None:
    path = _scenario(tmp_path, "\nworkload: {input_tokens: 64, output_tokens: lognormal:-1}\n")
    proc = harness("run", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "workload.output_tokens" in line and str(path) in line, line


def test_an_open_loop_run_ends_at_the_request_limit_with_every_request_answered(tmp_path: Path) -> None:
    """Open loop: a request taken from the pool may wait for its scheduled time; the run must not
    end while one does (it would be cut as `stopped`)."""
    n = 15
    run_dir, took = _run(
        tmp_path,
        *("--rate", "20", "--input-tokens", "50", "--output-tokens", "8", "--max-requests", str(n)),
        *("--workers", "2", "--users", "4", "--arrival", "constant"),
    )
    recs = [r for r in records(run_dir) if not r["warmup"]]
    (stats,) = embedded_sim_stats(run_dir).values()
    assert [r["error"] for r in recs if not r["ok"]] == []
    assert stats["chat_requests"] - _calibration_probes(run_dir) == n == len(recs)
    assert sorted(r["prompt_id"] for r in recs) == sorted(f"syn-{i}" for i in range(n))
    assert took < 45, f"the run ended at its request limit, not its 60 s duration ({took:.1f} s)"


def test_a_dataset_path_in_the_scenario_is_relative_to_the_scenario_file(tmp_path: Path) -> None:
    """Run from another folder: the scenario's `workload.dataset` is found beside the scenario."""
    sub = tmp_path / "scenarios"
    sub.mkdir()
    (sub / "data.jsonl").write_text(
        "".join(
            orjson.dumps({"id": f"d{i}", "prompt": f"question number {i}"}).decode() + "\n" for i in range(4)
        )
    )
    path = _scenario(sub, "\nworkload: {dataset: data.jsonl, output_tokens: 5, max_requests: 6}\n")
    proc = harness("run", str(path.relative_to(tmp_path)), "--no-report", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    recs = [r for r in records(tmp_path / last_line(proc.stdout)) if not r["warmup"]]
    ids = Counter(r["prompt_id"] for r in recs)
    # 6 requests over 4 entries: each entry once before any twice.
    assert len(recs) == 6 and set(ids) == {"d0", "d1", "d2", "d3"} and sorted(ids.values()) == [1, 1, 2, 2]
    (stats,) = embedded_sim_stats(tmp_path / last_line(proc.stdout)).values()
    assert stats["chat_requests"] == 6, "no calibration: a dataset without a length range needs none"


def test_conversations_cut_by_a_smaller_stage_go_on_with_another_user(tmp_path: Path) -> None:
    """Stage 1 runs 4 users, stage 2 one: the 3 users stopped at the change leave their
    conversations (a turn cut mid-stream is a `stopped` record, sent) to the user that remains, so
    every session's turns are 1..k once each and the request limit is still exact."""
    extra = """
workload:
  input_tokens: "20:40"
  output_tokens: 10
  conversation: {turns: 4}
  max_requests: 40
"""
    path = tmp_path / "scenario.yaml"
    path.write_text(
        SIM.replace("itl_ms: 1", "itl_ms: 20").replace(
            "load: {users: 3, duration: 60s}",
            "load: {stages: [{duration: 1.5s, users: 4}, {duration: 60s, users: 1}]}",
        )
        + extra
    )
    proc = harness("run", str(path), "--no-report", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    recs = [r for r in records(run_dir) if not r["warmup"]]
    assert len(recs) == 40
    assert any(r["error"] == "stopped" for r in recs), "the stage change cut streams (the case under test)"
    assert {r["stage"] for r in recs} == {"stage-1", "stage-2"}
    turns: dict[str, list[int]] = {}
    for r in recs:
        turns.setdefault(r["session_id"], []).append(r["turn"])
    sessions = sorted(turns, key=lambda s: int(s[1:]))
    assert sessions == [f"s{i}" for i in range(len(sessions))]
    for sid in sessions:
        full = 4 if sid != sessions[-1] else 40 - 4 * (len(sessions) - 1)
        assert sorted(turns[sid]) == list(range(1, full + 1)), (sid, turns[sid])
    (stats,) = embedded_sim_stats(run_dir).values()
    answered = stats["chat_requests"] - _calibration_probes(run_dir)
    # The host's own count: each record, the `stopped` ones too, is a request it received. A stop
    # lands only where a user yields: while connecting (then the request never left), or after the
    # request was written. Every user connected on its first request, 1.5 s before the stage change.
    assert answered == 40


def test_a_request_limit_counts_first_attempts_when_429s_are_retried(tmp_path: Path) -> None:
    """A retried attempt is a record of its own but the same request from the pool: the limit
    holds N first attempts (the host's own count) and the run exits 0."""
    n = 20
    path = tmp_path / "scenario.yaml"
    path.write_text(
        SIM.replace("{ttft_ms: 2, itl_ms: 1}", "{ttft_ms: 2, itl_ms: 1, fault_429: 0.3, retry_after_s: 0}")
        + "retry: {on_429: retry, max_retries: 20}\n"
        + f"workload: {{output_tokens: 8, max_requests: {n}}}\n"
    )
    proc = harness("run", str(path), "--no-report", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = Path(last_line(proc.stdout))
    recs = [r for r in records(run_dir) if not r["warmup"]]
    retries = [r for r in recs if "retry_of" in r["extra"]]
    assert retries, "some requests were retried (the case under test)"
    (stats,) = embedded_sim_stats(run_dir).values()
    # The host's count: every chat request it received less those it answered 429, less the
    # calibration probes (none: no input length range) = the requests it served, once each.
    assert stats["chat_requests"] - stats["faults"]["429"] == n
    assert len(recs) - len(retries) == n and sum(r["ok"] for r in recs) == n
    assert _manifest(run_dir)["state"] == "complete"


def test_a_limit_run_that_reaches_its_duration_short_of_the_limit_says_so(tmp_path: Path) -> None:
    """The duration is the limit's other bound: no failure (exit 0), but a problem line and the
    manifest say how many of the N requests the run delivered (the host's own count)."""
    path = tmp_path / "scenario.yaml"
    path.write_text(
        SIM.replace("itl_ms: 1", "itl_ms: 50").replace("duration: 60s", "duration: 2s")
        + "workload: {output_tokens: 20, max_requests: 1000}\n"
    )
    proc = harness("run", str(path), "--no-report", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    (stats,) = embedded_sim_stats(run_dir).values()
    sent = stats["chat_requests"]
    assert 0 < sent < 1000
    line = f"the planned duration ended with {sent} of the 1000 requests asked"
    assert line in proc.stderr and line in _manifest(run_dir)["problems"], proc.stderr
