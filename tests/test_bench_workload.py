"""`harness bench` with the workload flags: the workload's requests replace the prompt set.

Against a simulated host (two models, lengths calibrated against it, its own request count) and the
embedded Foundry host with the shipped tiny model (lengths exact in its own tokenizer, so the host's
`usage.prompt_tokens` is the requested length plus the chat template's constant).
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness_helpers import REPO, harness, last_line, records, sim_host, sim_stats

from harness.cli import build_parser
from harness.commands.bench import config_from_args
from harness.commands.run import scenario_overrides
from harness.errors import InputError
from harness.scenario import load_scenario
from harness.workload import build_workload
from harness.workload.config import WorkloadSpec

A, B = "a-chat-generic-cpu:1", "b-chat-generic-cpu:1"


def manifest(run_dir: Path) -> dict[str, Any]:
    return dict(orjson.loads((run_dir / "manifest.json").read_bytes()))


def by_model(recs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        out[r["model"]].append(r)
    return out


def test_sim_bench_sends_the_workloads_requests_to_every_model(tmp_path: Path) -> None:
    rounds, n, seed = 2, 3, 5
    with sim_host("--model", A, "--model", B) as host:
        before = sim_stats(host.base_url)["chat_requests"]
        proc = harness(
            "bench",
            "--host",
            host.base_url,
            "--model",
            "a-chat",
            "--model",
            "b-chat",
            "--input-tokens",
            "list:20,40",
            "--output-tokens",
            "8:12",
            "--max-requests",
            str(n),
            "--rounds",
            str(rounds),
            "--seed",
            str(seed),
            "--out",
            str(tmp_path),
        )
        received = sim_stats(host.base_url)["chat_requests"] - before
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    recs = records(run_dir)
    models = {m["resolved"]: m for m in manifest(run_dir)["models"]}
    # The host's own count: every record, plus each model's calibration probes (not records).
    probes = sum(len(m["workload"]["calibration"]["probes"]) for m in models.values())
    assert received == len(recs) + probes
    # What the workload itself builds with that seed: lengths asked for, request by request.
    w = build_workload(WorkloadSpec(input_tokens="list:20,40", output_tokens="8:12"), seed=seed)
    want = [(s.index, s.prompt_id, s.requested_input_tokens, s.max_tokens) for s in w.build(range(n))]
    assert len({x[2] for x in want}) > 1 or len({x[3] for x in want}) > 1  # the seed shows
    per_model = by_model([r for r in recs if not r["warmup"]])
    assert set(per_model) == {A, B}
    for model, rs in per_model.items():
        got = [
            (r["extra"]["workload_index"], r["prompt_id"], r["requested_input_tokens"], r["max_tokens"])
            for r in rs
        ]
        assert got == want * rounds, model
        for r in rs:
            assert r["ok"] and r["requested_output_tokens"] == r["max_tokens"]
            assert r["output_tokens"] == r["max_tokens"]  # the sim answers max_tokens tokens
            # Calibrated against the sim (not exact): the sim's own count within 10 % of the ask.
            assert models[model]["workload"]["counter"] == "calibrated"
            assert (
                abs(r["input_tokens"] - r["requested_input_tokens"]) <= 0.1 * r["requested_input_tokens"]
            ), r
    # Synthetic prompts have no reference answers: nothing to score, and the notes say so.
    assert not (run_dir / "scoring.csv").exists()
    assert "quality not scored" in (run_dir / "bench.md").read_text()
    assert manifest(run_dir)["bench"]["workload"]["requests_per_round"] == n


def test_embedded_foundry_lengths_are_exact_in_the_models_own_tokenizer(tmp_path: Path) -> None:
    env = {"FOUNDRY_LOCAL_ENDPOINT": "", "PATH": str(Path(shutil.which("python") or "python").parent)}
    proc = harness(
        "bench",
        "--input-tokens",
        "list:20,40",
        "--output-tokens",
        "4",
        "--max-requests",
        "4",
        "--rounds",
        "1",
        "--warmup-rounds",
        "0",
        "--out",
        str(tmp_path),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    (entry,) = manifest(run_dir)["models"]
    info = entry["workload"]
    assert info["counter"] == "tokenizer" and Path(info["tokenizer"]).name == "tiny-chat"
    offset = info["describe"]["template_offset"]
    assert isinstance(offset, int) and offset > 0
    recs = records(run_dir)
    assert len(recs) == 4 and {r["requested_input_tokens"] for r in recs} <= {20, 40}
    for r in recs:
        assert r["ok"] and r["max_tokens"] == r["requested_output_tokens"] == 4
        # The host's own count of the prompt: the requested text plus the template's constant.
        assert r["input_tokens"] == r["requested_input_tokens"] + offset, r


BAD = [
    ["--input-tokens", "abc"],
    ["--output-tokens", "0"],
    ["--input-tokens", "normal:20"],
    ["--max-requests", "0"],
    ["--dataset", "/nonexistent/prompts.jsonl"],
    ["--max-tokens", "8", "--output-tokens", "8"],
]


def _message(command: str, argv: list[str]) -> str:
    args = build_parser().parse_args([command, *argv])
    with pytest.raises(InputError) as info:
        if command == "run":
            load_scenario(None, scenario_overrides(args))
        else:
            config_from_args(args, {})
    return str(info.value)


@pytest.mark.parametrize("argv", BAD)
def test_bad_workload_flags_get_the_message_harness_run_gives(argv: list[str]) -> None:
    assert _message("bench", argv) == _message("run", argv)


def test_bench_only_conflicts_and_the_exit_status(tmp_path: Path) -> None:
    assert "--prompts-file and --input-tokens" in _message(
        "bench", ["--prompts-file", str(REPO / "scenarios" / "bench-prompts.json"), "--input-tokens", "8"]
    )
    proc = harness("bench", "--input-tokens", "abc", "--out", str(tmp_path))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "--input-tokens" in line and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # stopped before a run folder was made


def test_output_tokens_alone_keeps_the_prompt_set_and_its_scoring(tmp_path: Path) -> None:
    cfg = config_from_args(build_parser().parse_args(["bench", "--output-tokens", "16"]), {})
    assert cfg.workload is not None and cfg.scored and cfg.workload_requests == len(cfg.prompts)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "hello there"}\n{"prompt": "good morning"}\n')
    argv = ["bench", "--dataset", str(data), "--max-requests", "2"]
    cfg = config_from_args(build_parser().parse_args(argv), {})
    assert not cfg.scored and cfg.workload_requests == 2
