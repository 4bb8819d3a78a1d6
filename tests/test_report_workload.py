"""The report's workload section (`harness.report.workload`): latency by input and output length
bucket, TTFT by turn, the shared-prefix split and requested against received, checked against numpy
over the raw records and, for short outputs, against the simulated host's own token count; a run
without workload keys reports exactly as before."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from harness_helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, harness, sim_host, sim_stats
from recordgen import record, write_run

from harness.client import Connection
from harness.records import Record
from harness.report import build
from harness.report.workload import bucket_edges, bucket_of
from harness.send import Request, Sender

HOSTS = ("http://10.0.0.1:5273/v1", "http://10.0.0.2:5273/v1")


def wrec(
    *,
    input_tokens: int | None = 20,
    requested_input: int | None = None,
    requested_output: int | None = None,
    turn: int | None = None,
    session_id: str | None = None,
    prefix: int = 0,
    finish: str | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """A `recordgen` record with the workload keys set."""
    r = record(**kw)
    r |= {
        "session_id": session_id,
        "turn": turn,
        "requested_input_tokens": requested_input,
        "requested_output_tokens": requested_output,
        "shared_prefix_tokens": prefix,
    }
    if r["ok"]:
        r["input_tokens"] = input_tokens
    if finish is not None:
        r["finish_reason"] = finish
    return r


def pow2_label(x: int) -> str:
    """The powers-of-two bucket of x, written independently of the module: [2^k, 2^(k+1))."""
    if x == 0:
        return "0"
    lo = 1 << (x.bit_length() - 1)
    return f"{lo}" if lo == 1 else f"{lo}–{2 * lo - 1}"


def mixed_run(run_dir: Path, seed: int = 7) -> tuple[Path, list[dict[str, Any]]]:
    """Two hosts; random input lengths (1..3000 tokens), output lengths (2..200), 4-turn sessions, a
    third of requests with a 64-token prefix; some streams cut midway (failed, with timings of their
    own) and warm-up records: both left out of every latency figure."""
    rng = np.random.default_rng(seed)
    recs = []
    for h, host in enumerate(HOSTS):
        for i in range(240):
            n_in = int(rng.integers(1, 3000))
            n_out = int(rng.integers(2, 200))
            turn = i % 4 + 1
            prefix = 64 if rng.random() < 1 / 3 else 0
            ttft = 30.0 + (0.05 + 0.03 * h) * n_in + 4 * turn - 8 * (prefix > 0) + float(rng.normal(0, 3))
            ok = rng.random() > 0.05
            recs.append(
                wrec(
                    t_s=i * 0.05,
                    host=host,
                    ttft_ms=round(ttft, 3),
                    tokens=n_out if ok else n_out // 2,
                    tpot_ms=round(4.0 + 2 * h + n_out / 100, 3),
                    ok=ok,
                    error=None if ok else "stream_cut",
                    warmup=i < 8,
                    input_tokens=n_in,
                    requested_input=n_in,
                    requested_output=n_out,
                    turn=turn,
                    session_id=f"s{h}-{i // 4}",
                    prefix=prefix,
                    seq=i,
                )
            )
    return write_run(run_dir, recs), recs


def _stats(x: list[float]) -> dict[str, Any]:
    v = np.asarray(x, dtype=np.float64)
    return {"count": v.size, "p50": np.percentile(v, 50), "p95": np.percentile(v, 95), "mean": v.mean()}


def _check(row: dict[str, Any], name: str, values: list[float]) -> None:
    want = _stats(values)
    assert row[f"{name}_count"] == want["count"], (row["key"], name)
    for s in ("p50", "p95", "mean"):
        assert row[f"{name}_{s}"] == pytest.approx(want[s], rel=1e-12, abs=1e-9), (row["key"], name, s)


def test_length_buckets_turns_and_prefix_match_numpy_over_the_raw_records(tmp_path: Path) -> None:
    run, recs = mixed_run(tmp_path / "run")
    work = build([run], tmp_path / "out", formats=["json"], trim_s=0).summary["workload"]
    live = [r for r in recs if not r["warmup"]]
    ok = [r for r in live if r["ok"]]
    # Lengths spread over 1..3000 fill more than 4 powers of two: the coarsest resolution is kept.
    assert work["input_buckets"]["steps_per_doubling"] == 1
    assert work["output_buckets"]["steps_per_doubling"] == 1

    def expect(split: str, label_of: Any) -> dict[tuple[str, str], list[dict[str, Any]]]:
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in ok:
            out.setdefault((r["host"], label_of(r)), []).append(r)
        return out

    by_in = expect("input_tokens", lambda r: pow2_label(r["input_tokens"]))
    rows = work["by_input_tokens"]
    assert {(r["key"]["host"], r["key"]["input_tokens"]) for r in rows} == set(by_in)
    assert len(rows) == len(by_in)
    for row in rows:
        group = by_in[(row["key"]["host"], row["key"]["input_tokens"])]
        _check(row, "ttft_ms", [r["ttft_ms"] for r in group])
        assert row["input_tokens_mean"] == pytest.approx(np.mean([r["input_tokens"] for r in group]))
    # Prefill grows with the prompt: the last bucket's TTFT is above the first one's on each host.
    for host in HOSTS:
        mine = [r for r in rows if r["key"]["host"] == host]
        assert mine[-1]["ttft_ms_p50"] > mine[0]["ttft_ms_p50"]

    by_out = expect("output_tokens", lambda r: pow2_label(r["output_tokens"]))
    rows = work["by_output_tokens"]
    assert {(r["key"]["host"], r["key"]["output_tokens"]) for r in rows} == set(by_out)
    for row in rows:
        group = by_out[(row["key"]["host"], row["key"]["output_tokens"])]
        _check(row, "e2e_ms", [r["e2e_ms"] for r in group])
        _check(row, "tpot_ms", [r["tpot_ms"] for r in group])

    by_turn = expect("turn", lambda r: str(r["turn"]))
    rows = work["by_turn"]
    assert [(r["key"]["host"], r["turn"]) for r in rows] == [(h, t) for h in HOSTS for t in (1, 2, 3, 4)]
    for row in rows:
        _check(row, "ttft_ms", [r["ttft_ms"] for r in by_turn[(row["key"]["host"], row["key"]["turn"])]])

    prefix = work["shared_prefix"]
    with_prefix = [r for r in live if r["shared_prefix_tokens"] > 0]
    assert (prefix["requests"], prefix["with_prefix"]) == (len(live), len(with_prefix))
    assert prefix["share"] == pytest.approx(len(with_prefix) / len(live))
    for row in prefix["rows"]:
        host, side = row["key"]["host"], row["key"]["prefix"]
        part = [r for r in live if r["host"] == host and (r["shared_prefix_tokens"] > 0) == (side == "with")]
        assert row["requests"] == len(part)
        assert row["share"] == pytest.approx(len(part) / sum(r["host"] == host for r in live))
        _check(row, "ttft_ms", [r["ttft_ms"] for r in part if r["ok"]])
    assert len(prefix["rows"]) == 4


def test_short_outputs_are_successful_stops_below_the_requested_length(tmp_path: Path) -> None:
    cases = [
        (dict(tokens=4, requested_output=8, finish="stop"), True),
        (dict(tokens=8, requested_output=8, finish="stop"), False),  # exactly the length
        (dict(tokens=4, requested_output=8, finish="length"), False),  # the host's own cap
        (dict(tokens=4, requested_output=None, finish="stop"), False),  # nothing asked
        (dict(tokens=4, requested_output=8, ok=False, error="stream_cut"), False),  # failed
        (dict(tokens=9, requested_output=8, finish="stop"), False),  # longer than asked
    ]
    recs = [wrec(t_s=i * 0.1, **kw) for i, (kw, _) in enumerate(cases * 3)]
    work = build([write_run(tmp_path / "run", recs)], tmp_path / "out", formats=["json"], trim_s=0).summary[
        "workload"
    ]
    overall = work["requested_vs_received"][-1]
    assert overall["short_outputs"] == 3 * sum(short for _, short in cases)
    assert overall["short_output_tokens_missing"] == 3 * 4
    assert overall["output_requested"] == 3 * 4  # successful with a requested length


def test_bucket_edges_hold_at_the_edges() -> None:
    # Powers of two: [2^k, 2^(k+1)), 0 alone.
    edges, steps = bucket_edges([0, 1, 2, 3, 4, 7, 8, 1000])
    assert steps == 1
    assert edges.tolist()[:6] == [0, 1, 2, 4, 8, 16] and edges[-1] == 1024
    values = [0, 1, 2, 3, 4, 7, 8, 15, 16, 1000, 1023]
    assert [int(edges[b]) for b in bucket_of(values, edges)] == [0, 1, 2, 2, 4, 4, 8, 8, 16, 512, 512]
    # Four lengths in three powers of two: split into 2 steps per doubling (edges 2^(j/2), rounded).
    edges, steps = bucket_edges([127, 128, 255, 256])
    assert steps == 2
    assert {91, 128, 181, 256, 362, 512} <= set(edges.tolist())
    got = [
        (int(edges[b]), int(edges[b + 1])) for b in bucket_of([90, 91, 127, 128, 180, 181, 255, 256], edges)
    ]
    assert got == [(64, 91), (91, 128), (91, 128), (128, 181), (128, 181), (181, 256), (181, 256), (256, 362)]
    # One length: one bucket, powers of two.
    edges, steps = bucket_edges([100] * 5)
    assert steps == 1 and [int(edges[b]) for b in bucket_of([100], edges)] == [64]


def test_records_on_the_edges_land_in_the_right_rows(tmp_path: Path) -> None:
    lengths = [31, 32, 63, 64, 127, 128]
    recs = [
        wrec(t_s=i * 0.1, input_tokens=n, requested_input=n, ttft_ms=float(n), tokens=n // 8 + 2)
        for i, n in enumerate(lengths)
    ]
    work = build([write_run(tmp_path / "run", recs)], tmp_path / "out", formats=["json"], trim_s=0).summary[
        "workload"
    ]
    assert work["input_buckets"]["steps_per_doubling"] == 1
    rows = {r["key"]["input_tokens"]: r for r in work["by_input_tokens"]}
    assert {k: r["requests"] for k, r in rows.items()} == {"16–31": 1, "32–63": 2, "64–127": 2, "128–255": 1}
    assert (rows["32–63"]["bucket_lo"], rows["32–63"]["bucket_hi"]) == (32, 64)
    assert rows["64–127"]["ttft_ms_p50"] == pytest.approx((64 + 127) / 2)


def offset_run(run_dir: Path, workload: dict[str, Any] | None) -> tuple[Path, int]:
    """Requested input lengths with a template offset of 7 (9 with the 50-token prefix); 3 first
    requests off by one; later turns (history) and requests without a requested length never checked."""
    recs = []
    off = 0
    for i in range(40):
        n = 50 + i
        prefix = 50 if i % 4 == 0 else 0
        got = n + prefix + (9 if prefix else 7)
        if i in (5, 17, 30):
            got += 1
            off += 1
        recs.append(wrec(t_s=i * 0.05, input_tokens=got, requested_input=n, prefix=prefix, turn=1))
    recs.append(wrec(t_s=2.1, input_tokens=500, requested_input=50, turn=2))  # carries history
    recs.append(wrec(t_s=2.2, input_tokens=5, requested_input=None, requested_output=8))
    run = write_run(run_dir, recs)
    if workload is not None:
        manifest = orjson.loads((run / "manifest.json").read_bytes())
        (run / "manifest.json").write_bytes(orjson.dumps(manifest | {"workload": workload}))
    return run, off


@pytest.mark.parametrize(
    ("workload", "expected_source"),
    [
        ({"template_offset": 7, "template_offset_with_prefix": 9, "count_template": False}, "manifest"),
        (None, "inferred: the most common difference"),
        ({"source": "synthetic", "template_offset": None}, "inferred: the most common difference"),
    ],
)
def test_input_mismatch_against_the_template_offset(
    tmp_path: Path, workload: dict[str, Any] | None, expected_source: str
) -> None:
    run, off = offset_run(tmp_path / "run", workload)
    work = build([run], tmp_path / "out", formats=["json"], trim_s=0).summary["workload"]
    overall = work["requested_vs_received"][-1]
    assert overall["key"] == "all"
    assert (overall["input_checked"], overall["input_mismatch"]) == (40, off)
    offsets = {o["prefix"]: (o["offset"], o["source"]) for o in work["input_offsets"]}
    assert offsets == {False: (7, expected_source), True: (9, expected_source)}


def test_the_manifest_offset_is_the_one_used(tmp_path: Path) -> None:
    # A manifest stating offset 8: the requests without prefix are off, but the three made one more
    # than 7 (none of them prefixed). count_template: the requested length already holds the user
    # template's tokens, so expected = requested (+ prefix + 9 - 7): every record here is off.
    run, _ = offset_run(tmp_path / "run", {"template_offset": 8, "template_offset_with_prefix": 9})
    work = build([run], tmp_path / "out", formats=["json"], trim_s=0).summary["workload"]
    no_prefix = sum(1 for i in range(40) if i % 4)
    assert work["requested_vs_received"][-1]["input_mismatch"] == no_prefix - 3
    run, _ = offset_run(
        tmp_path / "run2", {"template_offset": 7, "template_offset_with_prefix": 9, "count_template": True}
    )
    work = build([run], tmp_path / "out2", formats=["json"], trim_s=0).summary["workload"]
    offsets = {o["prefix"]: o["offset"] for o in work["input_offsets"]}
    assert offsets == {False: 0, True: 2}
    assert work["requested_vs_received"][-1]["input_mismatch"] == 40


def _send_all(base_url: str, model: str, plan: list[tuple[str, int]]) -> list[Record]:
    out: list[Record] = []
    sender = Sender("run-short", out.append, worker="w:1")
    conn = Connection(base_url)
    try:
        for i, (prompt, n) in enumerate(plan):
            sender.send(
                conn,
                Request(
                    host=base_url,
                    model=model,
                    prompt_id=f"p{i}",
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=n,
                    stage="s1",
                    users=1,
                    requested_input_tokens=len(prompt.split()),
                    requested_output_tokens=n,
                ),
            )
    finally:
        conn.close()
    return out


def test_short_outputs_against_the_hosts_own_token_count(tmp_path: Path) -> None:
    """The sim answers prompts holding SHORT with 5 words and finish_reason stop: asked for 12,
    that is a short output; asked for 5, it is not (stop at exactly the length)."""
    answers = tmp_path / "answers.json"
    answers.write_bytes(orjson.dumps({"SHORT": "one two three four five"}))
    plan = [("SHORT please" if i % 3 == 0 else "tell me more", 12) for i in range(24)]
    plan += [("SHORT and exact", 5)] * 4
    with sim_host("--ttft-ms", "5", "--itl-ms", "1", "--answers-file", str(answers)) as sim:
        recs = _send_all(sim.base_url, sim.models[0], plan)
        stats = sim_stats(sim.base_url)
    run = write_run(tmp_path / "run", [r.to_dict() for r in recs], run_id="run-short")
    report = build([run], run, formats=["md", "json", "html", "csv"], trim_s=0)
    overall = report.summary["workload"]["requested_vs_received"][-1]
    # The host's own count: every token it sent; short ones are what was asked and not sent.
    asked = sum(n for _, n in plan)
    assert stats["chat_requests"] == len(plan)
    assert overall["short_output_tokens_missing"] == asked - stats["tokens"] == 8 * 7
    assert overall["short_outputs"] == sum(1 for p, n in plan if p.startswith("SHORT") and n > 5) == 8
    assert overall["output_requested"] == len(plan)
    assert overall["short_output_share"] == pytest.approx(8 / len(plan))
    # Flagged everywhere people read: summary warnings, report.md, report.html, the console, a CSV.
    assert any("8 of 28 successful requests" in w and "short" in w for w in report.warnings)
    md = (run / "report.md").read_text()
    assert "## Requested against received tokens" in md and "Warning: 8 of 28" in md
    assert re.search(r"\| all \|.*\| 8 \| 28\.57 \|", md)
    html = (run / "report.html").read_text()
    assert 'id="requested_vs_received"' in html and "Warning: 8 of 28" in html
    assert "workload: 8 short output(s) of 28" in report.console_table()
    assert (run / "requested_vs_received.csv").read_text().splitlines()[-1].split(",")[-2] == "8"


def test_a_run_without_workload_keys_reports_as_before(tmp_path: Path) -> None:
    """Old records (no workload keys) and records with them all null: no workload section, the
    same files, tables and figures as ever."""
    old = [record(t_s=i * 0.1, ttft_ms=50.0 + i, tokens=5 + i % 7) for i in range(30)]
    new = [
        r
        | {
            "session_id": None,
            "turn": None,
            "requested_input_tokens": None,
            "requested_output_tokens": None,
            "shared_prefix_tokens": 0,
        }
        for r in old
    ]
    texts = []
    for name, recs in (("old", old), ("new", new)):
        run = write_run(tmp_path / name, recs)
        report = build([run], run, formats=["md", "csv", "html", "json"])
        assert "workload" not in report.summary
        assert not report.warnings
        assert "workload:" not in report.console_table()
        names = sorted(p.name for p in run.iterdir())
        html = (run / "report.html").read_text()
        assert html.count("<svg") == 7 and "by-input-tokens" not in html
        md = re.sub(r"Generated:\*\* \S+", "", (run / "report.md").read_text())
        texts.append((names, md))
    assert texts[0] == texts[1]
    assert "requested_vs_received.csv" not in texts[0][0] and "ttft.csv" in texts[0][0]


def test_by_turn_and_session_from_the_command_line(tmp_path: Path) -> None:
    run, recs = mixed_run(tmp_path / "run")
    out = harness("report", str(run), "--by", "turn", "--trim-s", "0", "--format", "json,md")
    assert out.returncode == 0, out.stderr
    summary = orjson.loads((run / "summary.json").read_bytes())
    assert [g["key"]["turn"] for g in summary["groups"]] == ["1", "2", "3", "4"]
    for g in summary["groups"]:
        v = [r["ttft_ms"] for r in recs if r["ok"] and not r["warmup"] and str(r["turn"]) == g["key"]["turn"]]
        assert g["ttft_ms_p50"] == pytest.approx(np.percentile(v, 50), rel=1e-12)
        assert g["ttft_ms_p95"] == pytest.approx(np.percentile(v, 95), rel=1e-12)
    # Workload rows follow the report's grouping: by turn, then by bucket.
    assert {r["key"]["turn"] for r in summary["workload"]["by_input_tokens"]} == {"1", "2", "3", "4"}
    assert "| Turn |" in (run / "report.md").read_text()
    out = harness("report", str(run), "--by", "session_id", "--trim-s", "0", "--format", "json")
    assert out.returncode == 0, out.stderr
    summary = orjson.loads((run / "summary.json").read_bytes())
    assert len(summary["groups"]) == len({r["session_id"] for r in recs if not r["warmup"]})


@pytest.mark.browser
def test_workload_plots_render_with_a_size(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs Playwright for Python (pip install playwright)"
    )
    run, _ = mixed_run(tmp_path / "run")
    build([run], run, formats=["html"])
    wanted = ("ttft-by-input-tokens", "e2e-by-output-tokens", "tpot-by-output-tokens", "ttft-by-turn")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((run / "report.html").as_uri(), wait_until="load")
            charts = page.eval_on_selector_all(
                "figure",
                """els => els.map(f => {
                    const svg = f.querySelector('svg.chart');
                    const box = svg.getBoundingClientRect();
                    return {id: f.id, width: box.width, height: box.height,
                            marks: svg.querySelectorAll('polyline').length,
                            points: svg.querySelectorAll('circle').length};
                })""",
            )
            ARTIFACTS.mkdir(exist_ok=True)
            page.locator("#ttft-by-input-tokens").screenshot(path=str(ARTIFACTS / "report-ttft-by-input.png"))
        finally:
            browser.close()
    found = {c["id"]: c for c in charts}
    assert len(charts) == 7 + len(wanted)
    for fid in wanted:
        c = found[fid]
        assert c["width"] > 100 and c["height"] > 100, c
        # Two hosts: a p50 and a p95 line each, a marker per bucket (or turn) on each line.
        assert c["marks"] == 4, c
        assert c["points"] >= 4 * 2, c
    assert found["ttft-by-turn"]["points"] == 2 * 2 * 4


def test_conversations_against_the_sim_report_ttft_by_turn(tmp_path: Path) -> None:
    """Sessions of 4 turns, each request carrying the earlier turns and the host's actual replies:
    the report's rows by turn count what the host received, and prompts grow with the history."""
    sessions, turns, sent_chars = 6, 4, {}
    recs: list[Record] = []
    with sim_host("--ttft-ms", "20", "--itl-ms", "1") as sim:
        sender = Sender("run-conv", recs.append, worker="w:1")
        conn = Connection(sim.base_url)
        try:
            for s in range(sessions):
                history: list[dict[str, Any]] = []
                for t in range(1, turns + 1):
                    history.append(
                        {"role": "user", "content": f"session {s} question {t} " + "word " * (3 * s)}
                    )
                    sent_chars.setdefault(t, []).append(sum(len(m["content"]) for m in history))
                    rec = sender.send(
                        conn,
                        Request(
                            host=sim.base_url,
                            model=sim.models[0],
                            prompt_id=f"s{s}-t{t}",
                            messages=list(history),
                            max_tokens=8,
                            keep_text=True,
                            stage="s1",
                            users=1,
                            session_id=f"s{s}",
                            turn=t,
                            requested_output_tokens=8,
                        ),
                    )
                    assert rec.ok and rec.text
                    history.append({"role": "assistant", "content": rec.text})
        finally:
            conn.close()
        stats = sim_stats(sim.base_url)
    run = write_run(tmp_path / "run", [r.to_dict() for r in recs], run_id="run-conv")
    report = build([run], run, formats=["md", "json"], trim_s=0)
    rows = report.summary["workload"]["by_turn"]
    assert [r["turn"] for r in rows] == [1, 2, 3, 4]
    assert sum(r["requests"] for r in rows) == stats["chat_requests"] == sessions * turns
    for r in rows:
        assert r["ttft_ms_count"] == sessions
        # The sim's TTFT is 20 ms whatever the prompt: every turn's p50 a little above (two-sided).
        assert 20.0 <= r["ttft_ms_p50"] < 20.0 + 200.0
        # The host's own prompt count (usage: (chars + 3) // 4 of every message) per turn.
        expected = np.mean([(n + 3) // 4 for n in sent_chars[r["turn"]]])
        assert r["input_tokens_mean"] == pytest.approx(expected)
    means = [r["input_tokens_mean"] for r in rows]
    assert means == sorted(means) and means[0] < means[-1]
    assert "## TTFT by conversation turn" in (run / "report.md").read_text()
    assert "TTFT p50 by turn (ms): 1: " in report.console_table()
