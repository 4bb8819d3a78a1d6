"""`harness bench`: choosing between models, and the selection table that shows the choice.

Owns model selection only: which models on which hosts (resolved per host, loaded where the host
needs that), which prompts each gets (by capability), one warm-up round, then N rounds over the
prompt set at fixed concurrencies, streaming and/or not, into a normal run folder; then quality
(`scoring.csv` for hand scores, an optional judge model) and the selection table (the report writer
`harness.report.writers.bench`: `bench.md`, `bench.csv`, `bench.json`).

Shared with `harness run`: every request goes through `harness.send` (the records are the same
records), embedded hosts start through `harness.servers.ready.start_child_host`, host memory is
sampled by `harness.runner.HostSampler`, the run folder is `harness.rundir`'s, and latency and
throughput come from the report's summary (the one computation of percentiles).

Where the models come from:
  `--host URL` (repeatable)       the asked models on each host, resolved per host (CPU/GPU/two hosts
                                  side by side, grouped by alias)
  no `--host`                     Foundry Local where `discover_foundry_endpoints()` finds it, else an
                                  embedded Foundry host with the shipped tiny model (as `harness run`)
  `--model-dir DIR` (repeatable)  an ONNX Runtime GenAI folder, each served by an embedded Foundry
                                  host of its own, started and stopped in turn: its memory and load
                                  time are that model's alone, and its folder's size is known

With the workload flags (`--input-tokens`, `--output-tokens`, `--dataset`, `--max-requests`), every
model's prompt set is the workload's requests 0..N-1 instead (`harness.workload`, seeded): the same
indices for every model, their lengths exact in the model's own tokenizer where its folder is known
(an embedded host's, a Foundry cache's), else calibrated against the host as `harness run` does
(`harness.workload_run`). Synthetic and dataset prompts have no reference answers: not scored.

A model that cannot be resolved, loaded or answered is recorded with its status (`skipped`,
`failed`) and a reason; the others go on. Deterministic by default: temperature 0, fixed prompts in
a fixed order, fixed max_tokens. Requests are sent from plain threads of this process (no gevent):
at concurrency 1-8 a blocking socket per stream costs nothing the timing would show.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.benchconfig import (
    DEFAULT_BENCH_PROMPTS,
    BenchConfig,
    ModelInfo,
    alias_of,
    catalog_entry,
    load_models_file,
    prompts_for,
    split_variant,
)
from harness.client import Connection
from harness.discovery import default_models, dir_size_mb, find_model_folder
from harness.errors import HarnessError, InputError
from harness.flavours import flavour, model_id_for, shipped_model_dir
from harness.hosts import HostInfo, local_status, normalize_base_url, probe_host, resolve_model
from harness.quality import (
    ask_judge,
    read_scoring_csv,
    scoring_rows_from_csv,
    write_answers,
)
from harness.records import Record, read_records
from harness.report.tables import host_label
from harness.report.writers.bench import EMBEDDED_LABEL, read_bench_manifest, render_selection, summarize
from harness.rundir import RunDir, Spool, machine, make_run_dir, new_run_id, utc, versions, write_json
from harness.runner import HostSampler, log_tail, sample_rss_now
from harness.scenario import Prompt
from harness.send import Request, Sender
from harness.workload import RequestSpec

__all__ = [
    "DEFAULT_BENCH_PROMPTS",
    "BenchConfig",
    "BenchOutcome",
    "ModelInfo",
    "alias_of",
    "load_models_file",
    "render_selection",
    "rescore",
    "run_bench",
    "split_variant",
]

RSS_SAMPLE_INTERVAL_S = 0.1
"""Short enough that a model benched in a second still gets samples."""


# --- Configuration and state -----------------------------------------------------------------------


@dataclass
class _Host:
    """A host models are benched on: a URL given or discovered, or an embedded Foundry host."""

    label: str
    url: str | None = None
    embedded: str | None = None
    model_dir: Path | None = None
    model_id: str | None = None
    asked: list[str] = field(default_factory=list)
    info: HostInfo | None = None
    pid: int | None = None
    cache_path: Path | None = None
    startup_s: float | None = None
    error: str | None = None

    def manifest(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "label": self.label,
            "flavour": self.info.flavour if self.info else None,
            "embedded": self.embedded,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "pid": self.pid,
            "model_cache_path": str(self.cache_path) if self.cache_path else None,
            "startup_s": self.startup_s,
            "error": self.error,
        }


@dataclass
class Entry:
    """One model on one host: what happened to it. Serialised into the manifest's `models`."""

    asked: str
    host: str | None
    host_label: str
    resolved: str | None = None
    alias: str | None = None
    ep: str | None = None
    status: str = "pending"
    reason: str | None = None
    capabilities: list[str] = field(default_factory=list)
    license: str | None = None
    declared_size_mb: float | None = None
    prompts: list[str] = field(default_factory=list)
    load_s: float | None = None
    loaded_by_bench: bool = False
    stages: list[str] = field(default_factory=list)
    requests: int = 0
    ok: int = 0
    warmup_requests: int = 0
    disk_mb: float | None = None
    disk_source: str | None = None
    disk_path: str | None = None
    started_unix_ns: int | None = None
    ended_unix_ns: int | None = None
    sample_answer: str | None = None
    workload: dict[str, Any] | None = None
    """With a workload: how its lengths were known for this model, and the workload's description."""

    def finish(self, status: str, reason: str | None = None) -> Entry:
        self.status = status
        self.reason = reason
        self.ended_unix_ns = time.time_ns()
        return self


@dataclass
class BenchOutcome:
    run_dir: Path
    exit_code: int
    table: str
    problems: list[str]


# --- Hosts -----------------------------------------------------------------------------------------


def _plan_hosts(cfg: BenchConfig, problems: list[str]) -> tuple[list[_Host], list[Entry]]:
    """The hosts to bench, in order, with the names to ask each; and a `skipped` entry for each
    name no host can be asked about (no URL to try it on, and no model folder serving it)."""
    from harness.discovery import discover_foundry_endpoints

    named: list[str] = [normalize_base_url(u) for u in cfg.hosts]
    dirs = list(cfg.model_dirs)
    fallback = False
    if not named and not dirs:
        named = discover_foundry_endpoints()
        if not named:
            dirs, fallback = [shipped_model_dir()], True
    hosts = [_Host(label=host_label(u), url=u, asked=list(cfg.models)) for u in named]
    served: list[str] = []
    for i, d in enumerate(dirs):
        path = d.expanduser().resolve()
        mid = cfg.model_ids[i] if i < len(cfg.model_ids) else model_id_for(path)
        if fallback and cfg.models and not any(resolve_model(m, [mid]) for m in cfg.models):
            continue  # models were named, and the shipped tiny model is none of them
        served.append(mid)
        hosts.append(
            _Host(label=EMBEDDED_LABEL, embedded="foundry", model_dir=path, model_id=mid, asked=[mid])
        )
    if fallback:
        what = (
            "benched an embedded Foundry host with the shipped tiny model" if served else "nothing to bench"
        )
        problems.append(
            "no Foundry Local host found (FOUNDRY_LOCAL_ENDPOINT unset, no `foundry` CLI answering): " + what
        )
    if named:
        return hosts, []
    why = (
        "no Foundry Local host found: set FOUNDRY_LOCAL_ENDPOINT or pass --host URL"
        if fallback and not served
        else f"no host serves it (the embedded hosts serve {', '.join(served)})"
    )
    unserved = [m for m in cfg.models if not any(resolve_model(m, [mid]) for mid in served)]
    return hosts, [
        Entry(asked=m, host=None, host_label="—", alias=m).finish("skipped", why) for m in unserved
    ]


# --- Sending: the shared send path, from threads ---------------------------------------------------


def _send_stage(
    cfg: BenchConfig, sender: Sender, stop: threading.Event, requests: Sequence[Request], concurrency: int
) -> list[Record]:
    """Send `requests` in order with `concurrency` in flight, each thread on its own connection; a
    record's `users` is the number in flight when it was sent (1..concurrency)."""
    out: list[Record] = []
    next_item = 0
    in_flight = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal next_item, in_flight
        conn = Connection(requests[0].host, policy=cfg.connection, timeouts=cfg.timeouts)
        try:
            while not stop.is_set():
                with lock:
                    if next_item >= len(requests):
                        return
                    req = dataclasses.replace(requests[next_item], users=in_flight + 1)
                    next_item += 1
                    in_flight += 1
                try:
                    rec = sender.send(conn, req)
                finally:
                    with lock:
                        in_flight -= 1
                with lock:
                    out.append(rec)
        finally:
            conn.close()

    if not requests:
        return out
    if concurrency == 1:
        work()
        return out
    threads = [threading.Thread(target=work, name=f"bench-{i}", daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop.set()  # streams in flight finish (bounded by the timeouts), nothing new starts
        for t in threads:
            t.join(cfg.timeouts.total_s)
        raise
    return out


def _requests(
    cfg: BenchConfig,
    host: str,
    model: str,
    asked: str,
    items: Sequence[tuple[int, Prompt]],
    *,
    stage: str,
    stream: bool,
    warmup: bool,
) -> list[Request]:
    """The bench's requests for (round, prompt) items: answers kept for scoring, rounds tagged."""
    return [
        Request(
            host=host,
            model=model,
            prompt_id=prompt.id,
            messages=prompt.chat_messages(),
            max_tokens=prompt.max_tokens or cfg.max_tokens,
            temperature=cfg.temperature,
            stream=stream,
            keep_text=True,
            stage=stage,
            warmup=warmup,
            tags={"round": rnd, "asked": asked, "bench": True},
        )
        for rnd, prompt in items
    ]


def _spec_requests(
    cfg: BenchConfig,
    host: str,
    model: str,
    asked: str,
    items: Sequence[tuple[int, RequestSpec]],
    *,
    stage: str,
    stream: bool,
    warmup: bool,
) -> list[Request]:
    """The bench's requests for (round, workload request) items: what each asked for goes into its
    record (`requested_input_tokens`, ...), its index into the tags."""
    return [
        Request(
            host=host,
            model=model,
            prompt_id=spec.prompt_id,
            messages=spec.messages,
            max_tokens=spec.max_tokens,
            temperature=cfg.temperature,
            stream=stream,
            body_extra=spec.extra_body,
            keep_text=True,
            stage=stage,
            warmup=warmup,
            tags={"round": rnd, "asked": asked, "bench": True, "workload_index": spec.index},
            requested_input_tokens=spec.requested_input_tokens,
            requested_output_tokens=spec.requested_output_tokens,
            shared_prefix_tokens=spec.prefix_tokens,
        )
        for rnd, spec in items
    ]


def _workload_specs(
    cfg: BenchConfig, host: _Host, model: str, folder: Path | None, run_id: str
) -> tuple[list[RequestSpec], dict[str, Any]]:
    """The workload's requests 0..N-1 for one model, and how their lengths were known: the model's
    own tokenizer where its folder is here, else what `harness run` does (a calibration against the
    host when lengths are asked for)."""
    from harness.plan import Target
    from harness.scenario import Scenario
    from harness.workload import ModelTokenizer, build_workload
    from harness.workload_run import token_counter

    spec = cfg.workload
    assert spec is not None and host.url is not None
    sc = Scenario(workload=spec, seed=cfg.seed, connection=cfg.connection)
    info: dict[str, Any]
    if folder is not None and (folder / "tokenizer.json").is_file():
        counter: Any = ModelTokenizer.from_path(folder)
        info = {"counter": "tokenizer", "tokenizer": str(folder)}
    else:
        target = Target(url=host.url, label=host.label, weight=1.0, models=[model])
        counter, info = token_counter(sc, [target], run_id)
    prompts = [
        {"id": p.id, "messages": p.chat_messages(), "max_tokens": p.max_tokens, "expected": p.expected}
        for p in cfg.prompts
    ]
    w = build_workload(
        spec, seed=cfg.seed, default_max_tokens=cfg.max_tokens, counter=counter, prompts=prompts
    )
    info["describe"] = w.describe()
    return list(w.build(range(cfg.workload_requests))), info


def _stage_name(stream: bool, concurrency: int) -> str:
    return f"{'stream' if stream else 'plain'} c={concurrency}"


def _first_failure(records: Sequence[Record]) -> str:
    bad = next((r for r in records if not r.ok), None)
    return f"{bad.error}: {bad.error_detail}" if bad else "no request was sent"


def _bench_model(
    cfg: BenchConfig, sender: Sender, stop: threading.Event, host: _Host, asked: str, metrics_path: Path
) -> Entry:
    """Resolve, load, warm up and measure one model on one host; never raises for the model's faults."""
    from harness.discovery import load_model, loaded_models

    info = host.info
    assert info is not None and host.url is not None
    entry = Entry(asked=asked, host=host.url, host_label=host.label, started_unix_ns=time.time_ns())
    resolved = resolve_model(asked, info.models)
    found = catalog_entry(cfg.catalog, asked, resolved)
    meta = found[1] if found else None
    if meta is not None:
        entry.capabilities = list(meta.capabilities)
        entry.license = meta.license
        entry.declared_size_mb = meta.size_mb
    if resolved is None:
        shown = ", ".join(info.models[:6]) + (" ..." if len(info.models) > 6 else "")
        entry.alias = alias_of(asked, asked)
        return entry.finish(
            "skipped", f"{host.label} serves no model matching {asked!r} (it serves: {shown or 'nothing'})"
        )
    entry.resolved = resolved
    # A models.json alias names the group best (the id of a model folder says less).
    entry.alias = found[0] if found and ":" in asked else alias_of(asked, resolved)
    entry.ep = split_variant(resolved)[1]
    # A workload's requests go to every model: capabilities pick among the prompt set only.
    prompts = prompts_for(cfg.prompts, entry.capabilities) if cfg.workload is None else []
    entry.prompts = [p.id for p in prompts]
    if not prompts and cfg.workload is None:
        caps = ", ".join(entry.capabilities) or "none declared"
        return entry.finish("skipped", f"no prompt of the set matches its capabilities ({caps})")
    folder = host.model_dir or (
        find_model_folder(host.cache_path, resolved) if host.cache_path is not None else None
    )
    if folder is not None and folder.is_dir():  # the disk footprint: measured where it can be
        entry.disk_mb, entry.disk_source, entry.disk_path = (
            round(dir_size_mb(folder), 1),
            "folder",
            str(folder),
        )
    elif meta is not None and meta.size_mb is not None:
        entry.disk_mb, entry.disk_source = meta.size_mb, "declared"
    sample_rss_now(metrics_path, host.url, host.pid)

    if host.embedded:
        entry.load_s = host.startup_s
    elif flavour(info.flavour).can_load:
        loaded = loaded_models(info)
        if loaded is not None and resolved not in loaded:
            t0 = time.monotonic()
            ok, detail = load_model(info, asked, resolved)
            entry.load_s = round(time.monotonic() - t0, 3)
            entry.loaded_by_bench = True
            if not ok:
                return entry.finish("failed", f"loading {resolved} failed: {detail}")

    specs: list[RequestSpec] = []
    if cfg.workload is not None:
        try:  # after loading: a calibration asks the model itself
            specs, entry.workload = _workload_specs(cfg, host, resolved, folder, sender.run_id)
        except InputError as exc:
            return entry.finish("failed", f"workload: {exc}")
        entry.prompts = [s.prompt_id for s in specs]

    def build(items: Sequence[tuple[int, Any]], stage: str, stream: bool, warmup: bool) -> list[Request]:
        assert host.url is not None and resolved is not None
        make = _spec_requests if cfg.workload is not None else _requests
        return make(cfg, host.url, resolved, asked, items, stage=stage, stream=stream, warmup=warmup)

    units: Sequence[Any] = specs if cfg.workload is not None else prompts
    first_stream = cfg.streams[0]
    warm: list[Record] = []
    for rnd in range(1, cfg.warmup_rounds + 1):
        reqs = build([(rnd, u) for u in units], "warmup", first_stream, True)
        warm += _send_stage(cfg, sender, stop, reqs, 1)
    entry.warmup_requests = len(warm)
    if warm and not any(r.ok for r in warm):
        return entry.finish(
            "failed", f"does not answer: every warm-up request failed ({_first_failure(warm)})"
        )

    measured: list[Record] = []
    items = [(rnd, u) for rnd in range(1, cfg.rounds + 1) for u in units]
    for stream in cfg.streams:
        for c in cfg.concurrency:
            name = _stage_name(stream, c)
            entry.stages.append(name)
            reqs = build(items, name, stream, False)
            measured += _send_stage(cfg, sender, stop, reqs, c)
    sample_rss_now(metrics_path, host.url, host.pid)
    entry.requests = len(measured)
    entry.ok = sum(r.ok for r in measured)
    first_ok = next((r for r in measured if r.ok and r.text), None)
    if first_ok is not None and first_ok.text is not None:
        entry.sample_answer = first_ok.text[:200]
    if entry.ok == 0:
        return entry.finish("failed", f"every measured request failed ({_first_failure(measured)})")
    if entry.ok < entry.requests:
        return entry.finish(
            "ok",
            f"{entry.requests - entry.ok} of {entry.requests} requests failed ({_first_failure(measured)})",
        )
    return entry.finish("ok")


# --- The run ---------------------------------------------------------------------------------------


def _stderr(msg: str) -> None:
    sys.stderr.write(f"harness: {msg}\n")


def run_bench(cfg: BenchConfig, *, log: Callable[[str], None] | None = None) -> BenchOutcome:
    """Bench every model on every host into one run folder; see the module docstring."""
    say = log or _stderr
    cfg.validate()
    run_id = cfg.run_id or new_run_id("bench")
    run_dir = make_run_dir(cfg.out, run_id)
    rd = RunDir(run_dir)
    started = time.time()
    problems: list[str] = []
    hosts, unserved_entries = _plan_hosts(cfg, problems)
    entries: list[Entry] = []
    metrics_path = rd.host_metrics
    manifest_path = rd.manifest

    def manifest(state: str, **extra: Any) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "kind": "bench",
            "state": state,
            "versions": versions("foundry-local-sdk", "openai"),
            "machine": machine(),
            "started_utc": utc(started),
            "command_line": cfg.command_line,
            "bench": cfg.manifest(),
            "hosts": [h.manifest() | {"models": _asked_map(h, entries)} for h in hosts],
            "models": [asdict(e) for e in entries],
            # The bench's stages are short and complete: the report must not trim their ends.
            "report": {"trim_s": 0},
            **extra,
        }

    write_json(manifest_path, manifest("running"))
    spool = Spool(rd.records)
    sender = Sender(run_id, spool.append, seq_start=1)
    stop = threading.Event()

    def done(entry: Entry) -> None:
        entries.append(entry)
        write_json(manifest_path, manifest("running"))
        if entry.reason:
            say(f"  {entry.status}: {entry.reason}")

    interrupted = False
    try:
        for i, host in enumerate(hosts):
            _bench_host(cfg, sender, stop, host, rd.host_log(i, "foundry"), metrics_path, done, say)
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        problems.append("interrupted: models not yet benched are missing from the table")
    finally:
        spool.close()
    entries += unserved_entries

    records, broken = read_records(rd.records)
    if broken:
        problems.append(f"{broken} broken line(s) in records.jsonl were skipped")
    ran = [e for e in entries if e.status == "ok"]
    if interrupted:
        exit_code = 3
    elif ran:
        exit_code = 0
    else:
        exit_code = 2 if all(e.status == "skipped" for e in entries) else 3
        problems.append("no model ran: see the reasons in the table")
    summary = summarize(run_dir, problems) if records else None
    first_stages = {
        (str(e.host), str(e.resolved)): e.stages[0] for e in entries if e.host and e.resolved and e.stages
    }
    answers = write_answers(run_dir, records, cfg.prompts, first_stages) if cfg.scored else []
    if not cfg.scored:
        problems.append(
            "quality not scored: the workload's prompts (synthetic or from a dataset) have no reference answers"
        )
    if cfg.judge_url and cfg.judge_model and answers:
        problems += ask_judge(run_dir, answers, cfg.judge_url, cfg.judge_model, say)
    measured = sum(1 for r in records if not r.get("warmup"))
    ended = time.time()
    write_json(
        manifest_path,
        manifest(
            "complete" if exit_code == 0 else "interrupted" if interrupted else "incomplete",
            ended_utc=utc(ended),
            duration_s=round(ended - started, 3),
            records={"measured": measured, "warmup": len(records) - measured},
            problems=problems,
            exit_code=exit_code,
        ),
    )
    table = render_selection(run_dir, summary=summary, problems=problems)
    return BenchOutcome(run_dir=run_dir, exit_code=exit_code, table=table, problems=problems)


def _bench_host(
    cfg: BenchConfig,
    sender: Sender,
    stop: threading.Event,
    host: _Host,
    log_path: Path,
    metrics_path: Path,
    done: Callable[[Entry], None],
    say: Callable[[str], None],
) -> None:
    """Start (if embedded) and probe one host, bench its models one after another, stop it.

    Memory of a host on this machine is sampled while its models run; an embedded host serves one
    model folder, so what is sampled is that model's alone."""
    from harness.servers.ready import start_child_host

    child = None
    sampler = None
    try:
        if host.embedded:
            say(f"starting an embedded Foundry host for {host.model_dir}")
            try:
                args = ["--port", "0", "--model-dir", str(host.model_dir)]
                args += ["--model-id", host.model_id] if host.model_id else []
                child = start_child_host("foundry", args, log_path=log_path)
            except HarnessError as exc:
                tail = log_tail(log_path, 1)[:300]
                host.error = f"{exc}: {tail}" if tail else str(exc)
                for name in host.asked:
                    done(_host_failed(host, name, "failed", host.error))
                return
            host.url, host.pid = child.base_url, child.pid
            host.startup_s = child.ready.get("startup_s")
        assert host.url is not None
        try:
            host.info = probe_host(host.url)
        except HarnessError as exc:
            host.error = str(exc)
            for name in host.asked or ["(any)"]:
                done(_host_failed(host, name, "skipped", str(exc)))
            return
        if not host.embedded:
            host.pid, host.cache_path = local_status(host.url)
        names = host.asked
        if not names:
            names, why = default_models(host.info)
            if why:
                host.error = why
                done(_host_failed(host, "(any)", "skipped", why))
                return
        if host.pid is not None:
            sampler = HostSampler(metrics_path, {host.url: host.pid}, interval_s=RSS_SAMPLE_INTERVAL_S)
            sampler.start()
        for name in names:
            say(f"benching {name} on {host.label}")
            done(_bench_model(cfg, sender, stop, host, name, metrics_path))
    finally:
        if sampler is not None:
            sampler.stop()
        if child is not None:
            child.stop()


def _asked_map(host: _Host, entries: Sequence[Entry]) -> dict[str, str | None]:
    return {e.asked: e.resolved for e in entries if host.url is not None and e.host == host.url}


def _host_failed(host: _Host, name: str, status: str, reason: str) -> Entry:
    return Entry(
        asked=name,
        host=host.url,
        host_label=host.label,
        alias=split_variant(name)[0],
        started_unix_ns=time.time_ns(),
    ).finish(status, reason)


def rescore(
    run_dir: Path,
    *,
    judge_url: str | None = None,
    judge_model: str | None = None,
    power_watts: float | None = None,
    price_per_kwh: float | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[str, list[str]]:
    """Re-render a bench run's selection table from its folder: hand scores from `scoring.csv`,
    verdicts from `judge.jsonl` (after asking a judge now, if given), energy at new figures.
    Returns the terminal table and the problems met (also listed in bench.md)."""
    say = log or _stderr
    manifest = read_bench_manifest(run_dir)
    problems: list[str] = []
    if judge_url and judge_model:
        prompts = {p["id"]: p for p in manifest.get("bench", {}).get("prompts", [])}
        rows = scoring_rows_from_csv(RunDir(run_dir).scoring, prompts)
        if not rows:
            problems.append(f"{RunDir(run_dir).scoring}: no answers to judge")
        else:
            problems += ask_judge(run_dir, rows, judge_url, judge_model, say)
    table = render_selection(run_dir, power_watts=power_watts, price_per_kwh=price_per_kwh, problems=problems)
    _, hand_problems = read_scoring_csv(RunDir(run_dir).scoring)
    return table, problems + hand_problems
