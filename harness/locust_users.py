"""Locust glue: user classes that stream chat completions and record every request.

Thin on purpose: a user picks a prompt and a model, hands the request to the streaming client
(`harness.client`), turns the result into a `Record`, spools it, and fires three Locust events
(`TTFT`, `TPOT`, `E2E`; never one per token) so the web UI shows live figures. Failures fire one
`E2E` failure, so Locust's `E2E` request count equals the number of records.

Per process: a `_Harness` state (plan, spool, counters) made lazily on first use, so it works
before and after `--processes` forks and on workers that receive the plan from the master.
Records travel worker -> master in `report_to_master`, the master appends them to
`records.jsonl`; every worker also keeps its own spool in `RUN_DIR/spool/`.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import orjson
from gevent import GreenletExit
from locust import User, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from harness.client import ChatResult, Connection, Timeouts, chat_body
from harness.errors import HarnessError
from harness.plan import Plan, read_api_key
from harness.records import Record, Spool, record_from_result, worker_id

__all__ = ["ChatUser"]

log = logging.getLogger("harness")


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    # Locust's own parser (not an argument group) knows `include_in_web_ui`.
    parser.add_argument(
        "--scenario",
        default=os.environ.get("HARNESS_SCENARIO", ""),
        help="scenario file (YAML) for a plain locust run; hosts come from it or from --host",
    )
    parser.add_argument(
        "--run-dir", default="", help="run folder (default results/<run id>)", include_in_web_ui=False
    )
    parser.add_argument("--harness-plan", default="", help=argparse.SUPPRESS, include_in_web_ui=False)
    parser.add_argument("--harness-plan-json", default="", help=argparse.SUPPRESS, include_in_web_ui=False)


class _Harness:
    """Per-process state: the plan, where records go, and counters."""

    def __init__(self, environment: Environment, plan: Plan) -> None:
        self.env = environment
        self.plan = plan
        self.scenario = plan.scenario_obj()
        self.worker = worker_id()
        self.seq = 0
        self.inflight = 0
        self.user_index = 0
        self._swrr = [0.0] * len(plan.targets)
        runner = environment.runner
        run_dir = Path(plan.run_dir)
        if not run_dir.is_dir():  # a worker on another machine: spool locally
            run_dir = Path("results") / plan.run_id
        self.is_worker = isinstance(runner, WorkerRunner)
        if self.is_worker:
            self.spool = Spool(run_dir / "spool" / f"{self.worker.replace(':', '-')}.jsonl")
        else:
            self.spool = Spool(run_dir / "records.jsonl")
        self.unsent: list[bytes] = []
        t = self.scenario.timeouts
        self.timeouts = Timeouts(t.connect_s, t.first_token_s, t.idle_s, t.total_s)
        self.keys = {i: read_api_key(tg.api_key_env, tg.api_key_file) for i, tg in enumerate(plan.targets)}
        self._flusher = gevent.spawn(self._flush_loop)

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(0.5)
            self.spool.flush()

    def next_target(self) -> int:
        """Smooth weighted round robin: users spread over hosts by weight, deterministically."""
        weights = [t.weight for t in self.plan.targets]
        total = sum(weights)
        for i, w in enumerate(weights):
            self._swrr[i] += w
        best = max(range(len(weights)), key=lambda i: self._swrr[i])
        self._swrr[best] -= total
        return best

    def emit(self, rec: Record) -> None:
        line = rec.to_json()
        self.spool.append(rec)
        if self.is_worker:
            self.unsent.append(line)

    def close(self) -> None:
        self._flusher.kill(block=False)
        self.spool.close()


_state: _Harness | None = None
_master_sink: Spool | None = None
_master_counts: dict[str, int] = {}


_plan: Plan | None = None


def _plan_from_options(environment: Environment) -> Plan:
    """The plan of this run: from `harness run` (a path, or inline JSON on workers), else built
    from `--scenario`/`--host` for a plain locust run. Built once per process."""
    global _plan
    if _plan is None:
        _plan = _load_plan(environment)
    return _plan


def _load_plan(environment: Environment) -> Plan:
    opts = environment.parsed_options
    if opts is not None and vars(opts).get("harness_plan_json"):
        return Plan.from_json(opts.harness_plan_json)
    if opts is not None and vars(opts).get("harness_plan"):
        return Plan.from_json(Path(opts.harness_plan).read_bytes())
    from harness.standalone import plan_for_plain_locust

    return plan_for_plain_locust(environment)


def state(environment: Environment) -> _Harness:
    global _state
    if _state is None:
        _state = _Harness(environment, _plan_from_options(environment))
    return _state


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    global _env
    _env = environment
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner_report = environment.events.report_to_master

        @runner_report.add_listener
        def _report(client_id: str, data: dict[str, Any]) -> None:
            if _state is not None and _state.unsent:
                data["harness_records"] = _state.unsent
                _state.unsent = []

        return
    try:
        plan = _plan_from_options(environment)
    except HarnessError as exc:
        sys.stderr.write(f"harness: {exc}\n")
        sys.exit(exc.exit_code)
    if environment.parsed_options is not None:
        # Workers (local or remote) get the plan itself in the spawn message, not a path.
        environment.parsed_options.harness_plan_json = plan.to_json().decode()
    if isinstance(runner, MasterRunner):
        global _master_sink
        _master_sink = Spool(Path(plan.run_dir) / "records.jsonl")

        @environment.events.worker_report.add_listener
        def _collect(client_id: str, data: dict[str, Any]) -> None:
            lines = data.get("harness_records")
            if lines and _master_sink is not None:
                for line in lines:
                    _master_sink.append(orjson.loads(line))
                _master_counts[client_id] = _master_counts.get(client_id, 0) + len(lines)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    opts = environment.parsed_options
    if opts is not None and vars(opts).get("harness_plan"):
        return  # `harness run` did the warm-up before starting Locust
    from harness.warmup import run_warmup

    plan = _plan_from_options(environment)
    sink = _master_sink if _master_sink is not None else state(environment).spool
    failed = run_warmup(plan, sink.append)
    sink.flush()
    for rec in failed:
        log.warning("warm-up failed on %s %s: %s %s", rec.host, rec.model, rec.error, rec.error_detail)


_env: Environment | None = None


@events.quit.add_listener
def _on_quit(exit_code: int, **_: Any) -> None:
    """After the runner stopped: Locust's own final counts, for the orchestrator's record check.
    (Its CSV is written on a timer and can miss the last second.)"""
    env = _env
    if env is None or env.runner is None or isinstance(env.runner, WorkerRunner) or _plan is None:
        return
    counts: dict[str, dict[str, int]] = {}
    for (name, method), entry in env.runner.stats.entries.items():
        c = counts.setdefault(method, {"requests": 0, "failures": 0})
        c["requests"] += entry.num_requests
        c["failures"] += entry.num_failures
    out = {"counts": counts, "exit_code": exit_code, "workers": dict(_master_counts)}
    (Path(_plan.run_dir) / "locust_counts.json").write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    if _state is not None:
        _state.close()
    if _master_sink is not None:
        _master_sink.close()


class ChatUser(User):
    """One user: one connection to one host, one stream at a time (closed loop)."""

    def on_start(self) -> None:
        st = state(self.environment)
        self.h = st
        idx = st.next_target()
        st.user_index += 1
        self.target = st.plan.targets[idx]
        sc = st.scenario
        self.conn = Connection(
            self.target.url, policy=sc.connection, timeouts=st.timeouts, api_key=st.keys[idx]
        )
        # Seeded per user: same scenario seed, same request sequence; users differ so they never
        # move in lock-step (fixed lengths and no think time make the client's own skew worse).
        self.rng = random.Random(f"{sc.seed}:{st.worker}:{st.user_index}")
        self.prompts = st.plan.prompts
        self.connect_failures = 0

    def on_stop(self) -> None:
        self.conn.close()

    @task
    def chat(self) -> None:
        st = self.h
        sc = st.scenario
        rq = sc.request
        prompt = self.rng.choice(self.prompts)
        model = self.rng.choice(self.target.models)
        mt = prompt.get("max_tokens") or rq.max_tokens
        max_tokens = mt if isinstance(mt, int) else self.rng.randint(mt[0], mt[1])
        body = chat_body(
            model,
            prompt["messages"],
            max_tokens=max_tokens,
            temperature=rq.temperature,
            stream=rq.stream,
            extra=rq.extra,
        )
        res = ChatResult()
        users = st.env.runner.user_count if st.env.runner else 0
        st.inflight += 1
        try:
            self.conn.chat(body, stream=rq.stream, keep_text=rq.keep_text, result=res)
        except GreenletExit:
            res.fail("stopped", "run stopped while the request was in flight")
            res.end_ns = time.perf_counter_ns()
            self._record(res, model, prompt["id"], max_tokens, users)
            raise
        finally:
            st.inflight -= 1
        self._record(res, model, prompt["id"], max_tokens, users)
        if res.error == "connect":
            # A host that is down answers at once; back off (50 ms doubling to 1 s) instead of
            # hammering it and flooding the records, as any real client would.
            self.connect_failures += 1
            gevent.sleep(min(1.0, 0.05 * 2 ** (self.connect_failures - 1)))
            return
        self.connect_failures = 0
        think = sc.load.think_time
        pause = think if isinstance(think, int | float) else self.rng.uniform(think[0], think[1])
        if pause:
            gevent.sleep(pause)

    def _record(self, res: ChatResult, model: str, prompt_id: str, max_tokens: int, users: int) -> None:
        st = self.h
        rec = record_from_result(
            res,
            run_id=st.plan.run_id,
            worker=st.worker,
            host=self.target.url,
            model=model,
            stage=st.plan.stage,
            prompt_id=prompt_id,
            warmup=False,
            sched_unix_ns=None,
            users=users,
            seq=st.seq,
            stream=st.scenario.request.stream,
            max_tokens=max_tokens,
            connection=st.scenario.connection,
        )
        st.seq += 1
        st.emit(rec)
        fire = self.environment.events.request.fire
        name = f"{model} @ {self.target.label}"
        exc = None if rec.ok else RuntimeError(f"{rec.error}: {rec.error_detail}")
        tokens = rec.output_tokens or 0
        if rec.ttft_ms is not None:
            fire(
                request_type="TTFT",
                name=name,
                response_time=rec.ttft_ms,
                response_length=tokens,
                exception=None,
                context={},
            )
        if rec.tpot_ms is not None and rec.ok:
            fire(
                request_type="TPOT",
                name=name,
                response_time=rec.tpot_ms,
                response_length=tokens,
                exception=None,
                context={},
            )
        fire(
            request_type="E2E",
            name=name,
            response_time=rec.e2e_ms or 0.0,
            response_length=tokens,
            exception=exc,
            context={},
        )
