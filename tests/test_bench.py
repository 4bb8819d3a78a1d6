"""`harness bench`: the model selection table, its quality scores, energy, and the workshop's variables.

Real processes throughout where behaviour lives on the wire: simulated hosts with known timing and
known answers (two model ids of different speeds, a judge whose verdict is fixed), and the embedded
Foundry Local host with the shipped tiny model (plus the locally built 32 M `small-chat` model when
this machine has it: it needs torch to build, so CI cannot make it; that test skips, saying so).
"""

from __future__ import annotations

import csv
import math
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness_helpers import REPO, harness, last_line, records, sim_host, sim_stats

from harness.benchconfig import DEFAULT_BENCH_PROMPTS, alias_of, load_models_file, split_variant
from harness.cli import build_parser
from harness.commands.bench import config_from_args
from harness.discovery import find_model_folder
from harness.errors import InputError
from harness.flavours import shipped_model_dir
from harness.metrics import energy_per_1k_tokens
from harness.quality import ScoreSummary, parse_verdict, read_judge, read_scoring_csv
from harness.records import REQUIRED_KEYS
from harness.servers.ready import ChildHost, start_child_host

FAST, SLOW = "fast-chat-generic-cpu:1", "slow-chat-generic-cpu:1"
SMALL_CHAT = Path.home() / ".cache" / "llm-load-harness" / "models" / "small-chat"
JUDGE_VERDICT = '{"score": 4, "reason": "covers both aspects"}'


def bench_json(run_dir: Path) -> dict[str, Any]:
    return dict(orjson.loads((run_dir / "bench.json").read_bytes()))


def rows_of(run_dir: Path, model: str) -> list[dict[str, Any]]:
    return [r for r in bench_json(run_dir)["rows"] if r["model"] == model or r["asked"] == model]


def no_discovery_env(tmp_path: Path) -> dict[str, str]:
    """No Foundry Local to find: no endpoint variable, no `foundry` CLI on PATH."""
    return {"FOUNDRY_LOCAL_ENDPOINT": "", "PATH": str(Path(shutil.which("python") or "python").parent)}


# ---------------------------------------------------------------------------------------------
# Pure pieces
# ---------------------------------------------------------------------------------------------


def test_energy_per_1k_tokens_arithmetic() -> None:
    # 30 W at 150 output tokens/s: 30 * 1000 / 150 = 200 J per 1,000 tokens = 0.0556 Wh.
    j, wh, cost = energy_per_1k_tokens(30.0, 150.0, 0.30)
    assert j == pytest.approx(200.0)
    assert wh == pytest.approx(200.0 / 3600)
    assert cost == pytest.approx(200.0 / 3600 / 1000 * 0.30)
    assert energy_per_1k_tokens(30.0, 150.0) == (pytest.approx(200.0), pytest.approx(200 / 3600), None)
    assert energy_per_1k_tokens(None, 150.0) == (None, None, None)
    assert energy_per_1k_tokens(30.0, 0.0) == (None, None, None)
    assert energy_per_1k_tokens(30.0, None) == (None, None, None)
    assert energy_per_1k_tokens(30.0, math.inf) == (None, None, None)


@pytest.mark.parametrize(
    ("model_id", "alias", "ep"),
    [
        ("qwen2.5-0.5b-instruct-generic-cpu:4", "qwen2.5-0.5b", "generic-cpu"),
        ("qwen2.5-0.5b-instruct-cuda-gpu:3", "qwen2.5-0.5b", "cuda-gpu"),
        ("phi-4-mini-instruct-qnn-npu:1", "phi-4-mini", "qnn-npu"),
        ("tiny-chat-generic-cpu:1", "tiny-chat", "generic-cpu"),
        ("llama3:8b", "llama3:8b", None),
        ("gpt-x", "gpt-x", None),
    ],
)
def test_alias_and_execution_provider_from_variant_ids(model_id: str, alias: str, ep: str | None) -> None:
    assert split_variant(model_id) == (alias, ep)
    assert alias_of(model_id, model_id) == alias


def test_alias_asked_wins_over_the_derived_one() -> None:
    assert alias_of("qwen", "qwen2.5-0.5b-instruct-generic-cpu:4") == "qwen"
    assert alias_of("m-cuda-gpu:1", "m-cuda-gpu:1") == "m"


@pytest.mark.parametrize(
    ("text", "score"),
    [
        (JUDGE_VERDICT, 4.0),
        ('Sure!\n```json\n{"score": 5, "reason": "all aspects"}\n```', 5.0),
        ('{"score": "3", "reason": "some"}', 3.0),
        ("I would give it a score: 2 because it misses most aspects.", 2.0),
        ('{"score": 9}', None),
        ('{"score": true}', None),
        ("a fine answer", None),
        ("", None),
        (None, None),
    ],
)
def test_judge_verdicts_parse_or_are_counted(text: str | None, score: float | None) -> None:
    assert parse_verdict(text)[0] == score


def test_models_file_shapes_and_errors(tmp_path: Path) -> None:
    shipped = load_models_file(REPO / "scenarios" / "models.json")
    assert shipped["qwen2.5-0.5b"].license == "Apache-2.0"
    assert shipped["phi-4-mini"].license == "MIT"
    assert shipped["tiny-chat"].size_mb is not None
    listed = tmp_path / "list.json"
    listed.write_text('["a", "b"]')
    assert list(load_models_file(listed)) == ["a", "b"]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"models": {"a": {"capabilities": ["chat"], "size_mb": 12}}}')
    assert load_models_file(wrapped)["a"].size_mb == 12
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": {"capabilites": ["chat"]}}')
    with pytest.raises(InputError, match=r"bad.json: a.capabilites"):
        load_models_file(bad)


def test_default_prompts_are_the_shipped_workshop_set() -> None:
    shipped = orjson.loads((REPO / "scenarios" / "bench-prompts.json").read_bytes())
    assert shipped == DEFAULT_BENCH_PROMPTS
    assert all(p["expected_aspects"] for p in shipped)


def test_scoring_csv_read_back_tolerates_spreadsheets(tmp_path: Path) -> None:
    path = tmp_path / "scoring.csv"
    path.write_text(
        "\ufeffrun_id;model;host;prompt_id;round;answer;expected_aspects;score;comment\n"
        "r;m1;h;p1;1;yes;a | b;4;\n"
        "r;m1;h;p2;1;no;a;2,5;half marks\n"
        "r;m1;h;p3;1;maybe;a;;\n"
        "r;m2;h;p1;1;x;a;seven;\n"
        "r;m2;h;p2;1;y;a;6;\n",
        encoding="utf-8",
    )
    scores, problems = read_scoring_csv(path)
    assert scores[("h", "m1")].scores == [4.0, 2.5]
    assert scores[("h", "m1")].label() == "3.25 (n=2)"
    assert ("h", "m2") not in scores
    assert len(problems) == 2 and "not a number" in problems[0] and "outside 1-5" in problems[1]


def test_score_summary_label() -> None:
    assert ScoreSummary().label() == "—"
    assert ScoreSummary([4.0, 5.0], unparsed=1).label() == "4.50 (n=2, 1 unparsed)"
    assert ScoreSummary([4.0, 5.0]).sd == pytest.approx(math.sqrt(0.5))


def test_disk_footprint_finds_the_model_folder_in_a_foundry_cache(tmp_path: Path) -> None:
    variant = tmp_path / "Microsoft" / "qwen2.5-0.5b-instruct-generic-cpu-4" / "v4"
    variant.mkdir(parents=True)
    (variant / "genai_config.json").write_text("{}")
    (tmp_path / "Microsoft" / "phi-4-mini-instruct-generic-cpu").mkdir()  # no model inside: not it
    found = find_model_folder(tmp_path, "qwen2.5-0.5b-instruct-generic-cpu:4")
    assert found == variant.parent
    assert find_model_folder(tmp_path, "phi-4-mini-instruct-generic-cpu:1") is None
    assert find_model_folder(tmp_path / "missing", "x:1") is None


# ---------------------------------------------------------------------------------------------
# Options and the workshop's environment variables
# ---------------------------------------------------------------------------------------------


def _config(argv: list[str], env: dict[str, str]) -> Any:
    args = build_parser().parse_args(["bench", *argv])
    return config_from_args(args, env)


def test_workshop_environment_variables_fill_missing_options() -> None:
    env = {
        "BENCH_MODELS": "qwen2.5-0.5b, mistral-7b",
        "BENCH_ROUNDS": "5",
        "BENCH_PROMPT": "Explain RAG in one line.",
        "BENCH_STREAM": "0",
        "BENCH_MAX_TOKENS": "64",
        "BENCH_TEMPERATURE": "0.2",
    }
    cfg = _config([], env)
    assert cfg.models == ["qwen2.5-0.5b", "mistral-7b"]
    assert cfg.rounds == 5 and cfg.max_tokens == 64 and cfg.temperature == 0.2
    assert cfg.streams == [False]
    assert [(p.id, p.text) for p in cfg.prompts] == [("bench-prompt", "Explain RAG in one line.")]
    assert set(cfg.from_env) == set(env)
    assert _config([], {"BENCH_STREAM": "1"}).streams == [True]


def test_options_win_over_environment_variables() -> None:
    env = {"BENCH_MODELS": "a", "BENCH_ROUNDS": "5", "BENCH_STREAM": "0", "BENCH_MAX_TOKENS": "64"}
    cfg = _config(["--model", "b", "--rounds", "2", "--mode", "both", "--max-tokens", "8"], env)
    assert cfg.models == ["b"] and cfg.rounds == 2 and cfg.max_tokens == 8
    assert cfg.streams == [True, False]
    assert cfg.from_env == {}


def test_deterministic_defaults() -> None:
    cfg = _config([], {})
    assert cfg.temperature == 0 and cfg.rounds == 3 and cfg.max_tokens == 150
    assert cfg.streams == [True] and cfg.concurrency == [1] and cfg.warmup_rounds == 1
    assert [p.id for p in cfg.prompts] == [p["id"] for p in DEFAULT_BENCH_PROMPTS]


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"BENCH_ROUNDS": "three"}, "BENCH_ROUNDS='three': expected a whole number"),
        ([], {"BENCH_STREAM": "maybe"}, "BENCH_STREAM"),
        (["--concurrency", "1,x"], {}, "--concurrency"),
        (["--rounds", "0"], {}, "--rounds"),
        (["--judge-url", "http://127.0.0.1:1/v1"], {}, "--judge-url and --judge-model"),
    ],
)
def test_bad_options_name_what_is_wrong(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config(argv, env)


# ---------------------------------------------------------------------------------------------
# Against simulated hosts
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_speed_sim() -> Iterator[ChildHost]:
    """One host, two models whose timing is known: fast (2 ms TTFT, 1 ms ITL), slow (20 ms, 8 ms)."""
    with sim_host(
        "--model",
        FAST,
        "--model",
        SLOW,
        "--model-timing",
        f"{FAST}=2,1",
        "--model-timing",
        f"{SLOW}=20,8",
    ) as host:
        yield host


@pytest.fixture(scope="module")
def sim_run(two_speed_sim: ChildHost, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    before = sim_stats(two_speed_sim.base_url)["chat_requests"]
    proc = harness(
        "bench",
        "--host",
        two_speed_sim.base_url,
        "--model",
        "fast-chat",
        "--model",
        "slow-chat",
        "--model",
        "no-such-model",
        "--rounds",
        "2",
        "--max-tokens",
        "16",
        "--power-watts",
        "30",
        "--price-per-kwh",
        "0.25",
        "--out",
        str(out),
        "--run-id",
        "sim",
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    assert run_dir == out / "sim"
    # The host's own count of the chat requests this bench sent it, for the tests to check against.
    received = sim_stats(two_speed_sim.base_url)["chat_requests"] - before
    (out / "host_received.json").write_bytes(orjson.dumps(received))
    return run_dir


@pytest.mark.slow
def test_sim_bench_table_lists_models_with_their_speeds_and_skips_the_missing_one(sim_run: Path) -> None:
    (fast,) = rows_of(sim_run, FAST)
    (slow,) = rows_of(sim_run, SLOW)
    (missing,) = rows_of(sim_run, "no-such-model")
    assert fast["status"] == slow["status"] == "ok" and fast["alias"] == "fast-chat"
    assert missing["status"] == "skipped" and "no model matching 'no-such-model'" in missing["reason"]
    # Known timing: fast = 2 + 15 * 1 ms = 17 ms per 16 tokens, slow = 20 + 15 * 8 = 140 ms. The
    # row's figures are what its records say (one computation), and the records' medians match the
    # sim (its own process) two-sided: never early (a stamp before the send, a unit slip), and late
    # by at most 15 ms (TTFT) or 20 ms (E2E, which also carries the last token's lateness) on a loaded
    # 2-core machine; a +40 ms delayed-ACK regression or ×1000 falls outside. Medians of 8 requests,
    # since one request the scheduler held back 100 ms would move a mean or a p95 (seen here).
    for row, model, ttft, e2e in ((fast, FAST, 2, 17), (slow, SLOW, 20, 140)):
        recs = [r for r in records(sim_run) if r["model"] == model and not r["warmup"]]
        assert len(recs) == row["requests_ok"] and all(r["ok"] for r in recs)
        assert row["ttft_ms_p50"] == pytest.approx(statistics.median(r["ttft_ms"] for r in recs))
        assert row["e2e_ms_mean"] == pytest.approx(statistics.mean(r["e2e_ms"] for r in recs))
        assert all(r["ttft_ms"] >= ttft - 0.5 and r["e2e_ms"] >= e2e - 0.5 for r in recs), model
        assert ttft - 0.5 <= row["ttft_ms_p50"] <= ttft + 15, (model, row["ttft_ms_p50"])
        assert e2e - 0.5 <= statistics.median(r["e2e_ms"] for r in recs) <= e2e + 20, model
    assert fast["output_tokens_per_s"] > 3 * slow["output_tokens_per_s"]
    assert fast["requests_sent"] == fast["requests_ok"] == 2 * len(DEFAULT_BENCH_PROMPTS)
    # The sim runs on this machine: its memory was sampled through its /status pid.
    assert fast["peak_rss_mb"] and fast["peak_rss_mb"] > 5
    # Energy: 30 W over the row's own output tokens/s, as in the formula under the table.
    assert fast["energy_j_per_1k"] == pytest.approx(30 * 1000 / fast["output_tokens_per_s"])
    assert fast["cost_per_1k"] == pytest.approx(fast["energy_j_per_1k"] / 3600 / 1000 * 0.25)
    md = (sim_run / "bench.md").read_text()
    assert "| alias | model | host |" in md and "J / 1k tok" in md and "cost / 1k tok" in md
    assert "**skipped**" in md and "Columns:" in md
    with open(sim_run / "bench.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["status"] for r in csv_rows] == ["ok", "ok", "skipped"]


@pytest.mark.slow
def test_sim_bench_writes_a_normal_run_folder(sim_run: Path, two_speed_sim: ChildHost) -> None:
    recs = records(sim_run)
    for r in recs:
        assert set(REQUIRED_KEYS) <= set(r), set(REQUIRED_KEYS) - set(r)
        assert r["host"] == two_speed_sim.base_url and r["ok"] and r["text"]
    warm = [r for r in recs if r["warmup"]]
    measured = [r for r in recs if not r["warmup"]]
    assert len(warm) == 2 * len(DEFAULT_BENCH_PROMPTS)  # one round per model
    received = orjson.loads((sim_run.parent / "host_received.json").read_bytes())
    assert len(recs) == received, "one record per request the host received (its own count)"
    assert {r["stage"] for r in measured} == {"stream c=1"}
    # Fixed order: round by round, the prompt set in its order.
    fast = [(r["extra"]["round"], r["prompt_id"]) for r in measured if r["model"] == FAST]
    assert fast == [(rnd, p["id"]) for rnd in (1, 2) for p in DEFAULT_BENCH_PROMPTS]
    assert {r["max_tokens"] for r in recs} == {16}
    manifest = orjson.loads((sim_run / "manifest.json").read_bytes())
    assert manifest["kind"] == "bench" and manifest["state"] == "complete" and manifest["exit_code"] == 0
    status = {m["asked"]: (m["status"], m["resolved"]) for m in manifest["models"]}
    assert status == {
        "fast-chat": ("ok", FAST),
        "slow-chat": ("ok", SLOW),
        "no-such-model": ("skipped", None),
    }
    assert manifest["bench"]["temperature"] == 0 and manifest["bench"]["deterministic"]
    summary = orjson.loads((sim_run / "summary.json").read_bytes())
    assert summary["trim"]["trim_s"] == 0 and summary["counts"]["measured"] == len(measured)
    assert (sim_run / "host_metrics.jsonl").stat().st_size > 0
    # The bench's table takes its latency from the report: one computation of percentiles.
    (group,) = [g for g in summary["groups"] if g["key"]["model"] == FAST]
    assert rows_of(sim_run, FAST)[0]["ttft_ms_p95"] == group["ttft_ms_p95"]
    with open(sim_run / "scoring.csv", newline="") as fh:
        scoring = list(csv.DictReader(fh))
    assert len(scoring) == 2 * len(DEFAULT_BENCH_PROMPTS)
    assert {r["score"] for r in scoring} == {""} and all(r["expected_aspects"] for r in scoring)


@pytest.mark.slow
def test_hand_filled_scoring_csv_is_read_into_the_quality_column(sim_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(sim_run, run_dir)
    path = run_dir / "scoring.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fast_scores = iter(["5", "4", "4", "3"])
    for r in rows:
        if r["model"] == FAST:
            r["score"] = next(fast_scores)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    proc = harness("bench", "--rescore", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert last_line(proc.stdout) == str(run_dir)
    (fast,) = rows_of(run_dir, FAST)
    (slow,) = rows_of(run_dir, SLOW)
    assert fast["quality_hand_mean"] == pytest.approx(4.0) and fast["quality_hand_n"] == 4
    assert fast["quality_hand"] == "4.00 (n=4)"
    assert slow["quality_hand_n"] == 0 and slow["quality_hand"] == "—"
    assert "| 4.00 (n=4) |" in (run_dir / "bench.md").read_text()
    # Latency figures survive a rescore unchanged.
    assert fast["ttft_ms_p50"] == rows_of(sim_run, FAST)[0]["ttft_ms_p50"]


@pytest.mark.slow
def test_judge_scores_every_answer_and_keeps_its_prompt_and_raw_verdict(
    two_speed_sim: ChildHost, tmp_path: Path
) -> None:
    judge = start_child_host(
        "sim", ["--port", "0", "--model", "judge-generic-cpu:1", "--answer", JUDGE_VERDICT]
    )
    try:
        proc = harness(
            "bench",
            "--host",
            two_speed_sim.base_url,
            "--model",
            FAST,
            "--rounds",
            "1",
            "--max-tokens",
            "8",
            "--judge-url",
            judge.base_url,
            "--judge-model",
            "judge",
            "--out",
            str(tmp_path),
        )
    finally:
        judge.stop()
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    lines = [orjson.loads(x) for x in (run_dir / "judge.jsonl").read_bytes().splitlines()]
    assert len(lines) == len(DEFAULT_BENCH_PROMPTS)
    for line in lines:
        assert line["raw"] == JUDGE_VERDICT and line["score"] == 4 and line["parsed"]
        assert line["judge_model"] == "judge-generic-cpu:1" and line["model"] == FAST
        user = line["messages"][-1]["content"]
        assert "Aspects a good answer covers" in user and "Answer to grade" in user
    (row,) = rows_of(run_dir, FAST)
    assert row["quality_judge_mean"] == 4 and row["quality_judge_n"] == len(DEFAULT_BENCH_PROMPTS)
    assert "quality (judge)" in (run_dir / "bench.md").read_text()


@pytest.mark.slow
def test_a_judge_that_talks_nonsense_is_counted_not_fatal(sim_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "copy"
    shutil.copytree(sim_run, run_dir)
    judge = start_child_host(
        "sim", ["--port", "0", "--model", "judge-generic-cpu:1", "--answer", "I like it."]
    )
    try:
        proc = harness(
            "bench", "--rescore", str(run_dir), "--judge-url", judge.base_url, "--judge-model", "judge"
        )
    finally:
        judge.stop()
    assert proc.returncode == 0, proc.stderr
    assert "gave no score 1-5" in proc.stderr
    (fast,) = rows_of(run_dir, FAST)
    assert fast["quality_judge_n"] == 0 and fast["quality_judge_unparsed"] == len(DEFAULT_BENCH_PROMPTS)
    judged = read_judge(run_dir / "judge.jsonl")
    assert judged[(fast["host_url"], FAST)].unparsed == len(DEFAULT_BENCH_PROMPTS)


@pytest.mark.slow
def test_cpu_and_gpu_variants_on_two_hosts_side_by_side(tmp_path: Path) -> None:
    """With and without acceleration: one alias, a CPU host and a "GPU" host (simulated: this machine
    has no GPU), and a host serving both variants; rows per host and variant, grouped by alias."""
    cpu, gpu = "m-generic-cpu:1", "m-cuda-gpu:1"
    with (
        sim_host("--model", cpu, "--model", "other-generic-cpu:1", "--ttft-ms", "20", "--itl-ms", "6") as h1,
        sim_host(
            "--model", cpu, "--model", gpu, "--model-timing", f"{gpu}=3,1", "--ttft-ms", "20", "--itl-ms", "6"
        ) as h2,
    ):
        proc = harness(
            "bench",
            "--host",
            h1.base_url,
            "--host",
            h2.base_url,
            "--model",
            cpu,
            "--model",
            "other",
            "--model",
            gpu,
            "--rounds",
            "1",
            "--max-tokens",
            "12",
            "--out",
            str(tmp_path),
        )
    assert proc.returncode == 0, proc.stderr
    rows = bench_json(Path(last_line(proc.stdout)))["rows"]
    got = [(r["alias"], r["host_url"], r["model"], r["ep"], r["status"]) for r in rows]
    assert got == [
        ("m", h1.base_url, cpu, "generic-cpu", "ok"),
        ("m", h1.base_url, gpu, None, "skipped"),  # h1 has no GPU variant: said so, in its group
        ("m", h2.base_url, cpu, "generic-cpu", "ok"),
        ("m", h2.base_url, gpu, "cuda-gpu", "ok"),
        ("other", h1.base_url, "other-generic-cpu:1", "generic-cpu", "ok"),
        ("other", h2.base_url, "other", None, "skipped"),
    ]
    speed = {(r["host_url"], r["model"]): r["output_tokens_per_s"] for r in rows if r["status"] == "ok"}
    assert speed[(h2.base_url, gpu)] > 2 * speed[(h2.base_url, cpu)]


@pytest.mark.slow
def test_env_vars_alone_drive_a_bench(two_speed_sim: ChildHost, tmp_path: Path) -> None:
    """The workshop's way: no options but --out, everything from BENCH_* and FOUNDRY_LOCAL_ENDPOINT."""
    env = {
        "FOUNDRY_LOCAL_ENDPOINT": two_speed_sim.base_url,
        "BENCH_MODELS": "fast-chat,slow-chat",
        "BENCH_ROUNDS": "2",
        "BENCH_PROMPT": "Explain the principle of retrieval augmented generation in 2 sentences.",
        "BENCH_STREAM": "0",
        "BENCH_MAX_TOKENS": "8",
        "BENCH_TEMPERATURE": "0",
    }
    proc = harness("bench", "--out", str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    measured = [r for r in records(run_dir) if not r["warmup"]]
    assert len(measured) == 2 * 2
    assert {(r["stream"], r["max_tokens"], r["prompt_id"], r["stage"]) for r in measured} == {
        (False, 8, "bench-prompt", "plain c=1")
    }
    assert {r["host"] for r in measured} == {two_speed_sim.base_url}
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    assert set(manifest["bench"]["from_env"]) == set(env)
    assert [r["ttft_ms_p50"] for r in bench_json(run_dir)["rows"]] == [None, None]  # no TTFT without streams


@pytest.mark.slow
def test_concurrency_and_both_modes_make_one_row_each(two_speed_sim: ChildHost, tmp_path: Path) -> None:
    proc = harness(
        "bench",
        "--host",
        two_speed_sim.base_url,
        "--model",
        SLOW,
        "--rounds",
        "2",
        "--max-tokens",
        "8",
        "--mode",
        "both",
        "--concurrency",
        "1,4",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    rows = bench_json(run_dir)["rows"]
    assert [(r["mode"], r["concurrency"]) for r in rows] == [
        ("stream", 1),
        ("stream", 4),
        ("plain", 1),
        ("plain", 4),
    ]
    at4 = [r for r in records(run_dir) if r["stage"] == "stream c=4"]
    assert max(r["users"] for r in at4) == 4 and len(at4) == 2 * len(DEFAULT_BENCH_PROMPTS)


@pytest.mark.slow
def test_a_model_that_does_not_answer_fails_and_the_others_go_on(
    two_speed_sim: ChildHost, tmp_path: Path
) -> None:
    with sim_host("--model", "broken-generic-cpu:1", "--fault-500", "1") as broken:
        proc = harness(
            "bench",
            "--host",
            broken.base_url,
            "--host",
            two_speed_sim.base_url,
            "--model",
            "broken",
            "--model",
            FAST,
            "--rounds",
            "1",
            "--max-tokens",
            "8",
            "--out",
            str(tmp_path),
        )
    assert proc.returncode == 0, proc.stderr
    rows = {(r["host_url"], r["asked"]): r for r in bench_json(Path(last_line(proc.stdout)))["rows"]}
    bad = rows[(broken.base_url, "broken")]
    assert bad["status"] == "failed" and "does not answer" in bad["reason"] and "http_5xx" in bad["reason"]
    assert rows[(two_speed_sim.base_url, FAST)]["status"] == "ok"


@pytest.mark.slow
def test_a_model_folder_that_cannot_be_served_fails_and_the_others_go_on(
    two_speed_sim: ChildHost, tmp_path: Path
) -> None:
    not_a_model = tmp_path / "empty-model"
    not_a_model.mkdir()
    proc = harness(
        "bench",
        "--host",
        two_speed_sim.base_url,
        "--model",
        FAST,
        "--model-dir",
        str(not_a_model),
        "--rounds",
        "1",
        "--max-tokens",
        "4",
        "--out",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["asked"]: r for r in bench_json(Path(last_line(proc.stdout)))["rows"]}
    assert rows[FAST]["status"] == "ok"
    bad = rows["empty-model-generic-cpu:1"]
    assert bad["status"] == "failed" and "embedded foundry host" in bad["reason"]
    assert "not an ONNX Runtime GenAI model folder" in bad["reason"]


@pytest.mark.slow
def test_no_model_ran_exits_2_with_the_reasons(two_speed_sim: ChildHost, tmp_path: Path) -> None:
    proc = harness("bench", "--host", two_speed_sim.base_url, "--model", "nope", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "no model ran" in proc.stderr
    (row,) = bench_json(Path(last_line(proc.stdout)))["rows"]
    assert row["status"] == "skipped"


@pytest.mark.slow
def test_models_named_with_no_host_anywhere_are_skipped_with_advice(tmp_path: Path) -> None:
    proc = harness("bench", "--model", "qwen2.5-0.5b", "--out", str(tmp_path), env=no_discovery_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    (row,) = bench_json(Path(last_line(proc.stdout)))["rows"]
    assert row["status"] == "skipped" and "set FOUNDRY_LOCAL_ENDPOINT or pass --host" in row["reason"]


@pytest.mark.slow
def test_capabilities_pick_the_prompts(two_speed_sim: ChildHost, tmp_path: Path) -> None:
    models = tmp_path / "models.json"
    models.write_text(orjson.dumps({"fast-chat": {"capabilities": ["code"]}, "slow-chat": {}}).decode())
    proc = harness(
        "bench",
        "--host",
        two_speed_sim.base_url,
        "--models-file",
        str(models),
        "--prompts-file",
        str(REPO / "scenarios" / "bench-prompts-tagged.json"),
        "--rounds",
        "1",
        "--max-tokens",
        "4",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    prompts = {m["asked"]: m["prompts"] for m in manifest["models"]}
    assert prompts == {"fast-chat": ["rag-2s", "py-dedupe"], "slow-chat": ["rag-2s"]}
    (fast,) = rows_of(run_dir, FAST)
    assert fast["capabilities"] == ["code"]


# ---------------------------------------------------------------------------------------------
# Against the embedded Foundry Local host (real foundry-local-sdk, ONNX Runtime GenAI)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.foundry
def test_foundry_and_sim_models_in_one_table(two_speed_sim: ChildHost, tmp_path: Path) -> None:
    """Always possible in CI: the shipped tiny model on an embedded Foundry Local host, beside two
    simulated models of known, different speeds, and an alias nobody serves."""
    proc = harness(
        "bench",
        "--host",
        two_speed_sim.base_url,
        "--model",
        "fast-chat",
        "--model",
        "slow-chat",
        "--model",
        "no-such-model",
        "--model-dir",
        str(shipped_model_dir()),
        "--models-file",
        str(REPO / "scenarios" / "models.json"),
        "--rounds",
        "2",
        "--max-tokens",
        "24",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    (tiny,) = rows_of(run_dir, "tiny-chat-generic-cpu:1")
    assert tiny["status"] == "ok" and tiny["host"] == "embedded foundry" and tiny["alias"] == "tiny-chat"
    assert tiny["disk_source"] == "folder" and 3 < tiny["disk_mb"] < 5
    assert tiny["peak_rss_mb"] > 20 and tiny["load_s"] is not None
    assert tiny["license"] == "MIT" and tiny["capabilities"] == ["chat"]
    assert tiny["requests_ok"] == 2 * len(DEFAULT_BENCH_PROMPTS)
    (missing,) = rows_of(run_dir, "no-such-model")
    assert missing["status"] == "skipped" and missing["reason"]
    statuses = {r["model"]: r["status"] for r in bench_json(run_dir)["rows"]}
    assert statuses[FAST] == statuses[SLOW] == "ok"
    foundry_records = [
        r for r in records(run_dir) if r["model"] == "tiny-chat-generic-cpu:1" and not r["warmup"]
    ]
    assert all(r["output_tokens"] == 24 and r["tokens_source"] == "usage" for r in foundry_records)


@pytest.mark.slow
@pytest.mark.foundry
def test_default_host_is_an_embedded_foundry_host_with_the_tiny_model(tmp_path: Path) -> None:
    proc = harness(
        "bench", "--rounds", "1", "--max-tokens", "8", "--out", str(tmp_path), env=no_discovery_env(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    assert "no Foundry Local host found" in proc.stderr
    (row,) = bench_json(Path(last_line(proc.stdout)))["rows"]
    assert row["model"] == "tiny-chat-generic-cpu:1" and row["status"] == "ok"


@pytest.mark.slow
@pytest.mark.foundry
@pytest.mark.skipif(
    not (SMALL_CHAT / "genai_config.json").is_file(),
    # Not in `make test`/CI on purpose: building the model needs the `models` extra (~2 min and
    # 1.3 GB per run); `make test-models` builds it and runs this test.
    reason=f"needs the 32 M small-chat model at {SMALL_CHAT}: run `make test-models`",
)
def test_two_local_models_of_different_sizes_on_embedded_foundry_hosts(tmp_path: Path) -> None:
    proc = harness(
        "bench",
        "--model-dir",
        str(shipped_model_dir()),
        "--model-dir",
        str(SMALL_CHAT),
        "--model",
        "no-such-model",
        "--rounds",
        "1",
        "--max-tokens",
        "32",
        "--power-watts",
        "15",
        "--out",
        str(tmp_path),
        env=no_discovery_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    (tiny,) = rows_of(run_dir, "tiny-chat-generic-cpu:1")
    (small,) = rows_of(run_dir, "small-chat-generic-cpu:1")
    (missing,) = rows_of(run_dir, "no-such-model")
    assert tiny["status"] == small["status"] == "ok"
    assert missing["status"] == "skipped" and "no host serves it" in missing["reason"]
    # 0.8 M against 32 M parameters: the small model is many times slower, bigger and hungrier.
    assert tiny["output_tokens_per_s"] > 5 * small["output_tokens_per_s"]
    assert small["disk_mb"] > 20 * tiny["disk_mb"]
    assert small["peak_rss_mb"] > tiny["peak_rss_mb"]
    assert small["energy_j_per_1k"] > tiny["energy_j_per_1k"]
