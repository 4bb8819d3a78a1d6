"""Locust glue: user classes that stream chat completions and record every request.

Thin on purpose: a user picks a prompt and a model, hands the request to the streaming client
(`harness.client`), turns the result into a `Record`, spools it, and shows it to Locust as one
`E2E` request (a failure as one `E2E` failure), with its `TTFT` and `TPOT` as entries outside
Locust's totals (`harness.locust.counters`): Locust's totals, requests/s and failures count LLM
requests, and its `E2E` count equals the number of records.

Per process, one `HarnessProcess` (`PROCESS`) holds all state: the plan (built on first use), the
master's sinks, and the `UserState` of a process that runs users (sinks, stage clock, arrivals,
self-monitoring), made lazily after `--processes` forks, and on workers after the master's spawn
message has brought the plan, the start time and the worker list. The web UI uses only its public
methods (`plan_of`, `option`, `refresh`, `inflight`, `observers`).

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
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import orjson
import psutil
from gevent import GreenletExit
from locust import User, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.rpc import Message
from locust.runners import STATE_MISSING, STATE_STOPPED, MasterRunner, WorkerRunner

from harness.client import ChatResult, Connection
from harness.errors import HarnessError
from harness.locust import weblogin  # noqa: F401  (registers the web UI login)
from harness.locust.counters import show_record
from harness.plan import Plan, read_api_key
from harness.records import Record, worker_id
from harness.rundir import RunDir, Spool
from harness.send import Request, Sender
from harness.shapes import Arrivals, Stage, stage_at
from harness.workload import Conversation, RequestPool, SessionSpec
from harness.workload import RequestSpec as WorkItem
from harness.workload_run import workload_from_plan

__all__ = ["PROCESS", "RECORD_OBSERVERS", "ChatUser", "HarnessProcess", "UserState"]

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


class UserState:
    """The state of a process that runs users: sinks, stage clock, arrivals, self-monitoring."""

    def __init__(self, environment: Environment, plan: Plan) -> None:
        self.env = environment
        self.plan = plan
        self.scenario = plan.scenario_obj()
        self.stages = [Stage(**s) for s in plan.stages]
        self.worker = worker_id()
        self.labels = {t.url: t.label for t in plan.targets}
        self.sender = Sender(
            plan.run_id,
            self.emit,
            worker=self.worker,
            stop=GreenletExit,
            stop_detail="run stopped while the request was in flight",
        )
        self.inflight = 0
        self.kernel_stamps: bool | None = None
        """Whether this process's reads carry kernel receive stamps (then a late event loop does not
        shift token times); None until a connection has been opened."""
        self.first_token_watch: bool | None = None
        """Whether the first-token watcher (`harness.client.firsttoken`) looks after this process's
        sockets (then a late read does not move the first token's stamp either); None likewise."""
        self.inflight_by: Counter[tuple[str, str]] = Counter()
        """Requests in flight per (host URL, model), for the web UI's live figures."""
        self.user_index = 0
        self._swrr = [0.0] * len(plan.targets)
        self.t0_unix_ns = int(option(environment, "harness_t0") or time.time_ns())
        run_dir = Path(plan.run_dir)
        if not run_dir.is_dir():  # a worker on another machine: spool locally
            run_dir = Path("results") / plan.run_id
        self.is_worker = isinstance(environment.runner, WorkerRunner)
        rd = RunDir(run_dir)
        if self.is_worker:
            records_path, client_path = rd.worker_spools(self.worker)
        else:
            records_path, client_path = rd.records, rd.client_metrics
        self.records = Spool(records_path)
        self.client_metrics = Spool(client_path)
        self.unsent: list[bytes] = []
        self.unsent_metrics: list[bytes] = []
        self.timeouts = self.scenario.timeouts.timeouts()
        self.keys = {i: read_api_key(tg.api_key_env, tg.api_key_file) for i, tg in enumerate(plan.targets)}
        self.worker_index = self._worker_slot(environment)[0]
        self.arrivals = self._arrivals(environment)
        self.pool: RequestPool | None = None
        """This process's share of the scenario's workload, built ahead (None: the prompt set)."""
        self.conversations = 0
        """Conversations users of this process hold and have not finished."""
        self.taken = 0
        """Requests taken from the pool and not yet answered (an open-loop one may still wait for
        its time): the share is not done while any is."""
        self.orphans: deque[tuple[WorkItem | None, Conversation | None]] = deque()
        """Work a stopped user left (a stage with fewer users): a request taken but never sent, or
        a conversation's remaining turns; the next user to ask takes it before the pool, so a
        request limit stays exact."""
        self.done = False
        """Every request of this process's share is sent and answered (a request limit was met)."""
        self.late = False
        """A worker that joined after the test started: the workload was split among the workers
        there were, so it has no share and sends no workload request."""
        # Built here, when the first user starts: before this process sends anything.
        self._build_pool(environment)
        self._greenlets = [gevent.spawn(self._flush_loop), gevent.spawn(self._monitor_loop)]

    def _build_pool(self, environment: Environment) -> None:
        workload = workload_from_plan(self.plan)
        if workload is None:
            return
        spec = self.scenario.workload
        assert spec is not None
        self.late = self._joined_late(environment)
        if self.late:
            log.warning(
                "worker %s joined after the test started: the workload was split among the "
                "workers there were, so it sends no workload requests",
                self.worker,
            )
        index, count = self._worker_slot(environment)
        self.pool = RequestPool(
            workload, worker=index, workers=count, max_requests=spec.max_requests, prebuild=spec.prebuild
        )

    def restart(self, environment: Environment) -> None:
        """A new test in this process (the web UI's Start after a stop, a request limit's too): the
        stage clock, the arrivals and this process's share of the workload start over, as for the
        first test. Without this a limit met once left the pool empty and `done` set, so a second
        Start sent nothing and never stopped."""
        self.t0_unix_ns = int(option(environment, "harness_t0") or time.time_ns())
        self.worker_index = self._worker_slot(environment)[0]
        self.arrivals = self._arrivals(environment)
        self.conversations = 0
        self.taken = 0
        self.orphans.clear()
        self.done = False
        self.pool = None
        self._build_pool(environment)

    def _worker_slot(self, environment: Environment) -> tuple[int, int]:
        """(index, count) of this process among the run's workers; (0, 1) when it runs alone."""
        workers = [w for w in option(environment, "harness_workers").split(",") if w]
        me = getattr(environment.runner, "client_id", "") if self.is_worker else ""
        return (workers.index(me), len(workers)) if me in workers else (0, 1)

    def _joined_late(self, environment: Environment) -> bool:
        """A worker missing from the master's list of the run's workers (made at test start)."""
        workers = [w for w in option(environment, "harness_workers").split(",") if w]
        me = getattr(environment.runner, "client_id", "")
        return self.is_worker and bool(workers) and me not in workers

    def _arrivals(self, environment: Environment) -> Arrivals:
        index, count = self._worker_slot(environment)
        return Arrivals(
            self.stages, index=index, count=count, seed=f"{self.scenario.seed}:{self.plan.run_id}"
        )

    def pool_exhausted(self) -> None:
        """A user found the pool empty: once nothing is in flight and no conversation is open, this
        process's share is done. Alone, it ends the run; a worker tells the master in its next
        report, and the master ends the run when every worker is done."""
        if self.done or self.taken or self.conversations:
            return
        self.done = True
        self.records.flush()
        if not self.is_worker and self.env.runner is not None:
            log.info("every request of the workload's limit is sent: stopping")
            _end_run(self.env, self.env.runner)

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
        """Spool a measured record (and queue it for the master, or show it to observers), then
        fire its Locust events."""
        line = rec.to_json()  # once: serialising runs on the event loop that stamps the reads
        self.records.append_line(line)
        if self.is_worker:
            self.unsent.append(line)
        elif PROCESS.observers:
            PROCESS.notify(rec.to_dict())
        self._fire(rec)

    def _fire(self, rec: Record) -> None:
        """One Locust `E2E` request per record, with `TTFT` and `TPOT` entries outside Locust's
        totals (`harness.locust.counters`), so the web UI shows live figures."""
        show_record(self.env, rec, f"{rec.model} @ {self.labels[rec.host]}")

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
                    "elapsed_s": round(self.elapsed_s(), 3),
                    "cpu_percent": proc.cpu_percent(None),
                    "loop_lag_ms_p50": round(lags[len(lags) // 2], 3),
                    "loop_lag_ms_p99": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 3),
                    "loop_lag_ms_max": round(lags[-1], 3),
                    "users": self.env.runner.user_count if self.env.runner else 0,
                    "inflight": self.inflight,
                    # Per host and model, for `harness run`'s progress display (harness.progress).
                    "inflight_by": [[h, m, n] for (h, m), n in self.inflight_by.items() if n],
                    "kernel_stamps": self.kernel_stamps,
                    "first_token_watch": self.first_token_watch,
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


def option(environment: Environment, name: str) -> str:
    """A command-line option of this Locust process, as text ('' when unset)."""
    opts = environment.parsed_options
    return str(vars(opts).get(name) or "") if opts is not None else ""


class HarnessProcess:
    """All harness state of one Locust process (one instance: `PROCESS`)."""

    def __init__(self) -> None:
        self.env: Environment | None = None
        self.plan: Plan | None = None
        self.users: UserState | None = None
        """Made on first use by a user (processes that run users only)."""
        self.master_records: Spool | None = None
        self.master_client: Spool | None = None
        self.master_counts: dict[str, int] = {}
        """Records received per worker (master only)."""
        self.master_final: set[str] = set()
        """Workers whose report since the master's `quit` came after their users had stopped: it
        carried their last records (master only)."""
        self.master_done: set[str] = set()
        """Workers that have sent their whole share of a request limit (master only)."""
        self.master_quitting = False
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        """Called with every measured record (as a dict) in the process that sees them all: the single
        process of a local run, or the master. The web UI's live LLM figures subscribe here."""

    def plan_of(self, environment: Environment) -> Plan:
        """The plan of this run, built once per process: from `harness run` (a path; inline JSON on
        workers), else from `--scenario`/`--host` for a plain locust run."""
        if self.plan is None:
            if text := option(environment, "harness_plan_json"):
                self.plan = Plan.from_json(text)
            elif path := option(environment, "harness_plan"):
                self.plan = Plan.from_json(Path(path).read_bytes())
            else:
                from harness.locust.standalone import plan_for_plain_locust

                self.plan = plan_for_plain_locust(environment)
        return self.plan

    def user_state(self, environment: Environment) -> UserState:
        if self.users is None:
            self.users = UserState(environment, self.plan_of(environment))
        return self.users

    def refresh(self, plan: Plan) -> None:
        """The plan changed in place (web UI choices): derive again what the users cached from it."""
        st = self.users
        if st is None:
            return
        st.scenario = plan.scenario_obj()
        st.keys = {i: read_api_key(t.api_key_env, t.api_key_file) for i, t in enumerate(plan.targets)}
        st.labels = {t.url: t.label for t in plan.targets}
        st._swrr = [0.0] * len(plan.targets)

    def inflight(self) -> tuple[int, Counter[tuple[str, str]]]:
        """Requests in flight in this process: (total, per (host URL, model))."""
        st = self.users
        if st is None:
            return 0, Counter()
        return st.inflight, Counter({k: v for k, v in st.inflight_by.items() if v})

    def notify(self, record: dict[str, Any]) -> None:
        for observer in self.observers:
            try:
                observer(record)
            except Exception:  # an observer's bug must never cost a record
                log.exception("record observer failed")


PROCESS = HarnessProcess()
#: `PROCESS.observers`, under the name the architecture notes give it.
RECORD_OBSERVERS = PROCESS.observers


# --- Locust events -------------------------------------------------------------------------
@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    PROCESS.env = environment
    runner = environment.runner
    if isinstance(runner, WorkerRunner):

        @environment.events.report_to_master.add_listener
        def _report(client_id: str, data: dict[str, Any]) -> None:
            # Once this worker's users have stopped, this report carries its last records.
            data["harness_final"] = runner.state == STATE_STOPPED
            st = PROCESS.users
            if st is not None and st.done:
                # Which test's share is done: a report sent before a new test's spawn message
                # reached this worker (web UI, second Start) must not end that new test.
                data["harness_done"] = st.t0_unix_ns
            if st is not None:
                if st.unsent:
                    data["harness_records"], st.unsent = st.unsent, []
                if st.unsent_metrics:
                    data["harness_client"], st.unsent_metrics = st.unsent_metrics, []

        return
    gevent.signal_handler(signal.SIGTERM, _graceful_stop, environment)
    try:
        plan = PROCESS.plan_of(environment)
    except HarnessError as exc:
        sys.stderr.write(f"harness: {exc}\n")
        sys.exit(exc.exit_code)
    if environment.parsed_options is not None:
        # Workers (local or remote) get the plan itself in the spawn message, not a path.
        environment.parsed_options.harness_plan_json = plan.to_json().decode()
    if isinstance(runner, MasterRunner):
        rd = RunDir(Path(plan.run_dir))
        records = PROCESS.master_records = Spool(rd.records)
        client = PROCESS.master_client = Spool(rd.client_metrics)

        runner.quit = lambda: _master_quit(environment, runner)  # type: ignore[method-assign]

        @environment.events.worker_report.add_listener
        def _collect(client_id: str, data: dict[str, Any]) -> None:
            if data.get("harness_final"):
                PROCESS.master_final.add(client_id)
            else:
                PROCESS.master_final.discard(client_id)
            done, t0 = data.get("harness_done"), option(environment, "harness_t0")
            if done is not None and (not t0 or done == int(t0)):
                _worker_done(environment, runner, client_id)
            lines = data.get("harness_records")
            if lines:
                for line in lines:
                    obj = orjson.loads(line)
                    records.append(obj)
                    PROCESS.notify(obj)
                PROCESS.master_counts[client_id] = PROCESS.master_counts.get(client_id, 0) + len(lines)
            for line in data.get("harness_client") or []:
                client.append(orjson.loads(line))
            # One write per worker report: the report's records are on disk now, not at the next
            # report (`harness run`'s progress reads them from records.jsonl; a crash loses less).
            records.flush()
            client.flush()


def _worker_done(environment: Environment, runner: MasterRunner, client_id: str) -> None:
    """A worker has sent (and reported) its whole share of a request limit: when every worker has,
    the run is over. Its report carried its last records, so none is lost by quitting now."""
    PROCESS.master_done.add(client_id)
    live = {c.id for c in runner.clients.all if c.state != STATE_MISSING}
    if live and live <= PROCESS.master_done and not PROCESS.master_quitting:
        PROCESS.master_quitting = True
        log.info("every worker has sent its share of the request limit: stopping")
        _end_run(environment, runner)


def _end_run(environment: Environment, runner: Any) -> None:
    """A request limit was met: a headless run quits (the orchestrator then counts the records);
    a web UI session stops the test and stays up, as after its Stop button."""
    gevent.spawn(runner.stop if environment.web_ui is not None else runner.quit)


def _master_quit(environment: Environment, runner: MasterRunner) -> None:
    """Locust's `MasterRunner.quit` (2.47), but waiting for each worker's last report instead of 0.5 s.

    A worker told to quit first stops its users, which may take up to `--stop-timeout` while their
    streams finish, and only then sends its last report, carrying the records of those streams.
    Locust's master stops listening 0.5 s after `quit`, so those records (and Locust's own count of
    them) never reached it: on another machine they were lost without a word."""
    runner.stop(send_stop_to_client=False)
    # Only a report sent after this `quit` counts: one from an earlier stop (web UI) or from before
    # the test started says nothing of the records since.
    PROCESS.master_final.clear()
    for client in runner.clients.all:
        runner.server.send_to_client(Message("quit", None, client.id))
    deadline = time.monotonic() + float(environment.stop_timeout or 0) + 10.0
    while True:
        # A worker leaves `clients` when it says it quits, after its last report (one socket, in
        # order); a dead one goes missing after a few heartbeats.
        waiting = [
            c.id for c in runner.clients.all if c.state != STATE_MISSING and c.id not in PROCESS.master_final
        ]
        if not waiting:
            break
        if time.monotonic() > deadline:
            log.warning("no last report from worker(s) %s: their last records may be missing", waiting)
            break
        gevent.sleep(0.05)
    runner.greenlet.kill(block=True)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        # The spawn message has brought this test's options (stage clock, the run's workers).
        if PROCESS.users is not None:
            PROCESS.users.restart(environment)
        return
    # A second test in this process (web UI): a request limit is counted afresh.
    PROCESS.master_done.clear()
    PROCESS.master_quitting = False
    opts = environment.parsed_options
    if opts is not None:
        # The stage clock and the open-loop split, sent to workers with the spawn message.
        first = Stage(**PROCESS.plan_of(environment).stages[0])
        # An open-loop first stage starts once its users exist: arrivals due while users are still
        # spawning would all be late, and that lateness would be the harness's, not the host's.
        lead_s = min(first.users / first.spawn_rate, 10.0) + 0.5 if first.rate else 0.0
        opts.harness_t0 = str(time.time_ns() + int(lead_s * 1e9))
        if isinstance(runner, MasterRunner):
            opts.harness_workers = ",".join(sorted(w.id for w in runner.clients.all))
    if PROCESS.users is not None:
        PROCESS.users.restart(environment)
    if option(environment, "harness_plan"):
        return  # `harness run` did the warm-up before starting Locust
    from harness.warmup import run_warmup

    sink = PROCESS.master_records or PROCESS.user_state(environment).records
    for rec in run_warmup(PROCESS.plan_of(environment), sink.append):
        log.warning("warm-up failed on %s %s: %s %s", rec.host, rec.model, rec.error, rec.error_detail)
    sink.flush()


@events.quit.add_listener
def _on_quit(exit_code: int, **_: Any) -> None:
    """After the runner stopped (so users killed mid-stream have written their `stopped` records):
    close the sinks, and write Locust's own final counts for the orchestrator's record check
    (Locust writes its CSV on a timer; `harness.locust.counters` writes it once more at quit)."""
    if PROCESS.users is not None:
        PROCESS.users.close()
    for sink in (PROCESS.master_records, PROCESS.master_client):
        if sink is not None:
            sink.close()
    env, plan = PROCESS.env, PROCESS.plan
    if env is None or env.runner is None or isinstance(env.runner, WorkerRunner) or plan is None:
        return
    counts: dict[str, dict[str, int]] = {}
    for (_name, method), entry in env.runner.stats.entries.items():
        c = counts.setdefault(method, {"requests": 0, "failures": 0})
        c["requests"] += entry.num_requests
        c["failures"] += entry.num_failures
    total = env.runner.stats.total
    out = {
        "counts": counts,
        # Locust's Aggregated row: one request per LLM request (harness.locust.counters).
        "total": {"requests": total.num_requests, "failures": total.num_failures},
        "exit_code": exit_code,
        "workers": dict(PROCESS.master_counts),
    }
    RunDir(Path(plan.run_dir)).locust_counts.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))


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
        st = PROCESS.user_state(self.environment)
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
        # The worker's place in the run, not its pid: a pid differs from run to run.
        self.rng = random.Random(f"{sc.seed}:{st.worker_index}:{st.user_index}")
        self.prompts = st.plan.prompts
        self.connect_failures = 0
        self.conv: Conversation | None = None
        """The conversation this user holds (a workload with conversations)."""
        self.unsent: WorkItem | None = None
        """The request taken and not yet sent (an open-loop one waits for its time)."""
        self.awaiting_reply = False
        """A turn of the held conversation was sent and its answer is not in the history yet: a
        user stopped now adds an empty answer before handing the conversation on."""
        # Locust starts a batch of users at once each second; without a random first wait they
        # would send, and with fixed lengths keep sending, in lock-step (the first wave inflates the
        # tail: the report's "first wave" diagnostic). Open-loop users wait for their arrivals instead.
        if sc.load.stagger and not st.stage().rate:
            gevent.sleep(self.rng.uniform(0, sc.load.stagger))

    def on_stop(self) -> None:
        self._hand_back()
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
        item = None
        if st.pool is not None:
            # A late worker has no share: taking (0, 1)'s would send the whole workload again.
            item = None if st.late else self._next_item()
            if item is None:  # this process's share of the request limit is sent
                st.pool_exhausted()
                raise StopUser()
        if item is not None:
            st.taken += 1
            self.unsent = item
            self.awaiting_reply = self.conv is not None
        try:
            if sched_unix_ns is not None:
                wait = (sched_unix_ns - time.time_ns()) / 1e9
                if wait > 0:
                    gevent.sleep(wait)
            res = self._send(stage, sched_unix_ns, item)
        finally:
            if item is not None:
                st.taken -= 1
        if self.conv is not None:
            # The host's actual answer is the next turn's history (a failed turn: an empty one).
            self.conv.add_reply(res.text if res.ok else None)
            self.awaiting_reply = False
        if st.pool is not None:
            st.pool.refill()  # between sends, never inside one
        if self.connect_failures:
            # A host that is down answers at once; back off (50 ms doubling to 1 s) instead of
            # hammering it and flooding the records, as any real client would.
            gevent.sleep(min(1.0, 0.05 * 2 ** (self.connect_failures - 1)))
        elif not stage.rate:
            think = st.scenario.load.think_time
            pause = think if isinstance(think, int | float) else self.rng.uniform(think[0], think[1])
            if pause:
                gevent.sleep(pause)

    def _next_item(self) -> WorkItem | None:
        """The next request of the workload: the held conversation's next turn, else the pool's next
        item (a request, or a conversation to hold); None when the pool is exhausted."""
        st = self.h
        assert st.pool is not None
        if self.conv is not None:
            if not self.conv.done:
                return self.conv.next_request()
            self._drop_conversation()
        while st.orphans:
            item, conv = st.orphans.popleft()
            self.conv = conv  # still counted in st.conversations
            if item is not None:
                return item
            if conv is not None and not conv.done:
                return conv.next_request()
            self._drop_conversation()
        while (item := st.pool.take()) is not None:
            if not isinstance(item, SessionSpec):
                return item
            if item.turns:
                self.conv = Conversation(item)
                st.conversations += 1
                return self.conv.next_request()
        return None

    def _hand_back(self) -> None:
        """A stopping user leaves its unsent request or its conversation's remaining turns to the
        process's other users (a turn cut mid-stream was recorded as `stopped`: it counts as sent)."""
        st = self.h
        conv, self.conv = self.conv, None
        if self.unsent is not None:
            st.orphans.append((self.unsent, conv))
            self.unsent = None
        elif conv is not None:
            if self.awaiting_reply:
                conv.add_reply(None)
            if conv.done:
                st.conversations -= 1
            else:
                st.orphans.append((None, conv))
        self.awaiting_reply = False

    def _drop_conversation(self) -> None:
        if self.conv is not None:
            self.conv = None
            self.h.conversations -= 1

    def _send(self, stage: Stage, sched_unix_ns: int | None, item: WorkItem | None = None) -> ChatResult:
        st = self.h
        rq = st.scenario.request
        retry = st.scenario.retry
        keep_text = rq.keep_text
        body_extra = rq.extra
        fields: dict[str, Any] = {}
        if item is None:
            prompt = self.rng.choice(self.prompts)
            model = self.rng.choice(self.target.models)
            mt = prompt.get("max_tokens") or rq.max_tokens
            max_tokens = mt if isinstance(mt, int) else self.rng.randint(mt[0], mt[1])
            prompt_id, messages = prompt["id"], prompt["messages"]
        else:
            # By the item's global index: the same request goes to the same model whichever
            # worker sends it (a conversation's turns all go to one model).
            model = self.target.models[item.index % len(self.target.models)]
            prompt_id, messages, max_tokens = item.prompt_id, item.messages, item.max_tokens
            if item.extra_body:
                body_extra = {**rq.extra, **item.extra_body}
            fields = {
                "session_id": item.session_id,
                "turn": item.turn,
                "requested_input_tokens": item.requested_input_tokens,
                "requested_output_tokens": item.requested_output_tokens,
                "shared_prefix_tokens": item.prefix_tokens,
            }
            # A conversation feeds the answer back: the client must keep its text.
            keep_text = keep_text or item.session_id is not None
        inflight_key = (self.target.url, model)
        prev_seq: int | None = None
        res = ChatResult()
        for attempt in range(retry.max_retries + 1):
            req = Request(
                host=self.target.url,
                model=model,
                prompt_id=prompt_id,
                messages=messages,
                max_tokens=max_tokens,
                temperature=rq.temperature,
                stream=rq.stream,
                body_extra=body_extra,
                keep_text=keep_text,
                stage=stage.name,
                sched_unix_ns=sched_unix_ns,
                users=st.env.runner.user_count if st.env.runner else 0,
                # Every attempt was sent, so every attempt is a record, linked to the one before.
                tags={"attempt": attempt, "retry_of": prev_seq} if attempt else None,
                **fields,
            )
            res = ChatResult()
            st.inflight += 1
            st.inflight_by[inflight_key] += 1
            self.unsent = None  # from here on a stop leaves a `stopped` record: it was sent
            try:
                # A stop mid-stream (GreenletExit) is recorded as `stopped` by the sender, then raised.
                rec = st.sender.send(self.conn, req, result=res)
            finally:
                st.inflight -= 1
                st.inflight_by[inflight_key] -= 1
            self.connect_failures = self.connect_failures + 1 if res.error == "connect" else 0
            if st.kernel_stamps is None and res.reads:
                st.kernel_stamps = self.conn.kernel_stamps
                st.first_token_watch = self.conn.first_token_watch
            prev_seq = rec.seq
            if res.error != "http_429" or retry.on_429 != "retry" or attempt == retry.max_retries:
                return res
            # The retry honours Retry-After.
            wait = res.retry_after_s if res.retry_after_s is not None else retry.backoff_s * 2**attempt
            gevent.sleep(min(wait, retry.max_backoff_s))
            sched_unix_ns = None
        return res
