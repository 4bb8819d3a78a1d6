"""`harness run`: one scenario, one run folder.

Order of work: validate the scenario -> start embedded hosts (child processes) -> probe hosts and
resolve models -> warm-up -> Locust as a child process (gevent lives only there) -> stop hosts ->
collect and count records -> manifest -> report. Whatever happens after the run folder exists,
the records already written stay on disk and the manifest says how the run ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from harness import thresholds
from harness.errors import CheckFailed, HarnessError, HostError, InputError
from harness.hosts import is_loopback
from harness.plan import Plan, Target, build_targets, prompt_dicts
from harness.progress import Progress, lag_for
from harness.recover import recover_run, scan_records, spool_files
from harness.rundir import RunDir, Spool, machine, make_run_dir, new_run_id, utc, versions, write_json
from harness.scenario import HostSpec, Scenario
from harness.servers.ready import ChildHost, start_child_host
from harness.shapes import Stage, stages_for, total_duration
from harness.warmup import run_warmup
from harness.webauth import PASSWORD_ENV, USER_ENV
from harness.workload_run import check_workload_files, plan_workload

__all__ = [
    "DEFAULT_EMBEDDED",
    "HostSampler",
    "RunOptions",
    "RunOutcome",
    "execute_run",
    "log_tail",
    "options_to_flags",
    "sample_rss_now",
]

#: What `harness run` starts when the scenario names no host.
DEFAULT_EMBEDDED = "foundry"


LOCUSTFILE = Path(__file__).parent / "locust" / "locustfile.py"
LOCUSTFILE_STAGED = Path(__file__).parent / "locust" / "locustfile_staged.py"


@dataclass
class RunOptions:
    scenario: Scenario
    scenario_path: Path | None
    out: Path = Path("results")
    run_id: str | None = None
    workers: int = 0
    master: bool = False
    expect_workers: int = 0
    master_bind_host: str = "*"
    master_bind_port: int = 5557
    web: bool = False
    web_host: str = "127.0.0.1"
    web_port: int = 8089
    report: bool = True
    progress: bool = True
    """Live progress on stderr while a headless run loads (harness.progress); `--quiet` turns it off."""
    progress_interval_s: float = 5.0
    command_line: list[str] = field(default_factory=lambda: list(sys.argv))
    started_hosts: dict[int, StartedHost] | None = None
    """Embedded hosts the caller already started (`start_embedded_hosts`), by index in
    `scenario.hosts`: the run uses them (and records their kind and pid) instead of starting its own;
    the caller stops them. `harness capacity` starts them once for all its steps."""


@dataclass
class RunOutcome:
    run_dir: Path
    exit_code: int
    table: str
    problems: list[str]
    hints: list[str] = field(default_factory=list)
    """One line per wire pattern the report named, for the console after the table."""


StartedHost = tuple[str, str | None, int | None]
"""(base URL, embedded kind, pid) of a host the harness started, as `plan.build_targets` takes it."""


def start_embedded_hosts(
    hosts: list[HostSpec], log_path: Callable[[int, str], Path], children: list[ChildHost]
) -> dict[int, StartedHost]:
    """Start every embedded host of `hosts` on a free port, logging to `log_path(index, kind)`.
    Each started child is appended to `children` as soon as it runs, so a caller's cleanup stops
    it even when a later one fails to start. Returns them by index in `hosts`."""
    urls: dict[int, StartedHost] = {}
    for i, spec in enumerate(hosts):
        if spec.embedded:
            sys.stderr.write(f"harness: starting embedded {spec.embedded} host\n")
            child = start_child_host(
                spec.embedded,
                ["--port", "0", *options_to_flags(spec.options)],
                log_path=log_path(i, spec.embedded),
            )
            children.append(child)
            urls[i] = (child.base_url, spec.embedded, child.pid)
    return urls


def options_to_flags(options: dict[str, Any]) -> list[str]:
    """`{ttft_ms: 100, model: [a, b], foundry_quirks: true}` -> `--ttft-ms 100 --model a --model b --foundry-quirks`."""
    flags: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is True:
                flags.append(flag)
            elif v is False or v is None:
                continue
            else:
                flags += [flag, str(v)]
    return flags


class HostSampler:
    """Samples resident memory and CPU of local host processes (by pid) into host_metrics.jsonl."""

    def __init__(self, path: Path, pids: dict[str, int], interval_s: float = 0.5) -> None:
        self.path = path
        self.pids = pids
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="host-sampler")

    def start(self) -> None:
        if self.pids:
            self._thread.start()

    def _loop(self) -> None:
        import psutil

        procs = {}
        for url, pid in self.pids.items():
            with contextlib.suppress(psutil.Error):
                procs[url] = psutil.Process(pid)
                procs[url].cpu_percent(None)
        with open(self.path, "ab") as fh:
            while not self._stop.wait(self.interval_s):
                now = time.time_ns()
                for url, p in procs.items():
                    try:
                        with p.oneshot():
                            rss = p.memory_info().rss
                            cpu = p.cpu_percent(None)
                    except psutil.Error:
                        continue
                    fh.write(
                        orjson.dumps({"host": url, "t_unix_ns": now, "rss_bytes": rss, "cpu_percent": cpu})
                        + b"\n"
                    )
                fh.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def _manifest(
    opts: RunOptions, run_id: str, started: float, targets: list[Target], extra: dict[str, Any]
) -> dict[str, Any]:
    sc = opts.scenario.model_dump(mode="json")
    return {
        "run_id": run_id,
        "scenario_file": str(opts.scenario_path) if opts.scenario_path else None,
        "scenario": sc,
        "versions": versions("locust", "foundry-local-sdk"),
        "machine": machine(),
        "started_utc": utc(started),
        "hosts": [
            {
                "url": t.url,
                "label": t.label,
                "flavour": t.flavour,
                "models": t.asked,
                "weight": t.weight,
                "embedded": t.embedded,
                "pid": t.pid,
                "down_since_utc": t.down_since_utc,
            }
            for t in targets
        ],
        "connection": opts.scenario.connection,
        "stages": [s.to_dict() for s in stages_for(opts.scenario.load)],
        "command_line": opts.command_line,
        **extra,
    }


def sample_rss_now(path: Path, url: str, pid: int | None) -> None:
    """One host memory sample now, beside the sampler's periodic ones: a model benched between two
    ticks still gets its start and end sampled. One O_APPEND write, so lines never interleave."""
    if pid is None:
        return
    import psutil

    try:
        rss = psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return
    line = orjson.dumps({"host": url, "t_unix_ns": time.time_ns(), "rss_bytes": rss, "cpu_percent": None})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line + b"\n")
    finally:
        os.close(fd)


def _locust_command(opts: RunOptions, plan_path: Path, run_dir: RunDir, stages: list[Stage]) -> list[str]:
    load = opts.scenario.load
    cmd = [sys.executable, "-m", "locust"]
    if opts.web:
        # No shape in the web UI: the user moves the user count; the scenario gives the defaults.
        first = stages[0]
        cmd += ["-f", str(LOCUSTFILE), "--web-host", opts.web_host, "--web-port", str(opts.web_port)]
        cmd += ["-u", str(first.users), "-r", f"{first.spawn_rate:g}"]
        if not is_loopback(opts.web_host):
            cmd += ["--web-login"]
    else:
        cmd += ["-f", str(LOCUSTFILE_STAGED), "--headless", "--only-summary"]
    cmd += ["--harness-plan", str(plan_path), "--run-dir", str(run_dir.path)]
    cmd += ["--stop-timeout", f"{load.stop_timeout:g}", "--exit-code-on-error", "0", "--loglevel", "WARNING"]
    cmd += ["--csv", str(run_dir.locust_csv_prefix), "--html", str(run_dir.locust_html)]
    if opts.workers:
        # Local workers talk to their master over loopback, on a port of their own: two runs on
        # one machine must not meet on Locust's default 5557.
        port = str(_free_port())
        cmd += ["--processes", str(opts.workers), "--master-bind-host", "127.0.0.1"]
        cmd += ["--master-bind-port", port, "--master-port", port]
    if opts.master:
        cmd += ["--master", "--expect-workers", str(max(1, opts.expect_workers))]
        cmd += ["--master-bind-host", opts.master_bind_host, "--master-bind-port", str(opts.master_bind_port)]
    return cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log that say something, for a one-line problem report."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    useful = [line.strip() for line in text if line.strip() and not line.startswith(("-", " "))]
    return " | ".join(useful[-lines:])


def _describe(stages: list[Stage]) -> str:
    if len(stages) == 1:
        st = stages[0]
        what = f"{st.rate:g} requests/s ({st.arrival})" if st.rate else f"{st.users} users"
        return f"{what} for {st.duration_s:g} s"
    names = ", ".join(s.name for s in stages[:6]) + (" ..." if len(stages) > 6 else "")
    return f"{len(stages)} stages ({names}) over {total_duration(stages):g} s"


def _run_locust(cmd: list[str], log_path: Path) -> int:
    """Run Locust; the first Ctrl-C/SIGTERM asks it to stop (it writes what it has), a second kills it."""
    env = dict(os.environ, GEVENT_RESOLVER="block", PYTHONUNBUFFERED="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    interrupts = 0
    old: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if proc.poll() is not None:
            return
        if interrupts == 1:
            # Only the master: it stops its workers itself, and they send their last records.
            sys.stderr.write("harness: stopping: finishing the run folder (Ctrl-C again to kill)\n")
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGKILL)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                on_signal(signal.SIGINT, None)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        # Nothing of the run may outlive it (a worker whose master died would go on sending load).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if interrupts >= 2:
        return 137
    return 130 if interrupts else code


def _progress(opts: RunOptions, rd: RunDir, stages: list[Stage], targets: list[Target]) -> Progress:
    """The progress display of a headless run: a live table when stderr is a terminal, plain lines
    otherwise (CI, pipes, files), none in the web UI (it has its own) or with `--quiet`."""
    mode = "off" if opts.web or not opts.progress else ("table" if sys.stderr.isatty() else "lines")
    return Progress(
        rd.records,
        rd.client_metrics,
        stages=[s.name for s in stages],
        total_s=total_duration(stages),
        labels={t.url: t.label for t in targets},
        interval_s=opts.progress_interval_s,
        lag_s=lag_for(distributed=bool(opts.workers or opts.master)),
        mode=mode,
        stream=sys.stderr,
    )


def _locust_e2e_count(run_dir: Path) -> int | None:
    """Requests Locust counted on its E2E rows (one per request sent, failures included)."""
    path = RunDir(run_dir).locust_counts
    if not path.exists():
        return None
    counts = orjson.loads(path.read_bytes()).get("counts", {})
    return int(counts.get("E2E", {}).get("requests", 0))


def execute_run(opts: RunOptions) -> RunOutcome:
    if opts.web and not is_loopback(opts.web_host) and not os.environ.get(PASSWORD_ENV):
        raise InputError(
            f"--web-host {opts.web_host}: a web UI reachable from other machines needs a login; "
            f"set {PASSWORD_ENV} (and optionally {USER_ENV})"
        )
    sc = opts.scenario
    if not sc.hosts:
        sc = sc.model_copy(update={"hosts": [HostSpec(embedded=DEFAULT_EMBEDDED)]})
        opts.scenario = sc
    prompts = prompt_dicts(sc, opts.scenario_path.parent if opts.scenario_path else None)
    check_workload_files(sc)
    _check_workload_workers(opts)
    stages = stages_for(sc.load)
    run_id = opts.run_id or new_run_id(sc.name)
    run_dir = make_run_dir(opts.out, run_id)
    rd = RunDir(run_dir)
    started = time.time()
    children: list[ChildHost] = []
    problems: list[str] = []
    targets: list[Target] = []
    sampler: HostSampler | None = None
    manifest_path = rd.manifest
    exit_code = 0
    report_wanted = opts.report
    workload: dict[str, Any] | None = None
    ended_early = False
    # With a request limit the run may end before its planned duration: that is no early stop.
    max_requests = sc.workload.max_requests if sc.workload is not None else None
    progress_cpu_s: float | None = None
    stage = "starting hosts"
    try:
        if opts.started_hosts is not None:
            urls = dict(opts.started_hosts)  # started (and stopped) by the caller
        else:
            urls = start_embedded_hosts(sc.hosts, rd.host_log, children)
        stage = "probing hosts"
        targets = build_targets(sc, urls)
        stage = "workload"
        workload = plan_workload(sc, targets, run_id, prompts)
        plan = Plan(
            run_id=run_id,
            run_dir=str(run_dir),
            scenario=sc.model_dump(mode="json"),
            targets=targets,
            prompts=prompts,
            stages=[s.to_dict() for s in stages],
            workload=workload,
        )
        plan_path = rd.plan
        plan_path.write_bytes(plan.to_json())
        workload_note = {"workload": _manifest_workload(workload)} if workload else {}
        write_json(
            manifest_path, _manifest(opts, run_id, started, targets, {"state": "running", **workload_note})
        )
        sampler = HostSampler(rd.host_metrics, {t.url: t.pid for t in targets if t.pid})
        sampler.start()

        stage = "warm-up"
        spool = Spool(rd.records)
        failed = run_warmup(plan, spool.append)
        spool.close()
        _check_warmup(plan, failed, sc.warmup.requests)

        stage = "load"
        where = f"web UI http://{opts.web_host}:{opts.web_port}, " if opts.web else ""
        sys.stderr.write(
            f"harness: {where}{_describe(stages)} against {', '.join(t.label for t in targets)} (run {run_id})\n"
        )
        command = _locust_command(opts, plan_path, rd, stages)
        load_started = time.monotonic()
        progress = _progress(opts, rd, stages, targets)
        progress.start()
        try:
            code = _run_locust(command, rd.locust_log)
        finally:
            progress.stop()
            progress_cpu_s = round(progress.cpu_s, 4)
        ran_s = time.monotonic() - load_started
        ended_early = ran_s < total_duration(stages) - 1.0
        if code == 0 and not opts.web and ended_early and not max_requests:
            problems.append(
                f"Locust stopped after {ran_s:.1f} s of the planned {total_duration(stages):g} s (was it killed?)"
            )
            exit_code = 3
        if code == 130 and opts.web:
            pass  # the web UI has no end of its own: Ctrl-C is how a web session finishes
        elif code == 130:
            problems.append("run interrupted: streams in flight were recorded as `stopped`")
            exit_code = 3
        elif code == 137:
            problems.append("run killed on a second interrupt: the report was skipped")
            exit_code = 3
            report_wanted = False
        elif code != 0:
            log_path = rd.locust_log
            problems.append(f"Locust exited with code {code}: {log_tail(log_path)} (log: {log_path})")
            exit_code = 3
    except HarnessError as exc:
        if stage in ("starting hosts", "probing hosts", "workload", "warm-up"):
            write_json(
                manifest_path,
                _manifest(
                    opts,
                    run_id,
                    started,
                    targets,
                    {"state": "failed", "error": str(exc), "ended_utc": utc()},
                ),
            )
            raise
        problems.append(str(exc))
        exit_code = exc.exit_code
    finally:
        if sampler:
            sampler.stop()
        for child in children:
            child.stop()

    # --- collect: every request Locust counted must have exactly one record. Records that only a
    # worker's spool holds (a worker killed before its last report, a master that died) are
    # merged back first.
    recovery = recover_run(run_dir) if spool_files(run_dir) else None
    if recovery is not None and recovery.added:
        problems.append(
            f"{recovery.added} record(s) recovered from worker spools that the master never received"
        )
    scan = scan_records(rd.records)
    measured = scan.measured
    counted = _locust_e2e_count(run_dir)
    workers = [{"worker": w, "records": n} for w, n in sorted(scan.workers.items())]
    if scan.broken:
        problems.append(f"{scan.broken} broken line(s) in records.jsonl were skipped")
    if counted is None and exit_code == 0:
        problems.append("Locust's final counts are missing: the record count could not be checked")
        exit_code = 3
    elif counted is not None and counted > measured:
        problems.append(f"records missing: Locust counted {counted} requests, records.jsonl holds {measured}")
        exit_code = max(exit_code, 3)
    # A retried attempt (429, `retry.on_429: retry`) is a record of its own but the same request
    # from the pool: the limit counts first attempts. A web session is the user's to start (each
    # Start sends the limit afresh) and stop: no count to hold it to.
    if (
        max_requests is not None
        and ended_early
        and not opts.web
        and exit_code == 0
        and scan.first_attempts != max_requests
    ):
        problems.append(
            f"Locust stopped before the planned duration with {scan.first_attempts} of the "
            f"{max_requests} requests asked"
        )
        exit_code = 3
    elif max_requests is not None and not ended_early and not opts.web and scan.first_attempts < max_requests:
        # The duration is the limit's other bound (README: "or at the end of the duration"), so
        # this is no failure, but the run did not deliver what it asked: say so.
        problems.append(
            f"the planned duration ended with {scan.first_attempts} of the {max_requests} requests asked"
        )
    for host, since_ns, n_failed in _hosts_down(scan.by_host):
        when = utc(since_ns / 1e9)
        problems.append(
            f"host {host} went down at {when}: its last {n_failed} requests failed to connect or were cut"
        )
        for t in targets:
            if t.url == host:
                t.down_since_utc = when
    ended = time.time()
    manifest = _manifest(
        opts,
        run_id,
        started,
        targets,
        {
            "state": "complete" if exit_code == 0 else "incomplete",
            "ended_utc": utc(ended),
            "duration_s": round(ended - started, 3),
            "workers": workers,
            "records": {"measured": measured, "warmup": scan.warmup, "locust_counted": counted},
            "problems": problems,
            "exit_code": exit_code,
            **({"workload": _manifest_workload(workload)} if workload else {}),
            # What the live progress display cost this process (benchmarks/bench_accuracy.py --progress).
            "progress_cpu_s": progress_cpu_s,
        },
    )
    write_json(manifest_path, manifest)
    hints: list[str] = []
    table, failed_checks = _report(run_dir, report_wanted, problems, sc.thresholds, hints)
    problems += failed_checks
    if failed_checks and exit_code == 0:
        exit_code = CheckFailed.exit_code
    return RunOutcome(run_dir=run_dir, exit_code=exit_code, table=table, problems=problems, hints=hints)


def _manifest_workload(workload: dict[str, Any]) -> dict[str, Any]:
    """The workload as the manifest states it: what it asks for, how lengths are known (tokenizer,
    or calibration against the host), and the chat template's constant offset."""
    out = dict(workload["describe"])
    out.update({k: v for k, v in workload.items() if k != "describe"})
    return out


def _check_workload_workers(opts: RunOptions) -> None:
    """An exact request limit needs a user on every worker in every stage: worker k of n owns
    every n-th request, and a worker without users would never send its share."""
    w = opts.scenario.workload
    n = opts.workers if opts.workers > 1 else (max(1, opts.expect_workers) if opts.master else 0)
    if w is None or w.max_requests is None or n <= 1:
        return
    flag = f"--workers {n}" if opts.workers > 1 else f"--master --expect-workers {n}"
    for i, stage in enumerate(stages_for(opts.scenario.load)):
        if 0 < stage.users < n:
            which = "the first stage" if i == 0 else f"stage {i + 1}"
            raise InputError(
                f"--max-requests with {flag}: needs at least {n} users in every stage "
                f"({which} has {stage.users}), each worker sends its own share of the requests"
            )


def _check_warmup(plan: Plan, failed: list[Any], per_model: int) -> None:
    """Fail before the load starts when every warm-up request to a host and model failed."""
    if not failed or per_model <= 0:
        return
    by_pair: dict[tuple[str, str], list[Any]] = {}
    for rec in failed:
        by_pair.setdefault((rec.host, rec.model), []).append(rec)
    for (host, model), recs in by_pair.items():
        if len(recs) >= per_model:
            r = recs[0]
            raise HostError(
                f"host {host}: warm-up request to model {model} failed ({r.error}: {r.error_detail})"
            )


_DOWN = ("connect", "stream_cut", "timeout")


def _hosts_down(
    by_host: dict[str, list[tuple[int, str | None]]], min_failures: int = 3
) -> list[tuple[str, int, int]]:
    """Hosts whose requests all failed from some point to the end: (host, since_unix_ns, failures).

    "Down" means every request from that moment on could not connect, timed out or was cut;
    HTTP errors mean the host answered, so they never mark it down."""
    out = []
    for host, sent_errors in by_host.items():
        recs = sorted(sent_errors)
        tail = 0
        while tail < len(recs) and recs[-1 - tail][1] in _DOWN:
            tail += 1
        if tail >= min_failures and tail < len(recs):
            out.append((host, recs[-tail][0], tail))
    return out


def _report(
    run_dir: Path, enabled: bool, problems: list[str], checks: list[str], hints: list[str]
) -> tuple[str, list[str]]:
    """The report's console table (with each threshold's result) and one line per failed threshold;
    one line per named wire pattern goes to `hints`."""
    if not enabled:
        return "", []
    from harness.diagnostics import console_hints
    from harness.report import build

    try:
        report = build([run_dir], run_dir, thresholds=[thresholds.parse(t) for t in checks])
    except HarnessError as exc:
        problems.append(f"report: {exc}")
        # Thresholds that could not be judged have not held.
        return "", [f"threshold not judged (no report): {t}" for t in checks]
    problems.extend(f"report: {w}" for w in report.warnings)
    results = [thresholds.Result(**r) for r in report.summary.get("thresholds", [])]
    table = report.console_table()
    if results:
        table += "\nthresholds:\n" + "\n".join(f"  {r.line()}" for r in results)
    # From the report's public output (summary.json), so the console says what report.md says.
    hints.extend(console_hints(report.summary.get("diagnostics") or []))
    return table, thresholds.failure_lines(results)
