"""The send path: one request in, one record out, against the simulated host; a cut request is one
`stopped` record and the stop goes on."""

from __future__ import annotations

import orjson
import pytest
from harness_helpers import sim_host

from harness.client import ChatResult, Connection
from harness.records import Record
from harness.send import Request, Sender


def _chat_requests(base_url: str) -> int:
    conn = Connection(base_url.rsplit("/v1", 1)[0])
    try:
        status, _, body = conn.get("/sim/stats")
    finally:
        conn.close()
    assert status == 200
    return int(orjson.loads(body)["chat_requests"])


def test_each_send_is_one_record_with_the_hosts_own_count() -> None:
    with sim_host("--ttft-ms", "20", "--itl-ms", "2") as sim:
        model = sim.models[0]
        emitted: list[Record] = []
        sender = Sender("run-1", emitted.append, worker="w:1", seq_start=5)
        conn = Connection(sim.base_url, policy="new")
        try:
            req = Request(
                host=sim.base_url,
                model=model,
                prompt_id="p",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=8,
                stage="s1",
                users=3,
                tags={"round": 2},
            )
            returned = [sender.send(conn, req) for _ in range(3)]
        finally:
            conn.close()
        sent = _chat_requests(sim.base_url)
    assert sent == 3 and returned == emitted
    assert [r.seq for r in emitted] == [5, 6, 7]
    r = emitted[0]
    assert (r.run_id, r.worker, r.host, r.model, r.stage, r.users) == (
        "run-1",
        "w:1",
        sim.base_url,
        model,
        "s1",
        3,
    )
    assert r.ok and r.output_tokens == 8 and r.connection == "new" and r.extra == {"round": 2}
    # The sim's TTFT is 20 ms: the record's, from the one definition, is a little above (two-sided).
    assert r.ttft_ms is not None and 20.0 <= r.ttft_ms < 20.0 + 200.0
    assert r.e2e_ms is not None and r.ttft_ms < r.e2e_ms


class _Stop(BaseException):
    pass


class _CutConnection:
    """A connection whose stream is cut by the caller's stop signal after the first token."""

    policy = "reuse"

    def chat(self, body: bytes, *, stream: bool, keep_text: bool, result: ChatResult) -> ChatResult:
        result.sent_ns, result.sent_unix_ns = 1_000_000, 1_700_000_000_000_000_000
        result.first_byte_ns = result.first_token_ns = result.last_token_ns = 3_000_000
        result.token_ns.append(3_000_000)
        raise _Stop


def test_a_stopped_request_is_recorded_then_the_stop_goes_on() -> None:
    emitted: list[Record] = []
    sender = Sender("run-1", emitted.append, stop=_Stop, stop_detail="stopped by the test")
    req = Request(host="http://h/v1", model="m", prompt_id="p", messages=[], max_tokens=4)
    with pytest.raises(_Stop):
        sender.send(_CutConnection(), req)  # type: ignore[arg-type]
    assert len(emitted) == 1
    r = emitted[0]
    assert (r.ok, r.error, r.error_detail) == (False, "stopped", "stopped by the test")
    assert r.ttft_ms == 2.0 and r.event_offsets_us == [2000] and r.e2e_ms is not None and r.e2e_ms > 0
