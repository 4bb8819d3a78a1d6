"""Workloads against the real embedded Foundry Local host with its shipped tiny model.

Synthetic prompts of 16, 100 and 300 tokens (the model's own tokenizer) sent through the harness's
streaming client: the host's `usage.prompt_tokens` is the requested length plus one constant (the
chat template), the one the workload computed, and `completion_tokens` is the asked 24. Also: a
shared prefix's expected count, a conversation fed the host's real replies, and a calibration
against the host that recovers the same template offset without a tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from harness_helpers import harness, last_line, records

from harness.client import Connection, chat_body
from harness.client.chat import ChatResult
from harness.servers.foundry import start_foundry_host
from harness.servers.ready import ChildHost
from harness.workload import Conversation, ModelTokenizer, WorkloadSpec, build_workload, calibrate

pytestmark = pytest.mark.foundry

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "harness" / "models" / "tiny-chat"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildHost]:
    h = start_foundry_host(log_path=tmp_path_factory.mktemp("foundry") / "host.log")
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return ModelTokenizer.from_path(TINY)


def send(
    host: ChildHost, messages: list[dict[str, str]], max_tokens: int, *, keep_text: bool = False
) -> ChatResult:
    conn = Connection(host.base_url)
    try:
        res = conn.chat(
            chat_body(host.models[0], messages, max_tokens=max_tokens, temperature=0), keep_text=keep_text
        )
    finally:
        conn.close()
    assert res.ok, (res.error, res.error_detail)
    return res


def test_prompt_tokens_equal_requested_plus_the_computed_template_offset(
    host: ChildHost, tok: ModelTokenizer
) -> None:
    offsets = set()
    for n in (16, 100, 300):
        w = build_workload(WorkloadSpec(input_tokens=str(n), output_tokens="24"), seed=3, counter=tok)
        assert w.exact and w.user_offset is not None
        for r in w.build([0, 1]):
            res = send(host, r.messages, r.max_tokens)
            assert res.input_tokens == n + w.user_offset == r.expected_prompt_tokens, (n, res.input_tokens)
            assert res.usage_output_tokens == 24 and res.tokens_source == "usage"
            offsets.add(res.input_tokens - n)
        offsets.add(w.user_offset)
    assert len(offsets) == 1, f"one constant offset for every length, got {offsets}"


def test_count_template_makes_usage_equal_the_requested_length(host: ChildHost, tok: ModelTokenizer) -> None:
    w = build_workload(
        WorkloadSpec(input_tokens="100", output_tokens="24", count_template=True), seed=3, counter=tok
    )
    res = send(host, w.build([0])[0].messages, 24)
    assert res.input_tokens == 100 and res.usage_output_tokens == 24


def test_shared_prefix_requests_as_expected(host: ChildHost, tok: ModelTokenizer) -> None:
    w = build_workload(
        WorkloadSpec.model_validate(
            {"input_tokens": "50", "output_tokens": 4, "shared_prefix": {"tokens": 40}}
        ),
        seed=3,
        counter=tok,
    )
    r = w.build([0])[0]
    assert r.prefix_tokens == 40
    assert (
        send(host, r.messages, 4).input_tokens == r.expected_prompt_tokens == 50 + 40 + (w.system_offset or 0)
    )


def test_conversation_feeds_the_hosts_replies_back(host: ChildHost, tok: ModelTokenizer) -> None:
    w = build_workload(
        WorkloadSpec.model_validate(
            {"input_tokens": "20", "output_tokens": 12, "conversation": {"turns": 3}}
        ),
        seed=3,
        counter=tok,
    )
    conv = Conversation(w.build([0])[0], tokenizer=tok)
    seen = []
    while not conv.done:
        req = conv.next_request()
        res = send(host, req.messages, req.max_tokens, keep_text=True)
        assert res.input_tokens == req.expected_prompt_tokens, (req.turn, res.input_tokens)
        seen.append(res.input_tokens or 0)
        assert res.text
        conv.add_reply(res.text)
    assert [m["role"] for m in conv.history] == ["user", "assistant"] * 3
    assert all(m["content"] for m in conv.history)
    assert seen[0] < seen[1] < seen[2]


def test_calibration_against_the_host_recovers_the_offset(host: ChildHost, tok: ModelTokenizer) -> None:
    """With words the tokenizer holds as single tokens, the fit must find 1 token per word and the
    template offset the tokenizer path computes; with plain English words, more than 1 per word."""
    w = build_workload(WorkloadSpec(input_tokens="16", output_tokens="1"), seed=3, counter=tok)

    def probe(messages: list[dict[str, str]]) -> int:
        return send(host, messages, 1).input_tokens or -1

    words = [s.strip() for s in tok.single_token_words()]
    cal = calibrate(probe, vocabulary=words)
    assert cal.calibrated and cal.tokens_per_word == pytest.approx(1.0, abs=1e-9)
    assert cal.offset == pytest.approx(w.user_offset, abs=1e-9)
    plain = calibrate(probe)
    assert plain.tokens_per_word > 1.0, "the tiny model's docstring vocabulary splits everyday words"


@pytest.mark.slow
def test_harness_run_sends_exact_input_and_output_lengths(tmp_path: Path) -> None:
    """`harness run --input-tokens 100 --output-tokens 24` against the embedded Foundry host: the
    tokenizer is the host's own model folder, and every record's usage is 100 + the template offset
    the manifest states, and 24."""
    proc = harness(
        "run",
        *("--input-tokens", "100", "--output-tokens", "24", "--max-requests", "6"),
        *("--users", "2", "--duration", "120s", "--no-report", "--out", str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    wl = manifest["workload"]
    assert wl["counter"] == "tokenizer" and wl["tokenizer"] == str(TINY) and wl["exact_lengths"]
    offset = wl["template_offset"]
    assert isinstance(offset, int) and offset > 0
    recs = [r for r in records(run_dir) if not r["warmup"]]
    assert len(recs) == 6 == manifest["records"]["locust_counted"]
    for r in recs:
        assert r["ok"], r["error_detail"]
        assert (r["requested_input_tokens"], r["requested_output_tokens"]) == (100, 24)
        assert r["tokens_source"] == "usage"
        assert (r["input_tokens"], r["output_tokens"]) == (100 + offset, 24), r["prompt_id"]
