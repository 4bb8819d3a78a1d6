"""Requests from a workload: exact synthetic lengths in the model's tokens, the same multiset of
requests for 1 and 2 (and 3) workers, exact max_requests, conversations carrying their history,
the shared prefix's share, the output-length body fields, the pool's prebuilding, calibration."""

from __future__ import annotations

import math
from collections import Counter as Multiset
from pathlib import Path
from typing import Any

import pytest

from harness.errors import InputError
from harness.workload import (
    Conversation,
    ModelTokenizer,
    RequestPool,
    RequestSpec,
    SessionSpec,
    Workload,
    WorkloadSpec,
    build_workload,
    calibrate,
    items_for_max_requests,
)
from harness.workload.tokens import PLAIN_WORDS

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "harness" / "models" / "tiny-chat"
EXAMPLE = REPO / "scenarios" / "example-conversations.jsonl"


@pytest.fixture(scope="module")
def tok() -> ModelTokenizer:
    return ModelTokenizer.from_path(TINY)


def workload(tok: ModelTokenizer | None, seed: int = 11, **section: Any) -> Workload:
    return build_workload(WorkloadSpec.model_validate(section), seed=seed, counter=tok)


def drain(pool: RequestPool) -> list[Any]:
    out = []
    while (item := pool.take()) is not None:
        out.append(item)
        pool.refill()
    return out


def keys(items: list[Any]) -> Multiset[Any]:
    return Multiset(i.key() for i in items)


# --- synthetic lengths ---------------------------------------------------------------------------


def test_synthetic_prompts_have_exactly_the_requested_tokens(tok: ModelTokenizer) -> None:
    w = workload(tok, input_tokens="list:1,2,3,16,100,300,1000", output_tokens="1:64")
    assert w.exact and w.user_offset is not None
    reqs = w.build(range(400))
    for r in reqs:
        assert tok.count(r.messages[-1]["content"]) == r.requested_input_tokens
        assert (
            tok.prompt_tokens(r.messages)
            == r.expected_prompt_tokens
            == r.requested_input_tokens + w.user_offset
        )
        assert r.max_tokens == r.requested_output_tokens and 1 <= r.max_tokens <= 64
    # The offset is what the template adds: its own count, independently.
    empty = tok.prompt_tokens([{"role": "user", "content": ""}])
    assert w.user_offset == empty
    firsts = [tok.ids(r.messages[-1]["content"])[0] for r in reqs]
    assert len(set(firsts)) > 300, "requests start differently: no accidental shared prefix"


def test_count_template_makes_the_whole_prompt_the_requested_length(tok: ModelTokenizer) -> None:
    w = workload(tok, input_tokens="40:200", output_tokens=8, count_template=True)
    for r in w.build(range(100)):
        assert tok.prompt_tokens(r.messages) == r.requested_input_tokens == r.expected_prompt_tokens


def test_without_a_tokenizer_lengths_are_words_and_say_so() -> None:
    w = workload(None, input_tokens="50", output_tokens=8)
    r = w.build([0])[0]
    assert len(r.messages[-1]["content"].split()) == 50 and r.expected_prompt_tokens is None
    assert w.describe()["lengths"] == {"method": "words", "exact": False}


# --- workers and limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section",
    [
        {
            "input_tokens": "normal:64,16",
            "output_tokens": "8:32",
            "shared_prefix": {"tokens": 20, "share": 0.5, "count": 3},
        },
        {"dataset": str(EXAMPLE), "output_tokens": "list:8,16"},
        {"input_tokens": "16:64", "output_tokens": 8, "conversation": {"turns": "1:5"}},
        {"dataset": {"path": str(EXAMPLE), "conversations": "whole"}, "conversation": {}, "output_tokens": 8},
    ],
    ids=["synthetic", "dataset", "conversation", "sharegpt-whole"],
)
def test_one_and_two_workers_build_the_same_multiset(tok: ModelTokenizer, section: dict[str, Any]) -> None:
    w = workload(tok, **section)
    one = drain(RequestPool(w, max_requests=300, prebuild=64))
    for n in (2, 3):
        pools = [
            RequestPool(workload(tok, **section), worker=k, workers=n, max_requests=300, prebuild=50)
            for k in range(n)
        ]
        parts = [drain(p) for p in pools]
        assert keys([x for part in parts for x in part]) == keys(one)
        assert all(len(part) > 0 for part in parts)
    other_seed = drain(RequestPool(workload(tok, seed=12, **section), max_requests=300, prebuild=64))
    assert keys(other_seed) != keys(one)


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
@pytest.mark.parametrize("limit", [1, 5, 100, 1001])
def test_max_requests_is_exact_over_all_workers(tok: ModelTokenizer, workers: int, limit: int) -> None:
    w = workload(tok, input_tokens=16, output_tokens=4)
    got = [
        drain(RequestPool(w, worker=k, workers=workers, max_requests=limit, prebuild=64))
        for k in range(workers)
    ]
    flat = [r for part in got for r in part]
    assert len(flat) == limit
    assert sorted(r.index for r in flat) == list(range(limit))
    # Shares differ by at most one: no worker idles while another has a backlog.
    assert max(map(len, got)) - min(map(len, got)) <= 1


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("limit", [1, 4, 37, 200])
def test_max_requests_counts_conversation_turns_exactly(
    tok: ModelTokenizer, workers: int, limit: int
) -> None:
    w = workload(tok, input_tokens=8, output_tokens=4, conversation={"turns": "1:6"})
    sessions = [
        s
        for k in range(workers)
        for s in drain(RequestPool(w, worker=k, workers=workers, max_requests=limit))
    ]
    assert sum(len(s.turns) for s in sessions) == limit
    n_items, last = items_for_max_requests(w, limit)
    assert sorted(s.index for s in sessions) == list(range(n_items))
    full = w.turns_of(range(n_items)).tolist()
    by_index = {s.index: len(s.turns) for s in sessions}
    assert [by_index[i] for i in range(n_items - 1)] == full[:-1], "only the last conversation is cut"
    assert by_index[n_items - 1] == last <= full[-1]


def test_pool_builds_before_sending_and_between_sends(tok: ModelTokenizer) -> None:
    pool = RequestPool(workload(tok, input_tokens=32, output_tokens=4), prebuild=100)
    assert len(pool) == 100, "built when made, before any send"
    built = []
    for _ in range(160):
        assert isinstance(pool.take(), RequestSpec)
        built.append(pool.refill())
        assert 50 <= len(pool) <= 100, "topped up between sends"
    assert built.count(50) == 3 and sum(built) == 150 and pool.late_builds == 0
    # A refill builds at most `step` items: no long hold of a Locust process's event loop.
    stepped = RequestPool(workload(tok, input_tokens=32, output_tokens=4), prebuild=1000, step=100)
    for _ in range(500):
        stepped.take()
    assert stepped.refill() == 100 and len(stepped) == 600
    assert [stepped.refill() for _ in range(5)] == [100, 100, 100, 100, 0]
    assert RequestPool(workload(tok, input_tokens=32, output_tokens=4), prebuild=10).step == 5
    # Without refills the pool runs dry and builds late (counted).
    lazy = RequestPool(workload(tok, input_tokens=32, output_tokens=4), prebuild=10, step=10)
    for _ in range(25):
        lazy.take()
    assert lazy.late_builds == 3, "10 built ahead, then 5 at a time (half the pool) at takes 11, 16, 21"
    done = RequestPool(workload(tok, input_tokens=32, output_tokens=4), max_requests=3)
    assert len(drain(done)) == 3 and done.exhausted and done.take() is None


# --- conversations -------------------------------------------------------------------------------


def test_conversation_turns_carry_the_history_with_the_actual_replies(tok: ModelTokenizer) -> None:
    w = workload(
        tok, input_tokens="10:30", output_tokens=8, conversation={"turns": 4}, shared_prefix={"tokens": 12}
    )
    session = w.build([5])[0]
    assert isinstance(session, SessionSpec) and len(session.turns) == 4 and session.session_id == "s5"
    conv = Conversation(session, tokenizer=tok)
    sizes = []
    for t in range(1, 5):
        req = conv.next_request()
        assert req.session_id == "s5" and req.turn == t
        assert req.messages[0] == {"role": "system", "content": session.system}
        assert tok.count(session.system or "") == 12 and req.prefix_tokens == 12
        assert len(req.messages) == 1 + 2 * (t - 1) + 1
        for k in range(1, t):
            assert req.messages[2 * k - 1]["content"] == session.turns[k - 1].text
            assert req.messages[2 * k] == {"role": "assistant", "content": f"reply {k} from the host"}
        assert req.messages[-1]["content"] == session.turns[t - 1].text
        assert tok.count(req.messages[-1]["content"]) == req.requested_input_tokens
        assert req.expected_prompt_tokens == tok.prompt_tokens(req.messages)
        sizes.append(req.expected_prompt_tokens)
        with pytest.raises(RuntimeError):
            conv.next_request()
        conv.add_reply(f"reply {t} from the host")
    assert conv.done and sizes == sorted(sizes) and len(set(sizes)) == 4, "prefill grows every turn"
    with pytest.raises(IndexError):
        conv.next_request()


def test_a_failed_turn_feeds_back_an_empty_reply_and_goes_on(tok: ModelTokenizer) -> None:
    conv = Conversation(
        workload(tok, input_tokens=8, output_tokens=4, conversation={"turns": 2}).build([0])[0]
    )
    conv.next_request()
    conv.add_reply(None)
    req = conv.next_request()
    assert req.turn == 2 and req.messages[1] == {"role": "assistant", "content": ""}


def test_whole_sharegpt_conversations_replay_user_turns_only(tok: ModelTokenizer) -> None:
    w = workload(
        tok,
        dataset={"path": str(EXAMPLE), "conversations": "whole"},
        conversation={"turns": 3},
        output_tokens=8,
    )
    for s in w.build(range(20)):
        entry = next(e for e in w.entries or [] if e.id == s.turns[0].prompt_id)
        assert [t.text for t in s.turns] == list(entry.turns[:3])
        assert len(s.turns) == min(3, len(entry.turns))


# --- shared prefix -----------------------------------------------------------------------------


def test_shared_prefix_share_is_as_asked_and_recorded(tok: ModelTokenizer) -> None:
    n = 20000
    w = workload(tok, input_tokens=8, output_tokens=4, shared_prefix={"tokens": 64, "share": 0.3, "count": 2})
    reqs = w.build(range(n))
    with_prefix = [r for r in reqs if r.prefix_id is not None]
    share = len(with_prefix) / n
    assert abs(share - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n), share
    assert all(
        r.record_fields()["shared_prefix_tokens"] == (64 if r.prefix_id is not None else 0) for r in reqs
    )
    systems = {r.messages[0]["content"] for r in with_prefix}
    assert len(systems) == 2 and all(tok.count(s) == 64 for s in systems)
    assert all(r.messages[0]["role"] == "user" for r in reqs if r.prefix_id is None)
    per_prefix = Multiset(r.prefix_id for r in with_prefix)
    assert abs(per_prefix[0] - per_prefix[1]) < 5 * math.sqrt(len(with_prefix))
    for r in with_prefix[:50]:
        assert tok.prompt_tokens(r.messages) == r.expected_prompt_tokens
    none = workload(tok, input_tokens=8, output_tokens=4, shared_prefix={"tokens": 64, "share": 0})
    assert all(r.prefix_id is None for r in none.build(range(1000)))


# --- output lengths and body ------------------------------------------------------------------


def test_exact_output_and_extra_body_go_into_each_request(tok: ModelTokenizer) -> None:
    w = workload(tok, input_tokens=8, output_tokens="10:20", exact_output=True, extra_body={"top_k": 1})
    for r in w.build(range(50)):
        assert r.extra_body == {"top_k": 1, "min_tokens": r.max_tokens, "ignore_eos": True}
    plain = workload(tok, input_tokens=8, output_tokens=5)
    assert plain.build([0])[0].extra_body is None


def test_prompt_set_keeps_per_prompt_max_tokens(tok: ModelTokenizer) -> None:
    prompts = [
        {"id": "a", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 7},
        {
            "id": "b",
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}],
            "max_tokens": None,
        },
    ]
    w = build_workload(WorkloadSpec(), seed=0, default_max_tokens=(20, 30), prompts=prompts, counter=tok)
    reqs = w.build(range(200))
    assert {r.prompt_id for r in reqs} == {"a", "b"}
    assert all(r.max_tokens == 7 for r in reqs if r.prompt_id == "a")
    assert all(20 <= r.max_tokens <= 30 for r in reqs if r.prompt_id == "b")
    assert all(r.messages == prompts[1]["messages"] for r in reqs if r.prompt_id == "b")


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"input_tokens": "10", "bogus": 1}, "bogus"),
        ({"dataset": "x.jsonl", "input_tokens": "normal:10,2"}, "range of prompt lengths"),
        ({"conversation": {}}, "conversation.turns is needed"),
        ({"dataset": {"path": "x", "conversations": "whole"}}, "needs a `conversation` section"),
        ({"dataset": {"path": "x", "too_long": "truncate"}}, "truncate needs input_tokens"),
        ({"shared_prefix": {"tokens": 5, "share": 1.5}}, "share"),
        ({"max_requests": 0}, "max_requests"),
        ({"conversation": {"turns": "0"}}, "at least 1"),
    ],
)
def test_workload_section_rejects_bad_fields(section: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        WorkloadSpec.model_validate(section)


def test_every_field_is_described() -> None:
    from harness.workload import ConversationSpec, DatasetSpec, SharedPrefixSpec

    for model in (WorkloadSpec, DatasetSpec, ConversationSpec, SharedPrefixSpec):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"


def test_build_errors_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="give input_tokens, a dataset, or a prompt set"):
        build_workload(WorkloadSpec(), seed=0)
    with pytest.raises(InputError, match="needs the model's tokenizer"):
        build_workload(WorkloadSpec.model_validate({"dataset": str(EXAMPLE), "input_tokens": "1:5"}), seed=0)
    with pytest.raises(InputError, match="tokenizer file not found"):
        ModelTokenizer.from_path(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(InputError, match="not a tokenizers JSON file"):
        ModelTokenizer.from_path(tmp_path)


# --- calibration (logic only; the real host's is in test_workload_foundry.py) ------------------


def test_calibration_fits_slope_and_offset_and_says_it_is_calibrated() -> None:
    seen: list[int] = []

    def probe(messages: list[dict[str, str]]) -> int:
        words = len(messages[0]["content"].split())
        seen.append(words)
        return round(1.25 * words) + 9  # a made-up host: 1.25 tokens per word, 9 for the template

    cal = calibrate(probe)
    assert seen == [16, 64, 256]
    assert cal.calibrated and cal.describe()["method"] == "calibrated"
    assert cal.tokens_per_word == pytest.approx(1.25, abs=0.01) and cal.offset == pytest.approx(9, abs=0.6)
    w = build_workload(WorkloadSpec(input_tokens="100", output_tokens=4), seed=0, counter=cal)
    r = w.build([0])[0]
    assert len(r.messages[0]["content"].split()) == 80 and r.expected_prompt_tokens is None
    assert w.describe()["lengths"]["method"] == "calibrated"
    whole = build_workload(
        WorkloadSpec(input_tokens="100", output_tokens=4, count_template=True), seed=0, counter=cal
    )
    # The template's fitted 9 tokens come out of the 100: (100 - 9) / 1.25 words.
    assert len(whole.build([0])[0].messages[0]["content"].split()) == 73
    with pytest.raises(InputError, match="did not grow"):
        calibrate(lambda m: 5)
    assert all(" " not in w for w in PLAIN_WORDS)


# --- chat templates beyond the shipped one ------------------------------------------------------


def test_template_from_tokenizer_config_list_with_hf_features(tmp_path: Path) -> None:
    """A `tokenizer_config.json` holding named templates (no chat_template.jinja), using what
    Hugging Face templates use: bos_token, loop controls, namespace, tojson, raise_exception."""
    import json
    import shutil

    shutil.copy(TINY / "tokenizer.json", tmp_path / "tokenizer.json")
    template = (
        "{{ bos_token }}{% set ns = namespace(n=0) %}{% for m in messages %}"
        "{% if m['role'] == 'tool' %}{{ raise_exception('no tools here') }}{% endif %}"
        "{% set ns.n = ns.n + 1 %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% if loop.last %}{{ {'turns': ns.n} | tojson }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<|endoftext|>"},
                "chat_template": [
                    {"name": "tool_use", "template": "x"},
                    {"name": "default", "template": template},
                ],
            }
        )
    )
    tok = ModelTokenizer.from_path(tmp_path / "tokenizer.json")
    text = tok.render([{"role": "user", "content": "hi"}])
    assert text == '<|endoftext|><|im_start|>user\nhi<|im_end|>\n{"turns": 1}<|im_start|>assistant\n'
    w = build_workload(WorkloadSpec(input_tokens="1:300", output_tokens=4), seed=2, counter=tok)
    assert w.exact and w.user_offset == tok.prompt_tokens([{"role": "user", "content": ""}])
    for r in w.build(range(50)):
        assert tok.prompt_tokens(r.messages) == r.expected_prompt_tokens
    with pytest.raises(InputError, match="chat template failed to render \\(no tools here\\)"):
        tok.render([{"role": "tool", "content": "x"}])
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(InputError, match="chat template line 1"):
        ModelTokenizer.from_path(tmp_path)


def test_refill_step_counts_requests_not_conversations(tok: ModelTokenizer) -> None:
    w = workload(tok, input_tokens=8, output_tokens=4, conversation={"turns": "list:2,6"})
    assert w.mean_turns() == 4
    assert RequestPool(w, prebuild=4096, step=256).step == 64
    whole = workload(
        tok, dataset={"path": str(EXAMPLE), "conversations": "whole"}, conversation={}, output_tokens=4
    )
    mean = sum(len(e.turns) for e in whole.entries or []) / len(whole.entries or [1])
    assert whole.mean_turns() == mean and RequestPool(whole, step=256).step == round(256 / mean)
