"""Locust glue: user classes that stream chat completions and record every request.

Thin on purpose: a user picks a prompt and a model, hands the request to the streaming client
(`harness.client`), turns the result into a `Record`, spools it, and fires a few Locust events
(`TTFT`, `TPOT`, `E2E`; never one per token) so the web UI shows live figures. A failure fires one
`E2E` failure, so Locust's `E2E` request count equals the number of records.

Per process, a `_Harness` state (plan, sinks, stage clock, arrivals, self-monitoring) is made
lazily on first use: after `--processes` forks, and on workers after the master's spawn message
has brought the plan, the start time and the worker list.

Where records go: a single process appends to `RUN_DIR/records.jsonl`; a worker appends to its own
spool `RUN_DIR/spool/<host>-<pid>.jsonl` and sends new records with each stats report
(`report_to_master`), and the master appends them to `records.jsonl`. Client self-monitoring
(`client_metrics.jsonl`: CPU and event-loop lag per process and second) travels the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import orjson
import psutil
from gevent import GreenletExit
from locust import User, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from harness import weblogin  # noqa: F401  (registers the web UI login)
from harness.client import ChatResult, Connection, chat_body
from harness.errors import HarnessError
from harness.loadplan import Arrivals, Stage, stage_at
from harness.plan import Plan, read_api_key
from harness.records import Record, Spool, record_from_result, worker_id

__all__ = ["RECORD_OBSERVERS", "ChatUser"]

#: Called with every measured record (as a dict) in the process that sees them all: the single
#: process of a local run, or the master. The web UI's live LLM figures subscribe here.
RECORD_OBSERVERS: list[Callable[[dict[str, Any]], None]] = []

log = logging.getLogger("harness")


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    # Locust's own parser (not an argument group) knows `include_in_web_ui`.
    parser.add_argument(
        "--scenario",
        default=os.environ.get("HARNESS_SCENARIO", ""),
        help="scenario file (YAML) for a plain locust run; hosts come from it or from --host",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--run-dir", default="", help="run folder (default results/<run id>)", include_in_web_ui=False
    )
    for hidden in ("--harness-plan", "--harness-plan-json", "--harness-t0", "--harness-workers"):
        parser.add_argument(hidden, default="", help=argparse.SUPPRESS, include_in_web_ui=False)


# --- per-process state ---------------------------------------------------------------------
_env: Environment | None = None
_plan: Plan | None = None
_state: _Harness | None = None
_master_records: Spool | None = None
_master_client: Spool | None = None
_master_counts: dict[str, int] = {}


def _option(environment: Environment, name: str) -> str:
    opts = environment.parsed_options
    return str(vars(opts).get(name) or "") if opts is not None else ""


def _plan_of(environment: Environment) -> Plan:
    """The plan of this run, built once per process: from `harness run` (a path; inline JSON on
    workers), else from `--scenario`/`--host` for a plain locust run."""
    global _plan
    if _plan is None:
        if text := _option(environment, "harness_plan_json"):
            _plan = Plan.from_json(text)
        elif path := _option(environment, "harness_plan"):
            _plan = Plan.from_json(Path(path).read_bytes())
        else:
            from harness.standalone import plan_for_plain_locust

            _plan = plan_for_plain_locust(environment)
    return _plan


class _Harness:
    """Per-process state of a process that runs users."""

    def __init__(self, environment: Environment, plan: Plan) -> None:
        self.env = environment
        self.plan = plan
        self.scenario = plan.scenario_obj()
        self.stages = [Stage(**s) for s in plan.stages]
        self.worker = worker_id()
        self.seq = 0
        self.inflight = 0
        self.kernel_stamps: bool | None = None
        """Whether this process's reads carry kernel receive stamps (then a late event loop does not
        shift token times); None until a connection has been opened."""
        self.inflight_by: Counter[tuple[str, str]] = Counter()
        """Requests in flight per (host URL, model), for the web UI's live figures."""
        self.user_index = 0
        self._swrr = [0.0] * len(plan.targets)
        self.t0_unix_ns = int(_option(environment, "harness_t0") or time.time_ns())
        run_dir = Path(plan.run_dir)
        if not run_dir.is_dir():  # a worker on another machine: spool locally
            run_dir = Path("results") / plan.run_id
        self.is_worker = isinstance(environment.runner, WorkerRunner)
        me = self.worker.replace(":", "-")
        if self.is_worker:
            self.records = Spool(run_dir / "spool" / f"{me}.records.jsonl")
            self.client_metrics = Spool(run_dir / "spool" / f"{me}.client.jsonl")
        else:
            self.records = Spool(run_dir / "records.jsonl")
            self.client_metrics = Spool(run_dir / "client_metrics.jsonl")
        self.unsent: list[bytes] = []
        self.unsent_metrics: list[bytes] = []
        self.timeouts = self.scenario.timeouts.timeouts()
        self.keys = {i: read_api_key(tg.api_key_env, tg.api_key_file) for i, tg in enumerate(plan.targets)}
        self.arrivals = self._arrivals(environment)
        self._greenlets = [gevent.spawn(self._flush_loop), gevent.spawn(self._monitor_loop)]

    def _arrivals(self, environment: Environment) -> Arrivals:
        workers = [w for w in _option(environment, "harness_workers").split(",") if w]
        runner = environment.runner
        me = getattr(runner, "client_id", "") if self.is_worker else ""
        index, count = (workers.index(me), len(workers)) if me in workers else (0, 1)
        return Arrivals(
            self.stages, index=index, count=count, seed=f"{self.scenario.seed}:{self.plan.run_id}"
        )

    # --- clocks and stages
    def elapsed_s(self) -> float:
        return (time.time_ns() - self.t0_unix_ns) / 1e9

    def stage(self, at_s: float | None = None) -> Stage:
        t = self.elapsed_s() if at_s is None else at_s
        return stage_at(self.stages, t) or (self.stages[-1] if t >= 0 else self.stages[0])

    # --- users over hosts
    def next_target(self) -> int:
        """Smooth weighted round robin: users spread over hosts by weight, deterministically."""
        weights = [t.weight for t in self.plan.targets]
        total = sum(weights)
        for i, w in enumerate(weights):
            self._swrr[i] += w
        best = max(range(len(weights)), key=lambda i: self._swrr[i])
        self._swrr[best] -= total
        return best

    # --- outputs
    def emit(self, rec: Record) -> None:
        line = rec.to_json()  # once: serialising runs on the event loop that stamps the reads
        self.records.append_line(line)
        if self.is_worker:
            self.unsent.append(line)
        elif RECORD_OBSERVERS:
            _notify(rec.to_dict())

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(0.5)
            self.records.flush()
            self.client_metrics.flush()

    def _monitor_loop(self) -> None:
        """Once a second: this process's CPU and how late the event loop wakes sleepers.

        A loaded gevent loop delays every socket read as much as it delays this sleep, so loop lag
        bounds the timestamp error of the records taken in the same second."""
        proc = psutil.Process()
        proc.cpu_percent(None)
        tick = 0.05
        lags: list[float] = []
        next_report = time.monotonic() + 1.0
        while True:
            t = time.perf_counter()
            gevent.sleep(tick)
            lags.append(max(0.0, (time.perf_counter() - t - tick) * 1000))
            if time.monotonic() >= next_report:
                next_report += 1.0
                lags.sort()
                sample = {
                    "worker": self.worker,
                    "t_unix_ns": time.time_ns(),
                    "stage": self.stage().name,
                    "cpu_percent": proc.cpu_percent(None),
                    "loop_lag_ms_p50": round(lags[len(lags) // 2], 3),
                    "loop_lag_ms_p99": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 3),
                    "loop_lag_ms_max": round(lags[-1], 3),
                    "users": self.env.runner.user_count if self.env.runner else 0,
                    "inflight": self.inflight,
                    "kernel_stamps": self.kernel_stamps,
                }
                lags = []
                self.client_metrics.append(sample)
                if self.is_worker:
                    self.unsent_metrics.append(orjson.dumps(sample))

    def close(self) -> None:
        for g in self._greenlets:
            g.kill(block=False)
        self.records.close()
        self.client_metrics.close()


def state(environment: Environment) -> _Harness:
    global _state
    if _state is None:
        _state = _Harness(environment, _plan_of(environment))
    return _state


def _notify(record: dict[str, Any]) -> None:
    for observer in RECORD_OBSERVERS:
        try:
            observer(record)
        except Exception:  # an observer's bug must never cost a record
            log.exception("record observer failed")


# --- Locust events -------------------------------------------------------------------------
@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    global _env, _master_records, _master_client
    _env = environment
    runner = environment.runner
    if isinstance(runner, WorkerRunner):

        @environment.events.report_to_master.add_listener
        def _report(client_id: str, data: dict[str, Any]) -> None:
            if _state is not None:
                if _state.unsent:
                    data["harness_records"], _state.unsent = _state.unsent, []
                if _state.unsent_metrics:
                    data["harness_client"], _state.unsent_metrics = _state.unsent_metrics, []

        return
    gevent.signal_handler(signal.SIGTERM, _graceful_stop, environment)
    try:
        plan = _plan_of(environment)
    except HarnessError as exc:
        sys.stderr.write(f"harness: {exc}\n")
        sys.exit(exc.exit_code)
    if environment.parsed_options is not None:
        # Workers (local or remote) get the plan itself in the spawn message, not a path.
        environment.parsed_options.harness_plan_json = plan.to_json().decode()
    if isinstance(runner, MasterRunner):
        _master_records = Spool(Path(plan.run_dir) / "records.jsonl")
        _master_client = Spool(Path(plan.run_dir) / "client_metrics.jsonl")

        @environment.events.worker_report.add_listener
        def _collect(client_id: str, data: dict[str, Any]) -> None:
            lines = data.get("harness_records")
            if lines and _master_records is not None:
                for line in lines:
                    obj = orjson.loads(line)
                    _master_records.append(obj)
                    _notify(obj)
                _master_counts[client_id] = _master_counts.get(client_id, 0) + len(lines)
            for line in data.get("harness_client") or []:
                if _master_client is not None:
                    _master_client.append(orjson.loads(line))


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return
    opts = environment.parsed_options
    if opts is not None:
        # The stage clock and the open-loop split, sent to workers with the spawn message.
        first = Stage(**_plan_of(environment).stages[0])
        # An open-loop first stage starts once its users exist: arrivals due while users are still
        # spawning would all be late, and that lateness would be the harness's, not the host's.
        lead_s = min(first.users / first.spawn_rate, 10.0) + 0.5 if first.rate else 0.0
        opts.harness_t0 = str(time.time_ns() + int(lead_s * 1e9))
        if isinstance(runner, MasterRunner):
            opts.harness_workers = ",".join(sorted(w.id for w in runner.clients.all))
    if _option(environment, "harness_plan"):
        return  # `harness run` did the warm-up before starting Locust
    from harness.warmup import run_warmup

    sink = _master_records if _master_records is not None else state(environment).records
    for rec in run_warmup(_plan_of(environment), sink.append):
        log.warning("warm-up failed on %s %s: %s %s", rec.host, rec.model, rec.error, rec.error_detail)
    sink.flush()


@events.quit.add_listener
def _on_quit(exit_code: int, **_: Any) -> None:
    """After the runner stopped (so users killed mid-stream have written their `stopped` records):
    close the sinks, and write Locust's own final counts for the orchestrator's record check
    (its CSV is written on a timer and can miss the last second)."""
    if _state is not None:
        _state.close()
    for sink in (_master_records, _master_client):
        if sink is not None:
            sink.close()
    env = _env
    if env is None or env.runner is None or isinstance(env.runner, WorkerRunner) or _plan is None:
        return
    counts: dict[str, dict[str, int]] = {}
    for (_name, method), entry in env.runner.stats.entries.items():
        c = counts.setdefault(method, {"requests": 0, "failures": 0})
        c["requests"] += entry.num_requests
        c["failures"] += entry.num_failures
    out = {"counts": counts, "exit_code": exit_code, "workers": dict(_master_counts)}
    (Path(_plan.run_dir) / "locust_counts.json").write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))


def _graceful_stop(environment: Environment) -> None:
    """SIGTERM: stop the users (streams in flight become `stopped` records), then let Locust shut
    down as at the end of a run. Locust installs its own SIGTERM handler only after a headless
    shape test has finished, so until then this one is needed."""
    log.warning("SIGTERM: stopping the run")
    runner = environment.runner
    if runner is not None:
        gevent.spawn(runner.quit)


# --- the user ------------------------------------------------------------------------------
class ChatUser(User):
    """One user: one connection to one host, one stream at a time.

    Closed-loop stages: send, wait for the end of the stream (and the think time), send again.
    Open-loop stages: take the next scheduled arrival of this process, wait for its time, send;
    when every user is busy an arrival waits, and that wait is recorded as dispatch delay.
    """

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
        # Locust starts a batch of users at once each second; without a random first wait they
        # would send, and with fixed lengths keep sending, in lock-step (measurement.md: the first
        # wave inflates the tail). Open-loop users wait for their arrivals instead.
        if sc.load.stagger and not st.stage().rate:
            gevent.sleep(self.rng.uniform(0, sc.load.stagger))

    def on_stop(self) -> None:
        self.conn.close()

    @task
    def chat(self) -> None:
        # Yield once first: a stop that Locust issued between two tasks lands here, before a new
        # request is sent, instead of cutting that request (a spurious `stopped` record).
        gevent.sleep(0)
        st = self.h
        stage = st.stage()
        sched_unix_ns = None
        if stage.rate:
            arrival = st.arrivals.next()
            if arrival is None:  # this process has sent its share; idle until the run ends
                gevent.sleep(1.0)
                return
            at_s, stage = arrival
            sched_unix_ns = st.t0_unix_ns + int(at_s * 1e9)
            wait = (sched_unix_ns - time.time_ns()) / 1e9
            if wait > 0:
                gevent.sleep(wait)
        self._send(stage, sched_unix_ns)
        if self.connect_failures:
            # A host that is down answers at once; back off (50 ms doubling to 1 s) instead of
            # hammering it and flooding the records, as any real client would.
            gevent.sleep(min(1.0, 0.05 * 2 ** (self.connect_failures - 1)))
        elif not stage.rate:
            think = st.scenario.load.think_time
            pause = think if isinstance(think, int | float) else self.rng.uniform(think[0], think[1])
            if pause:
                gevent.sleep(pause)

    def _send(self, stage: Stage, sched_unix_ns: int | None) -> None:
        st = self.h
        rq = st.scenario.request
        retry = st.scenario.retry
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
        prev_seq: int | None = None
        for attempt in range(retry.max_retries + 1):
            res = ChatResult()
            users = st.env.runner.user_count if st.env.runner else 0
            st.inflight += 1
            st.inflight_by[(self.target.url, model)] += 1
            try:
                self.conn.chat(body, stream=rq.stream, keep_text=rq.keep_text, result=res)
            except GreenletExit:
                res.fail("stopped", "run stopped while the request was in flight")
                res.end_ns = time.perf_counter_ns()
                self._record(
                    res, stage, model, prompt["id"], max_tokens, users, sched_unix_ns, attempt, prev_seq
                )
                raise
            finally:
                st.inflight -= 1
                st.inflight_by[(self.target.url, model)] -= 1
            self.connect_failures = self.connect_failures + 1 if res.error == "connect" else 0
            if st.kernel_stamps is None and res.reads:
                st.kernel_stamps = self.conn.kernel_stamps
            prev_seq = self._record(
                res, stage, model, prompt["id"], max_tokens, users, sched_unix_ns, attempt, prev_seq
            )
            if res.error != "http_429" or retry.on_429 != "retry" or attempt == retry.max_retries:
                return
            # Every attempt was sent, so every attempt is a record; the retry honours Retry-After.
            wait = res.retry_after_s if res.retry_after_s is not None else retry.backoff_s * 2**attempt
            gevent.sleep(min(wait, retry.max_backoff_s))
            sched_unix_ns = None

    def _record(
        self,
        res: ChatResult,
        stage: Stage,
        model: str,
        prompt_id: str,
        max_tokens: int,
        users: int,
        sched: int | None,
        attempt: int = 0,
        retry_of: int | None = None,
    ) -> int:
        """Write the record and fire the Locust events; returns the record's seq."""
        st = self.h
        rec = record_from_result(
            res,
            run_id=st.plan.run_id,
            worker=st.worker,
            host=self.target.url,
            model=model,
            stage=stage.name,
            prompt_id=prompt_id,
            warmup=False,
            sched_unix_ns=sched,
            users=users,
            seq=st.seq,
            stream=st.scenario.request.stream,
            max_tokens=max_tokens,
            connection=st.scenario.connection,
        )
        if attempt:
            rec.extra["attempt"] = attempt
            rec.extra["retry_of"] = retry_of
        st.seq += 1
        st.emit(rec)
        fire = self.environment.events.request.fire
        name = f"{model} @ {self.target.label}"
        tokens = rec.output_tokens or 0
        failure = None if rec.ok else RuntimeError(f"{rec.error}: {rec.error_detail}")
        for kind, ms, exc in (
            ("TTFT", rec.ttft_ms, None),
            ("TPOT", rec.tpot_ms if rec.ok else None, None),
            ("E2E", rec.e2e_ms or 0.0, failure),
        ):
            if ms is not None:
                fire(
                    request_type=kind,
                    name=name,
                    response_time=ms,
                    response_length=tokens,
                    exception=exc,
                    context={},
                )
        return rec.seq
