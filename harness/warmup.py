"""Warm-up: a few requests per host and model before measuring, recorded with `warmup: true`.

Run with the blocking client before the Locust users start (by `harness run`, or by the Locust
process of a plain `locust -f locustfiles/chat.py`). A warm-up that fails tells early, with the
host and model named, that the run would measure nothing but errors.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.client import Connection
from harness.plan import Plan, read_api_key
from harness.records import Record
from harness.send import Request, Sender

__all__ = ["run_warmup"]


def run_warmup(plan: Plan, emit: Callable[[Record], None], *, seq_start: int = 0) -> list[Record]:
    """Send `warmup.requests` requests to every (host, model); returns the failed records."""
    sc = plan.scenario_obj()
    n = sc.warmup.requests
    if n <= 0:
        return []
    prompts = plan.prompts
    mt = sc.request.max_tokens
    max_tokens = mt if isinstance(mt, int) else mt[0]
    timeouts = sc.timeouts.timeouts()
    sender = Sender(plan.run_id, emit, seq_start=seq_start)
    failed = []
    for target in plan.targets:
        conn = Connection(
            target.url,
            policy=sc.connection,
            timeouts=timeouts,
            api_key=read_api_key(target.api_key_env, target.api_key_file),
        )
        try:
            for model in target.models:
                for i in range(n):
                    prompt = prompts[i % len(prompts)]
                    req = Request(
                        host=target.url,
                        model=model,
                        prompt_id=prompt["id"],
                        messages=prompt["messages"],
                        max_tokens=prompt.get("max_tokens") or max_tokens,
                        temperature=sc.request.temperature,
                        stream=sc.request.stream,
                        body_extra=sc.request.extra,
                        stage="warmup",
                        warmup=True,
                    )
                    rec = sender.send(conn, req)
                    if not rec.ok:
                        failed.append(rec)
        finally:
            conn.close()
    return failed
