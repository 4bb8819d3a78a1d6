"""Send one request, get one record: the single path every request of the harness takes.

A `Request` says what to ask and how the record should be labelled; `Sender.send` builds the body,
streams it over a `harness.client.Connection`, turns the client's stamps into a `Record`
(`harness.records.record_from_result`), hands it to the sender's `emit` (a spool, a list) and
returns it. Used by the Locust users, the warm-up, `harness bench` and the connection probe.

Every request sent is exactly one record: a request cut by the caller's stop signal (Ctrl-C in a
thread, a killed greenlet in Locust) is recorded as `stopped` before the signal goes on.
No Locust and no gevent here; inside a Locust process the client's sockets are gevent's.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.client import ChatResult, Connection, chat_body
from harness.records import Record, record_from_result, worker_id

__all__ = ["Request", "Sender"]


@dataclass(slots=True)
class Request:
    """One chat completion to send, and the labels its record carries. (Not frozen: a frozen
    dataclass costs ~1.5 µs more to build, once per request on the load generator's event loop.)"""

    host: str
    """The target's base URL, as records name it."""
    model: str
    prompt_id: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    stream: bool = True
    body_extra: dict[str, Any] | None = None
    """Extra fields of the request body (the scenario's `request.extra`)."""
    keep_text: bool = False
    stage: str = ""
    warmup: bool = False
    sched_unix_ns: int | None = None
    """When the request was due (open loop); None: due when sent."""
    users: int = 0
    tags: dict[str, Any] | None = None
    """Copied into the record's `extra` (retry attempt, bench round, ...)."""
    session_id: str | None = None
    turn: int | None = None
    requested_input_tokens: int | None = None
    requested_output_tokens: int | None = None
    shared_prefix_tokens: int = 0


class Sender:
    """Sends requests of one run from one process and numbers their records.

    `emit` gets every record (before `send` returns it, and before a stop signal goes on).
    Safe to share between threads: record numbers come from one atomic counter.
    """

    def __init__(
        self,
        run_id: str,
        emit: Callable[[Record], None],
        *,
        worker: str | None = None,
        seq_start: int = 0,
        stop: type[BaseException] = KeyboardInterrupt,
        stop_detail: str = "interrupted (Ctrl-C)",
    ) -> None:
        self.run_id = run_id
        self.emit = emit
        self.worker = worker or worker_id()
        self._seq = itertools.count(seq_start)
        self._stop = stop
        self._stop_detail = stop_detail

    def send(self, conn: Connection, req: Request, *, result: ChatResult | None = None) -> Record:
        """Send `req` over `conn` and return its record. Pass `result` to see the client's own
        result too (e.g. `retry_after_s`)."""
        res = result if result is not None else ChatResult()
        body = chat_body(
            req.model,
            req.messages,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            stream=req.stream,
            extra=req.body_extra,
        )
        try:
            conn.chat(body, stream=req.stream, keep_text=req.keep_text, result=res)
        except self._stop:
            res.fail("stopped", self._stop_detail)
            res.end_ns = res.end_ns or time.perf_counter_ns()
            self._record(res, req, conn.policy)
            raise
        return self._record(res, req, conn.policy)

    def _record(self, res: ChatResult, req: Request, policy: str) -> Record:
        rec = record_from_result(
            res,
            run_id=self.run_id,
            worker=self.worker,
            host=req.host,
            model=req.model,
            stage=req.stage,
            prompt_id=req.prompt_id,
            warmup=req.warmup,
            sched_unix_ns=req.sched_unix_ns,
            users=req.users,
            seq=next(self._seq),
            stream=req.stream,
            max_tokens=req.max_tokens,
            connection=policy,
            session_id=req.session_id,
            turn=req.turn,
            requested_input_tokens=req.requested_input_tokens,
            requested_output_tokens=req.requested_output_tokens,
            shared_prefix_tokens=req.shared_prefix_tokens,
        )
        if req.tags:
            rec.extra.update(req.tags)
        self.emit(rec)
        return rec
