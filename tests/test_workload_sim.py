"""Conversations over the wire, against the simulated host (`harness serve sim`) on 127.0.0.1.

Four-turn conversations split over two workers' pools with an exact request limit: every turn's
request carries the earlier turns with the host's actual replies, which the simulated host's own
count shows (its `usage.prompt_tokens` is ceil(characters / 4) of all message contents it received),
and its `/sim/stats` counts exactly the requests the limit allows.
"""

from __future__ import annotations

import orjson
from harness_helpers import sim_host

from harness.client import Connection, chat_body
from harness.workload import Conversation, RequestPool, WorkloadSpec, build_workload


def test_four_turn_conversations_carry_their_history_on_the_wire() -> None:
    spec = WorkloadSpec.model_validate(
        {"input_tokens": "16:48", "output_tokens": 6, "conversation": {"turns": 4}, "max_requests": 12}
    )
    w = build_workload(spec, seed=3)
    pools = [RequestPool(w, worker=k, workers=2, max_requests=spec.max_requests) for k in range(2)]
    seen: dict[str, list[int]] = {}
    sent = 0
    with sim_host("--ttft-ms", "1", "--itl-ms", "1") as host:
        conn = Connection(host.base_url)
        for pool in pools:
            while (session := pool.take()) is not None:
                conv = Conversation(session)
                replies: list[str] = []
                while not conv.done:
                    req = conv.next_request()
                    # The history: every earlier user turn, each followed by the host's actual reply.
                    assert [m["content"] for m in req.messages[1::2]] == replies
                    body = chat_body(host.models[0], req.messages, max_tokens=req.max_tokens)
                    res = conn.chat(body, keep_text=True)
                    sent += 1
                    assert res.ok, res.error_detail
                    chars = sum(len(m["content"]) for m in req.messages)
                    assert res.input_tokens == max(1, (chars + 3) // 4)
                    assert res.output_tokens == 6 and res.text
                    seen.setdefault(req.session_id or "", []).append(res.input_tokens or 0)
                    assert req.turn == len(seen[req.session_id or ""])
                    replies.append(res.text)
                    conv.add_reply(res.text)
        status, _, raw = _stats(host.base_url)
        conn.close()
    assert sent == 12 and sorted(seen) == ["s0", "s1", "s2"]
    for counts in seen.values():
        assert len(counts) == 4 and counts == sorted(counts) and len(set(counts)) == 4, counts
    stats = orjson.loads(raw)
    assert status == 200 and stats["chat_requests"] == 12 and stats["tokens"] == 12 * 6


def _stats(base_url: str) -> tuple[int, dict[str, str], bytes]:
    root = base_url.rsplit("/v1", 1)[0]
    conn = Connection(root)
    try:
        return conn.get("/sim/stats")
    finally:
        conn.close()
