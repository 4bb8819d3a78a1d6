"""`harness bench`: the workshop's model benchmark, done properly, and its model selection table.

Owns choosing between models: for each model on each host, resolve the alias, load it if the host
needs that, one warm-up round, then N rounds over a fixed prompt set at fixed concurrencies, in
streaming and/or non-streaming mode, into a normal run folder (records through the measuring
client and `record_from_result`, so CONTRACT.md holds); then the post-processor's summary (the one
computation of percentiles), and the selection table `bench.md`, `bench.csv`, `bench.json`:
latency, output tokens/s, memory, disk, quality, license, capabilities, energy and cost.

Where the models come from:
  `--host URL` (repeatable)       the asked models on each host, resolved per host (CPU/GPU/two hosts
                                  side by side, grouped by alias)
  no `--host`                     Foundry Local where `discover_foundry_endpoints()` finds it, else an
                                  embedded Foundry host with the shipped tiny model (as `harness run`)
  `--model-dir DIR` (repeatable)  an ONNX Runtime GenAI folder, each served by an embedded Foundry
                                  host of its own, started and stopped in turn: its memory and load
                                  time are that model's alone, and its folder's size is known

A model that cannot be resolved, loaded or answered is recorded with its status (`skipped`,
`failed`) and a reason; the others go on. Deterministic by default: temperature 0, fixed prompts in
a fixed order, fixed max_tokens. Requests are sent from plain threads of this process (no gevent):
at concurrency 1-8 a blocking socket per stream costs nothing the timing would show.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import math
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import __version__
from harness.client import DEFAULT_CONNECTION_POLICY, ChatResult, Connection, Timeouts, chat_body
from harness.errors import HarnessError, InputError
from harness.hosts import HostInfo, normalize_base_url, probe_host, resolve_model, root_url
from harness.quality import (
    ScoreSummary,
    ScoringRow,
    judges_used,
    read_judge,
    read_scoring_csv,
    run_judge,
    scoring_rows,
    write_scoring_csv,
)
from harness.records import Record, Spool, read_records, record_from_result, worker_id
from harness.scenario import Prompt

__all__ = [
    "DEFAULT_BENCH_PROMPTS",
    "BenchConfig",
    "BenchOutcome",
    "ModelInfo",
    "alias_of",
    "energy_per_1k_tokens",
    "load_models_file",
    "render_selection",
    "rescore",
    "run_bench",
    "split_variant",
]

#: The workshop's prompt set (its "prompts.json" example), with the aspects a good answer covers.
#: `scenarios/bench-prompts.json` holds the same set; a test keeps the two equal.
DEFAULT_BENCH_PROMPTS: list[dict[str, Any]] = [
    {
        "id": "rag-2s",
        "text": "Explain the principle of retrieval augmented generation in 2 sentences.",
        "expected_aspects": [
            "relevant passages are retrieved from an external source (documents, search index)",
            "the retrieved text is given to the model together with the question",
            "answers are grounded in that text: more accurate, current, fewer inventions",
            "two sentences",
        ],
    },
    {
        "id": "privacy-3",
        "text": "List 3 privacy benefits of local inference.",
        "expected_aspects": [
            "data never leaves the device",
            "no cloud provider or third party sees prompts or answers",
            "easier compliance (GDPR, data residency) or works offline",
            "exactly three items",
        ],
    },
    {
        "id": "size-latency",
        "text": "Summarize why model size impacts latency on consumer hardware.",
        "expected_aspects": [
            "more parameters mean more computation per generated token",
            "every token reads the weights: memory bandwidth limits speed",
            "a model that does not fit in RAM or GPU memory swaps or falls back to the CPU",
            "a short summary",
        ],
    },
    {
        "id": "slm-vs-llm",
        "text": "Provide two scenarios where an SLM is preferable to an LLM.",
        "expected_aspects": [
            "two concrete scenarios",
            "reasons such as on-device or offline use, low latency, low cost, privacy",
            "why a small model is good enough for that task",
        ],
    },
]

DEFAULT_ROUNDS = 3
DEFAULT_MAX_TOKENS = 150
"""The workshop's `max_tokens`, so figures compare with its script."""
RSS_SAMPLE_INTERVAL_S = 0.1
"""Short enough that a model benched in a second still gets samples."""
EMBEDDED_LABEL = "embedded foundry"
MODES = {"stream": [True], "plain": [False], "both": [True, False]}


# ---------------------------------------------------------------------------------------------
# models.json
# ---------------------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    """What `models.json` says about one model (the workshop's `{alias: {capabilities, size_mb}}`)."""

    model_config = ConfigDict(extra="forbid")

    capabilities: list[str] = Field(default_factory=list, description="tags prompts select models by")
    size_mb: float | None = Field(None, ge=0, description="declared download/disk size")
    license: str | None = Field(None, description="license as published")
    description: str | None = None


def load_models_file(path: Path) -> dict[str, ModelInfo]:
    """`{alias: {...}}`, `{"models": {alias: {...}}}`, or a list of aliases -> alias -> ModelInfo."""
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path}: models file not found") from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(raw, dict) and isinstance(raw.get("models"), dict | list):
        raw = raw["models"]
    if isinstance(raw, list):
        raw = {str(a): {} for a in raw}
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: expected a JSON object {{alias: {{capabilities, size_mb, license}}}}")
    out: dict[str, ModelInfo] = {}
    for alias, entry in raw.items():
        try:
            out[str(alias)] = ModelInfo.model_validate(entry or {})
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(p) for p in e["loc"])
            raise InputError(f"{path}: {alias}{'.' + where if where else ''}: {e['msg']}") from None
    return out


def _catalog_entry(
    catalog: dict[str, ModelInfo], asked: str, resolved: str | None
) -> tuple[str, ModelInfo] | None:
    """(alias, entry) of models.json for a model: by the name asked, else any alias that resolves to
    its id (`qwen2.5-0.5b` -> `qwen2.5-0.5b-instruct-generic-cpu:4`), else its derived alias."""
    if asked in catalog:
        return asked, catalog[asked]
    if resolved is not None:
        for alias, info in catalog.items():
            if resolve_model(alias, [resolved]) == resolved:
                return alias, info
        alias = split_variant(resolved)[0]
        if alias in catalog:
            return alias, catalog[alias]
    return None


# ---------------------------------------------------------------------------------------------
# Variant ids: alias and execution provider
# ---------------------------------------------------------------------------------------------

_DEVICE_SUFFIX = re.compile(
    r"-(?:(?:generic|cuda|trt-rtx|trt|tensorrt|qnn|openvino|ov|vitis|webgpu|dml|directml|rocm|mlx)-)?(?:cpu|gpu|npu)$",
    re.I,
)


def split_variant(model_id: str) -> tuple[str, str | None]:
    """`qwen2.5-0.5b-instruct-cuda-gpu:4` -> (`qwen2.5-0.5b`, `cuda-gpu`); the second part is the
    execution provider/device the id names (None when it names none)."""
    name, sep, version = model_id.rpartition(":")
    if not (sep and version.isdigit()):
        name = model_id
    m = _DEVICE_SUFFIX.search(name)
    ep = m.group(0)[1:].lower() if m else None
    base = name[: m.start()] if m else name
    return base.removesuffix("-instruct"), ep


def alias_of(asked: str, resolved: str) -> str:
    """The alias a row is grouped by: the name asked when it was an alias, else derived from the id."""
    if asked != resolved and ":" not in asked and not _DEVICE_SUFFIX.search(asked):
        return asked
    return split_variant(resolved)[0]


# ---------------------------------------------------------------------------------------------
# Configuration and state
# ---------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    """Everything a bench run needs, after command-line options and BENCH_* variables were merged."""

    hosts: list[str] = field(default_factory=list)
    model_dirs: list[Path] = field(default_factory=list)
    model_ids: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    catalog: dict[str, ModelInfo] = field(default_factory=dict)
    prompts: list[Prompt] = field(
        default_factory=lambda: [Prompt.model_validate(p) for p in DEFAULT_BENCH_PROMPTS]
    )
    rounds: int = DEFAULT_ROUNDS
    warmup_rounds: int = 1
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float | None = 0.0
    streams: list[bool] = field(default_factory=lambda: [True])
    concurrency: list[int] = field(default_factory=lambda: [1])
    connection: str = DEFAULT_CONNECTION_POLICY
    timeouts: Timeouts = field(default_factory=Timeouts)
    power_watts: float | None = None
    price_per_kwh: float | None = None
    judge_url: str | None = None
    judge_model: str | None = None
    out: Path = Path("results")
    run_id: str | None = None
    models_file: str | None = None
    prompts_file: str | None = None
    from_env: dict[str, str] = field(default_factory=dict)
    """BENCH_* / FOUNDRY_LOCAL_ENDPOINT variables that supplied a value, as given."""
    command_line: list[str] = field(default_factory=lambda: list(sys.argv))

    def validate(self) -> None:
        if self.rounds < 1:
            raise InputError(f"--rounds: expected 1 or more, got {self.rounds}")
        if self.warmup_rounds < 0:
            raise InputError(f"--warmup-rounds: expected 0 or more, got {self.warmup_rounds}")
        if self.max_tokens < 1:
            raise InputError(f"--max-tokens: expected 1 or more, got {self.max_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise InputError(f"--temperature: expected 0 or more, got {self.temperature}")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise InputError(f"--concurrency: expected positive integers, got {self.concurrency}")
        if self.power_watts is not None and not self.power_watts > 0:
            raise InputError(f"--power-watts: expected watts > 0, got {self.power_watts}")
        if self.price_per_kwh is not None and self.price_per_kwh < 0:
            raise InputError(f"--price-per-kwh: expected 0 or more, got {self.price_per_kwh}")
        if bool(self.judge_url) != bool(self.judge_model):
            raise InputError("--judge-url and --judge-model go together: give both or neither")
        if len(self.model_ids) > len(self.model_dirs):
            raise InputError("--model-id pairs with --model-dir by position: more ids than folders given")
        if not self.prompts:
            raise InputError("the prompt set is empty")

    def manifest(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "warmup_rounds": self.warmup_rounds,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "modes": ["stream" if s else "plain" for s in self.streams],
            "concurrency": self.concurrency,
            "connection": self.connection,
            "deterministic": self.temperature == 0,
            "models_asked": self.models,
            "model_dirs": [str(d) for d in self.model_dirs],
            "models_file": self.models_file,
            "prompts_file": self.prompts_file,
            "prompts": [
                {
                    "id": p.id,
                    "messages": p.chat_messages(),
                    "max_tokens": p.max_tokens,
                    "expected": p.expected,
                    "capabilities": p.capabilities,
                }
                for p in self.prompts
            ],
            "catalog": {k: v.model_dump() for k, v in self.catalog.items()},
            "power_watts": self.power_watts,
            "price_per_kwh": self.price_per_kwh,
            "judge": {"url": self.judge_url, "model": self.judge_model} if self.judge_url else None,
            "from_env": self.from_env,
        }


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


# ---------------------------------------------------------------------------------------------
# Hosts
# ---------------------------------------------------------------------------------------------


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_status(url: str) -> tuple[int | None, Path | None]:
    """(pid, modelCachePath) of a host on this machine, from its `/status` (Foundry Local's current
    service and the simulated host answer it). The pid counts only if that process listens on the
    URL's port: a pid from another machine or namespace must never be sampled."""
    if not _is_loopback(url):
        return None, None
    conn = Connection(root_url(url), timeouts=Timeouts(5.0, 5.0, 5.0, 10.0))
    try:
        status, _, body = conn.get("/status")
        obj = orjson.loads(body) if status == 200 and body else None
    except (OSError, orjson.JSONDecodeError):
        return None, None
    finally:
        conn.close()
    if not isinstance(obj, dict):
        return None, None
    cache = obj.get("modelCachePath") or obj.get("ModelDirPath")
    cache_path = Path(cache) if isinstance(cache, str) and cache else None
    pid = obj.get("pid")
    if not isinstance(pid, int) or not _listens(pid, urlsplit(url).port):
        pid = None
    return pid, cache_path


def _listens(pid: int, port: int | None) -> bool:
    import psutil

    if port is None:
        return False
    try:
        conns = psutil.Process(pid).net_connections(kind="inet")
    except psutil.Error:
        return False
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in conns)


def _dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _find_model_folder(cache: Path, model_id: str) -> Path | None:
    """The folder of `model_id` in a Foundry model cache: the shallowest folder whose name is the id
    (`:` as `-`) or its name without version, holding an ONNX Runtime GenAI model somewhere below."""
    if not cache.is_dir():
        return None
    name = model_id.rpartition(":")[0] or model_id
    wanted = {model_id.replace(":", "-").lower(), name.lower()}
    for depth in range(1, 4):
        for folder in sorted(cache.glob("/".join(["*"] * depth))):
            if folder.is_dir() and folder.name.lower() in wanted and any(folder.rglob("genai_config.json")):
                return folder
    return None


def _plan_hosts(cfg: BenchConfig, problems: list[str]) -> tuple[list[_Host], list[Entry]]:
    """The hosts to bench, in order, with the names to ask each; and a `skipped` entry for each
    name no host can be asked about (no URL to try it on, and no model folder serving it)."""
    from harness.discovery import discover_foundry_endpoints
    from harness.servers.foundry import default_model_dir, model_id_for

    named: list[str] = [normalize_base_url(u) for u in cfg.hosts]
    dirs = list(cfg.model_dirs)
    fallback = False
    if not named and not dirs:
        named = discover_foundry_endpoints()
        if not named:
            dirs, fallback = [default_model_dir()], True
    hosts = [_Host(label=_label(u), url=u, asked=list(cfg.models)) for u in named]
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


def _label(url: str) -> str:
    from harness.report.tables import host_label

    return host_label(url)


def _default_names(info: HostInfo) -> tuple[list[str], str | None]:
    """What to bench on a host when no model was named: what it has loaded (Foundry), else all it
    lists; a Foundry host with nothing loaded lists its whole catalog, so nothing is guessed there."""
    from harness.discovery import loaded_models

    loaded = loaded_models(info)
    if loaded:
        return [m for m in loaded if m in info.models] or loaded, None
    if info.flavour.startswith("foundry"):
        return [], f"host {info.url} has no model loaded and none was named: name models with --model"
    if not info.models:
        return [], f"host {info.url} lists no models"
    return list(info.models), None


# ---------------------------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------------------------


class _Sender:
    """Sends the bench's requests and spools their records (thread-safe: one per run)."""

    def __init__(self, cfg: BenchConfig, run_id: str, spool: Spool) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.spool = spool
        self.worker = worker_id()
        self._seq = 0
        self._lock = threading.Lock()
        self.stop = threading.Event()

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def send(
        self,
        conn: Connection,
        *,
        host: str,
        model: str,
        asked: str,
        prompt: Prompt,
        rnd: int,
        stage: str,
        stream: bool,
        warmup: bool,
        users: int,
    ) -> Record:
        max_tokens = prompt.max_tokens or self.cfg.max_tokens
        body = chat_body(
            model,
            prompt.chat_messages(),
            max_tokens=max_tokens,
            temperature=self.cfg.temperature,
            stream=stream,
        )
        res = ChatResult()

        def record() -> Record:
            rec = record_from_result(
                res,
                run_id=self.run_id,
                worker=self.worker,
                host=host,
                model=model,
                stage=stage,
                prompt_id=prompt.id,
                warmup=warmup,
                sched_unix_ns=None,
                users=users,
                seq=self._next_seq(),
                stream=stream,
                max_tokens=max_tokens,
                connection=conn.policy,
            )
            rec.extra = {"round": rnd, "asked": asked, "bench": True}
            self.spool.append(rec)
            return rec

        try:
            conn.chat(body, stream=stream, keep_text=True, result=res)
        except KeyboardInterrupt:
            # Every request sent is one record: the one Ctrl-C cut is kept as `stopped`.
            res.fail("stopped", "interrupted (Ctrl-C)")
            res.end_ns = res.end_ns or time.perf_counter_ns()
            record()
            raise
        return record()

    def stage(
        self,
        host: str,
        model: str,
        asked: str,
        items: Sequence[tuple[int, Prompt]],
        *,
        stage: str,
        stream: bool,
        warmup: bool,
        concurrency: int,
    ) -> list[Record]:
        """Send `items` in order with `concurrency` requests in flight, each stream on its own
        connection; a record's `users` is the number in flight when it was sent (1..concurrency)."""
        out: list[Record] = []
        next_item = 0
        in_flight = 0
        lock = threading.Lock()

        def work() -> None:
            nonlocal next_item, in_flight
            conn = Connection(host, policy=self.cfg.connection, timeouts=self.cfg.timeouts)
            try:
                while not self.stop.is_set():
                    with lock:
                        if next_item >= len(items):
                            return
                        rnd, prompt = items[next_item]
                        next_item += 1
                        in_flight += 1
                        users = in_flight
                    try:
                        rec = self.send(
                            conn,
                            host=host,
                            model=model,
                            asked=asked,
                            prompt=prompt,
                            rnd=rnd,
                            stage=stage,
                            stream=stream,
                            warmup=warmup,
                            users=users,
                        )
                    finally:
                        with lock:
                            in_flight -= 1
                    with lock:
                        out.append(rec)
            finally:
                conn.close()

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
            self.stop.set()  # streams in flight finish (bounded by the timeouts), nothing new starts
            for t in threads:
                t.join(self.cfg.timeouts.total_s)
            raise
        return out


def _stage_name(stream: bool, concurrency: int) -> str:
    return f"{'stream' if stream else 'plain'} c={concurrency}"


def _prompts_for(prompts: Sequence[Prompt], capabilities: Sequence[str]) -> list[Prompt]:
    """Prompts without `capabilities` go to every model; the others to models sharing a tag."""
    caps = set(capabilities)
    return [p for p in prompts if not p.capabilities or caps & set(p.capabilities)]


def _first_failure(records: Sequence[Record]) -> str:
    bad = next((r for r in records if not r.ok), None)
    return f"{bad.error}: {bad.error_detail}" if bad else "no request was sent"


def _rss_sample(path: Path, url: str, pid: int | None) -> None:
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


def _bench_model(cfg: BenchConfig, sender: _Sender, host: _Host, asked: str, metrics_path: Path) -> Entry:
    """Resolve, load, warm up and measure one model on one host; never raises for the model's faults."""
    from harness.discovery import load_model, loaded_models

    info = host.info
    assert info is not None and host.url is not None
    entry = Entry(asked=asked, host=host.url, host_label=host.label, started_unix_ns=time.time_ns())
    resolved = resolve_model(asked, info.models)
    found = _catalog_entry(cfg.catalog, asked, resolved)
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
    prompts = _prompts_for(cfg.prompts, entry.capabilities)
    entry.prompts = [p.id for p in prompts]
    if not prompts:
        caps = ", ".join(entry.capabilities) or "none declared"
        return entry.finish("skipped", f"no prompt of the set matches its capabilities ({caps})")
    _disk(entry, host, meta)
    _rss_sample(metrics_path, host.url, host.pid)

    if host.embedded:
        entry.load_s = host.startup_s
    elif info.flavour in ("foundry", "foundry-legacy"):
        loaded = loaded_models(info)
        if loaded is not None and resolved not in loaded:
            t0 = time.monotonic()
            ok, detail = load_model(info, asked, resolved)
            entry.load_s = round(time.monotonic() - t0, 3)
            entry.loaded_by_bench = True
            if not ok:
                return entry.finish("failed", f"loading {resolved} failed: {detail}")

    first_stream = cfg.streams[0]
    warm: list[Record] = []
    for rnd in range(1, cfg.warmup_rounds + 1):
        warm += sender.stage(
            host.url,
            resolved,
            asked,
            [(rnd, p) for p in prompts],
            stage="warmup",
            stream=first_stream,
            warmup=True,
            concurrency=1,
        )
    entry.warmup_requests = len(warm)
    if warm and not any(r.ok for r in warm):
        return entry.finish(
            "failed", f"does not answer: every warm-up request failed ({_first_failure(warm)})"
        )

    measured: list[Record] = []
    items = [(rnd, p) for rnd in range(1, cfg.rounds + 1) for p in prompts]
    for stream in cfg.streams:
        for c in cfg.concurrency:
            name = _stage_name(stream, c)
            entry.stages.append(name)
            measured += sender.stage(
                host.url, resolved, asked, items, stage=name, stream=stream, warmup=False, concurrency=c
            )
    _rss_sample(metrics_path, host.url, host.pid)
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


def _disk(entry: Entry, host: _Host, meta: ModelInfo | None) -> None:
    """The model's disk footprint: its folder where this machine has it, else the declared size."""
    folder: Path | None = None
    if host.model_dir is not None:
        folder = host.model_dir
    elif host.cache_path is not None and entry.resolved is not None:
        folder = _find_model_folder(host.cache_path, entry.resolved)
    if folder is not None and folder.is_dir():
        entry.disk_mb = round(_dir_size_mb(folder), 1)
        entry.disk_source = "folder"
        entry.disk_path = str(folder)
    elif meta is not None and meta.size_mb is not None:
        entry.disk_mb = meta.size_mb
        entry.disk_source = "declared"


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _stderr(msg: str) -> None:
    sys.stderr.write(f"harness: {msg}\n")


def _utc(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t if t is not None else time.time()))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    tmp.replace(path)


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    def v(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "harness": __version__,
        "foundry-local-sdk": v("foundry-local-sdk"),
        "openai": v("openai"),
        "python": platform.python_version(),
    }


def run_bench(cfg: BenchConfig, *, log: Callable[[str], None] | None = None) -> BenchOutcome:
    """Bench every model on every host into one run folder; see the module docstring."""
    from harness.plan import make_run_dir, new_run_id

    say = log or _stderr
    cfg.validate()
    run_id = cfg.run_id or new_run_id("bench")
    run_dir = make_run_dir(cfg.out, run_id)
    started = time.time()
    problems: list[str] = []
    hosts, unserved_entries = _plan_hosts(cfg, problems)
    entries: list[Entry] = []
    metrics_path = run_dir / "host_metrics.jsonl"
    manifest_path = run_dir / "manifest.json"

    def manifest(state: str, **extra: Any) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "kind": "bench",
            "state": state,
            "versions": _versions(),
            "machine": {"hostname": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count()},
            "started_utc": _utc(started),
            "command_line": cfg.command_line,
            "bench": cfg.manifest(),
            "hosts": [h.manifest() | {"models": _asked_map(h, entries)} for h in hosts],
            "models": [asdict(e) for e in entries],
            # The bench's stages are short and complete: the report must not trim their ends.
            "report": {"trim_s": 0},
            **extra,
        }

    _write_json(manifest_path, manifest("running"))
    spool = Spool(run_dir / "records.jsonl")
    sender = _Sender(cfg, run_id, spool)

    def done(entry: Entry) -> None:
        entries.append(entry)
        _write_json(manifest_path, manifest("running"))
        if entry.reason:
            say(f"  {entry.status}: {entry.reason}")

    interrupted = False
    try:
        for i, host in enumerate(hosts):
            _bench_host(cfg, sender, host, run_dir / "hosts" / f"{i}-foundry.log", metrics_path, done, say)
    except KeyboardInterrupt:
        interrupted = True
        sender.stop.set()
        problems.append("interrupted: models not yet benched are missing from the table")
    finally:
        spool.close()
    entries += unserved_entries

    records, broken = read_records(run_dir / "records.jsonl")
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
    summary = _build_report(run_dir, records, problems)
    answers = _write_scoring(run_dir, records, cfg, entries)
    if cfg.judge_url and cfg.judge_model and answers:
        problems += _judge(run_dir, answers, cfg.judge_url, cfg.judge_model, say)
    measured = sum(1 for r in records if not r.get("warmup"))
    ended = time.time()
    _write_json(
        manifest_path,
        manifest(
            "complete" if exit_code == 0 else "interrupted" if interrupted else "incomplete",
            ended_utc=_utc(ended),
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
    sender: _Sender,
    host: _Host,
    log_path: Path,
    metrics_path: Path,
    done: Callable[[Entry], None],
    say: Callable[[str], None],
) -> None:
    """Start (if embedded) and probe one host, bench its models one after another, stop it.

    Memory of a host on this machine is sampled while its models run; an embedded host serves one
    model folder, so what is sampled is that model's alone."""
    from harness.runner import HostSampler
    from harness.servers.foundry import start_foundry_host

    child = None
    sampler = None
    try:
        if host.embedded:
            say(f"starting an embedded Foundry host for {host.model_dir}")
            try:
                child = start_foundry_host(
                    [host.model_dir] if host.model_dir else None,
                    model_ids=[host.model_id] if host.model_id else None,
                    log_path=log_path,
                )
            except HarnessError as exc:
                host.error = f"{exc}{_last_log_line(log_path)}"
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
            host.pid, host.cache_path = _local_status(host.url)
        names = host.asked
        if not names:
            names, why = _default_names(host.info)
            if why:
                host.error = why
                done(_host_failed(host, "(any)", "skipped", why))
                return
        if host.pid is not None:
            sampler = HostSampler(metrics_path, {host.url: host.pid}, interval_s=RSS_SAMPLE_INTERVAL_S)
            sampler.start()
        for name in names:
            say(f"benching {name} on {host.label}")
            done(_bench_model(cfg, sender, host, name, metrics_path))
    finally:
        if sampler is not None:
            sampler.stop()
        if child is not None:
            child.stop()


def _last_log_line(path: Path) -> str:
    """`: <the log's last line>`, so a reason says why a host did not start, not only where to look."""
    try:
        lines = [x.strip() for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:300]}" if lines else ""


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


def _build_report(run_dir: Path, records: list[dict[str, Any]], problems: list[str]) -> dict[str, Any] | None:
    """The post-processor over the run folder (no trimming: every measured request counts)."""
    if not records:
        return None
    from harness.report import build

    try:
        return build([run_dir], run_dir, trim_s=0).summary
    except HarnessError as exc:
        problems.append(f"report: {exc}")
        return None


def _write_scoring(
    run_dir: Path, records: list[dict[str, Any]], cfg: BenchConfig, entries: Sequence[Entry]
) -> list[ScoringRow]:
    """scoring.csv: the distinct answers to prompts with expected aspects, score column empty."""
    prompts = {
        p.id: {
            "expected": p.expected,
            "text": (p.chat_messages()[-1]["content"] if p.chat_messages() else ""),
        }
        for p in cfg.prompts
    }
    stages = {(e.host, e.resolved): e.stages[0] for e in entries if e.host and e.resolved and e.stages}
    rows = scoring_rows(records, prompts, stages={(str(h), str(m)): s for (h, m), s in stages.items()})
    if rows:
        write_scoring_csv(run_dir / "scoring.csv", rows)
    return rows


def _judge(
    run_dir: Path, rows: list[ScoringRow], url: str, model: str, say: Callable[[str], None]
) -> list[str]:
    """Score answers with a judge model; a judge that cannot be reached costs a note, not the run."""
    try:
        info = probe_host(url)
    except HarnessError as exc:
        return [f"judge not asked: {exc}"]
    judge_id = resolve_model(model, info.models) or model
    say(f"asking the judge {judge_id} at {info.url} about {len(rows)} answer(s)")
    outcome = run_judge(rows, run_dir / "judge.jsonl", base_url=info.url, model=judge_id)
    return outcome.problems


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
    manifest = _read_manifest(run_dir)
    problems: list[str] = []
    if judge_url and judge_model:
        rows = _scoring_rows_from_csv(run_dir / "scoring.csv", manifest)
        if not rows:
            problems.append(f"{run_dir / 'scoring.csv'}: no answers to judge")
        else:
            problems += _judge(run_dir, rows, judge_url, judge_model, say)
    table = render_selection(run_dir, power_watts=power_watts, price_per_kwh=price_per_kwh, problems=problems)
    _, hand_problems = read_scoring_csv(run_dir / "scoring.csv")
    return table, problems + hand_problems


def _scoring_rows_from_csv(path: Path, manifest: dict[str, Any]) -> list[ScoringRow]:
    """The answers of a run's scoring.csv, with their prompts and aspects from the manifest."""
    if not path.is_file():
        return []
    prompts = {p["id"]: p for p in manifest.get("bench", {}).get("prompts", [])}
    out = []
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    first = text.split("\n", 1)[0]
    reader = csv.DictReader(io.StringIO(text), delimiter=";" if first.count(";") > first.count(",") else ",")
    for raw in reader:
        pid = raw.get("prompt_id") or ""
        p = prompts.get(pid, {})
        msgs = p.get("messages") or [{"content": ""}]
        out.append(
            ScoringRow(
                run_id=raw.get("run_id") or "",
                model=raw.get("model") or "",
                host=raw.get("host") or "",
                prompt_id=pid,
                rounds=[int(x) for x in (raw.get("round") or "0").split() if x.isdigit()],
                answer=raw.get("answer") or "",
                expected=list(p.get("expected") or []),
                prompt_text=str(msgs[-1].get("content", "")),
            )
        )
    return out


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    try:
        obj = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(
            f"{run_dir}: no manifest.json (expected a folder written by `harness bench`)"
        ) from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("kind") != "bench":
        raise InputError(f"{run_dir}: not a `harness bench` run folder (its manifest has no bench section)")
    return obj


# ---------------------------------------------------------------------------------------------
# The model selection table
# ---------------------------------------------------------------------------------------------


def energy_per_1k_tokens(
    power_watts: float | None, tokens_per_s: float | None, price_per_kwh: float | None = None
) -> tuple[float | None, float | None, float | None]:
    """(joules, watt-hours, cost) per 1,000 output tokens at a constant power draw.

    Formula: J/1k = W × 1000 / (output tokens/s); Wh/1k = J/1k / 3600; cost/1k = Wh/1k / 1000 × price
    per kWh. None where power or speed is unknown (or speed is 0).
    """
    if power_watts is None or not tokens_per_s or tokens_per_s <= 0 or not math.isfinite(tokens_per_s):
        return None, None, None
    joules = power_watts * 1000.0 / tokens_per_s
    wh = joules / 3600.0
    cost = wh / 1000.0 * price_per_kwh if price_per_kwh is not None else None
    return joules, wh, cost


@dataclass(frozen=True)
class _Col:
    key: str
    header: str
    doc: str
    kind: str = "float"


# One line per column (header, then its explanation for the notes under the table).
# fmt: off
_COLUMNS = (
    _Col("alias", "alias", "the model as asked, or derived from its id (name without version and device); rows of one alias sit together", "str"),
    _Col("model", "model", "the exact variant id the host serves, as sent in every request", "str"),
    _Col("host", "host", f"where it ran; `{EMBEDDED_LABEL}`: a Foundry Local host the bench started for this model folder alone", "str"),
    _Col("ep", "EP", "execution provider / device named by the variant id (generic-cpu, cuda-gpu, ...); — when the id names none", "str"),
    _Col("mode", "mode", "stream: streamed, with time to first token; plain: complete responses (no TTFT)", "str"),
    _Col("concurrency", "c", "requests in flight at once", "int"),
    _Col("status", "status", "ok; skipped (not served, no prompt for its capabilities, host unreachable); failed (load failed, no answer, every request failed); reasons below", "str"),
    _Col("requests", "ok/sent", "measured requests that completed / were sent (warm-up excluded)", "str"),
    _Col("ttft_ms_p50", "TTFT p50 ms", "time to first token, median of successful measured requests (the report's summary)"),
    _Col("ttft_ms_p95", "TTFT p95 ms", "time to first token, 95th percentile"),
    _Col("e2e_ms_mean", "E2E mean ms", "whole response time, mean"),
    _Col("e2e_ms_p95", "E2E p95 ms", "whole response time, 95th percentile"),
    _Col("output_tokens_per_s", "out tok/s", "completion tokens of successful requests / the stage's window (first send to last end); prompt tokens never count (the workshop's script divided prompt + completion tokens by latency)"),
    _Col("load_s", "load s", "time to load the model: the embedded host's start-up (registration and load), or the host's load call when the bench had to load it; — when already loaded"),
    _Col("peak_rss_mb", "peak RSS MB", "highest resident memory of the host process, sampled every 0.1 s and at the start and end of each model, while this model was benched (warm-up included); a host serving several models counts them all; — when the host is not a process on this machine"),
    _Col("disk", "disk MB", "the model folder's size on disk (embedded host: the folder served; local Foundry service: found under its modelCachePath); `declared`: size_mb from models.json, not measured", "str"),
    _Col("quality_hand", "quality (hand)", "mean of the 1-5 scores filled into scoring.csv, n = answers scored", "str"),
    _Col("quality_judge", "quality (judge)", "mean of the judge model's 1-5 scores, n = verdicts with a score; unparsed verdicts counted, kept in judge.jsonl", "str"),
    _Col("license", "license", "as declared in models.json; — unknown", "str"),
    _Col("capabilities", "capabilities", "tags from models.json; prompts with `capabilities` go only to models sharing a tag", "str"),
    _Col("energy_j_per_1k", "J / 1k tok", "energy per 1,000 output tokens at --power-watts W: W × 1000 / (out tok/s)"),
    _Col("energy_wh_per_1k", "Wh / 1k tok", "the same in watt-hours: J / 3600"),
    _Col("cost_per_1k", "cost / 1k tok", "Wh / 1000 × --price-per-kwh"),
)
# fmt: on


def _stage_row(summary: dict[str, Any] | None, host: str, model: str, stage: str) -> dict[str, Any]:
    if not summary:
        return {}
    for row in summary.get("groups", []):
        key = row.get("key") or {}
        if key.get("host") == host and key.get("model") == model and key.get("stage") == stage:
            return dict(row)
    return {}


def _peak_rss_mb(samples: list[dict[str, Any]], entry: dict[str, Any]) -> float | None:
    lo, hi, host = entry.get("started_unix_ns"), entry.get("ended_unix_ns"), entry.get("host")
    if lo is None or hi is None or host is None:
        return None
    inside = [s["rss_bytes"] for s in samples if s.get("host") == host and lo <= s.get("t_unix_ns", -1) <= hi]
    return max(inside) / 1e6 if inside else None


def _host_samples(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "host_metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if (
            isinstance(obj, dict)
            and isinstance(obj.get("rss_bytes"), int | float)
            and isinstance(obj.get("t_unix_ns"), int)
        ):
            out.append(obj)
    return out


def _load_summary(run_dir: Path, problems: list[str]) -> dict[str, Any] | None:
    """summary.json when it was computed without trimming (as the bench does), else computed anew."""
    path = run_dir / "summary.json"
    if path.is_file():
        try:
            obj = orjson.loads(path.read_bytes())
            if isinstance(obj, dict) and (obj.get("trim") or {}).get("trim_s") == 0:
                return obj
        except orjson.JSONDecodeError:
            pass
    if not (run_dir / "records.jsonl").is_file():
        return None
    records, _ = read_records(run_dir / "records.jsonl")
    return _build_report(run_dir, records, problems)


def selection_rows(
    manifest: dict[str, Any],
    summary: dict[str, Any] | None,
    samples: list[dict[str, Any]],
    hand: dict[tuple[str, str], ScoreSummary],
    judge: dict[tuple[str, str], ScoreSummary],
    *,
    power_watts: float | None,
    price_per_kwh: float | None,
) -> list[dict[str, Any]]:
    """One row per (host, model, stage) measured, one per model not measured; grouped by alias."""
    rows: list[dict[str, Any]] = []
    for e in manifest.get("models", []):
        host, model = e.get("host"), e.get("resolved")
        caps = e.get("capabilities") or []
        base: dict[str, Any] = {
            "alias": e.get("alias") or e.get("asked"),
            "asked": e.get("asked"),
            "model": model or e.get("asked"),
            "host": e.get("host_label"),
            "host_url": host,
            "ep": e.get("ep"),
            "status": e.get("status"),
            "reason": e.get("reason"),
            "load_s": e.get("load_s"),
            "peak_rss_mb": _peak_rss_mb(samples, e),
            "disk_mb": e.get("disk_mb"),
            "disk_source": e.get("disk_source"),
            "license": e.get("license"),
            "capabilities": caps,
        }
        key = (str(host), str(model))
        # A scoring.csv whose host column was deleted still scores the model (host read as "").
        hand_scores = hand.get(key) or hand.get(("", str(model)))
        for name, scores in (("hand", hand_scores), ("judge", judge.get(key))):
            s = scores or ScoreSummary()
            base |= {f"quality_{name}_mean": s.mean, f"quality_{name}_n": s.n, f"quality_{name}_sd": s.sd}
            base[f"quality_{name}_unparsed"] = s.unparsed
            base[f"quality_{name}"] = s.label()
        stages = e.get("stages") or []
        if not stages:
            rows.append(base | {"mode": None, "concurrency": None, "requests": None})
            continue
        for stage in stages:
            mode, _, c = stage.partition(" c=")
            g = _stage_row(summary, str(host), str(model), stage)
            tps = g.get("output_tokens_per_s")
            j, wh, cost = energy_per_1k_tokens(power_watts, tps, price_per_kwh)
            rows.append(
                base
                | {
                    "stage": stage,
                    "mode": mode,
                    "concurrency": int(c) if c.isdigit() else None,
                    "requests_sent": g.get("requests"),
                    "requests_ok": g.get("ok"),
                    "requests": f"{g['ok']}/{g['requests']}" if "requests" in g else None,
                    "ttft_ms_p50": g.get("ttft_ms_p50"),
                    "ttft_ms_p95": g.get("ttft_ms_p95"),
                    "e2e_ms_mean": g.get("e2e_ms_mean"),
                    "e2e_ms_p95": g.get("e2e_ms_p95"),
                    "output_tokens_per_s": tps,
                    "energy_j_per_1k": j,
                    "energy_wh_per_1k": wh,
                    "cost_per_1k": cost,
                }
            )
    order: dict[str, int] = {}
    for r in rows:
        order.setdefault(str(r["alias"]), len(order))
    return sorted(rows, key=lambda r: order[str(r["alias"])])  # stable: bench order within an alias


def _cell(row: dict[str, Any], col: _Col) -> str:
    from harness.report.tables import format_value

    if col.key == "disk":
        mb = row.get("disk_mb")
        if mb is None:
            return "—"
        return format_value(mb) + (" declared" if row.get("disk_source") == "declared" else "")
    if col.key == "capabilities":
        return ", ".join(row.get("capabilities") or []) or "—"
    value = row.get(col.key)
    if value is None or value == "":
        return "—"
    if col.kind == "str":
        return str(value)
    if col.kind == "int":
        return f"{int(value):,}"
    if col.key in ("cost_per_1k", "energy_wh_per_1k"):
        return f"{float(value):.3g}"  # often far below 1: significant digits, not decimals
    return format_value(value)


def _shown_columns(
    rows: list[dict[str, Any]], power_watts: float | None, price_per_kwh: float | None
) -> list[_Col]:
    skip = set()
    if power_watts is None:
        skip |= {"energy_j_per_1k", "energy_wh_per_1k", "cost_per_1k"}
    if price_per_kwh is None:
        skip.add("cost_per_1k")
    if not any(r.get("quality_judge_n") or r.get("quality_judge_unparsed") for r in rows):
        skip.add("quality_judge")
    return [c for c in _COLUMNS if c.key not in skip]


def render_selection(
    run_dir: Path,
    *,
    summary: dict[str, Any] | None = None,
    power_watts: float | None = None,
    price_per_kwh: float | None = None,
    problems: Sequence[str] = (),
) -> str:
    """Write bench.md, bench.csv and bench.json from a bench run folder; returns a terminal table.

    Everything is read from the folder (manifest, summary, host samples, scoring.csv, judge.jsonl),
    so `harness bench --rescore` renders exactly what the run itself rendered, plus new scores.
    Power and price default to what the run was given.
    """
    manifest = _read_manifest(run_dir)
    # The run's own problems stay in the table after a rescore; new ones follow.
    notes = list(dict.fromkeys([*manifest.get("problems", []), *problems]))
    bench = manifest.get("bench") or {}
    power_watts = power_watts if power_watts is not None else bench.get("power_watts")
    price_per_kwh = price_per_kwh if price_per_kwh is not None else bench.get("price_per_kwh")
    if summary is None:
        summary = _load_summary(run_dir, notes)
    hand, hand_problems = read_scoring_csv(run_dir / "scoring.csv")
    notes += hand_problems
    judge = read_judge(run_dir / "judge.jsonl")
    rows = selection_rows(
        manifest,
        summary,
        _host_samples(run_dir),
        hand,
        judge,
        power_watts=power_watts,
        price_per_kwh=price_per_kwh,
    )
    cols = _shown_columns(rows, power_watts, price_per_kwh)
    settings = {"power_watts": power_watts, "price_per_kwh": price_per_kwh}
    _write_bench_json(run_dir / "bench.json", manifest, rows, cols, settings, notes)
    _write_bench_csv(run_dir / "bench.csv", rows, power_watts is not None, price_per_kwh is not None)
    markdown = _markdown(manifest, rows, cols, settings, notes, judges_used(run_dir / "judge.jsonl"))
    (run_dir / "bench.md").write_text(markdown, encoding="utf-8")
    return _console(rows)


_CSV_KEYS = (
    "alias", "asked", "model", "host", "host_url", "ep", "mode", "concurrency", "status", "reason",
    "requests_sent", "requests_ok", "ttft_ms_p50", "ttft_ms_p95", "e2e_ms_mean", "e2e_ms_p95",
    "output_tokens_per_s", "load_s", "peak_rss_mb", "disk_mb", "disk_source",
    "quality_hand_mean", "quality_hand_n", "quality_judge_mean", "quality_judge_n", "quality_judge_unparsed",
    "license", "capabilities", "energy_j_per_1k", "energy_wh_per_1k", "cost_per_1k",
)  # fmt: skip


def _write_bench_csv(path: Path, rows: list[dict[str, Any]], energy: bool, cost: bool) -> None:
    keys = [k for k in _CSV_KEYS if (energy or not k.startswith("energy")) and (cost or k != "cost_per_1k")]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for r in rows:
            cells = []
            for k in keys:
                v = r.get(k)
                if isinstance(v, list):
                    v = " ".join(str(x) for x in v)
                elif isinstance(v, float):
                    v = f"{v:.6g}"
                cells.append("" if v is None else v)
            w.writerow(cells)


def _write_bench_json(
    path: Path,
    manifest: dict[str, Any],
    rows: list[dict[str, Any]],
    cols: list[_Col],
    settings: dict[str, Any],
    notes: list[str],
) -> None:
    from datetime import UTC, datetime

    bench = manifest.get("bench") or {}
    _write_json(
        path,
        {
            "run_id": manifest.get("run_id"),
            "generated_utc": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "config": {k: v for k, v in bench.items() if k not in ("prompts", "catalog")} | settings,
            "columns": {c.key: c.doc for c in cols},
            "rows": rows,
            "problems": notes,
        },
    )


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(
    manifest: dict[str, Any],
    rows: list[dict[str, Any]],
    cols: list[_Col],
    settings: dict[str, Any],
    notes: list[str],
    judges: Sequence[tuple[str, str]] = (),
) -> str:
    bench = manifest.get("bench") or {}
    prompts = bench.get("prompts") or []
    temp = bench.get("temperature")
    out = [
        f"# Model selection: {manifest.get('run_id')}",
        "",
        f"- Started {manifest.get('started_utc')} on {manifest.get('machine', {}).get('platform')} "
        f"({manifest.get('machine', {}).get('cpus')} CPUs), harness {manifest.get('versions', {}).get('harness')}.",
        f"- {bench.get('rounds')} round(s) of {len(prompts)} prompt(s) ({', '.join(p['id'] for p in prompts)}) "
        f"per model and stage, after {bench.get('warmup_rounds')} warm-up round(s) (not measured); "
        f"max_tokens {bench.get('max_tokens')}, temperature {'server default' if temp is None else f'{temp:g}'}"
        + (" (deterministic)" if temp == 0 else "")
        + f"; modes {', '.join(bench.get('modes') or [])}; concurrency {', '.join(str(c) for c in bench.get('concurrency') or [])}; "
        f"connection `{bench.get('connection')}`.",
    ]
    if settings.get("power_watts") is not None:
        price = settings.get("price_per_kwh")
        out.append(
            f"- Energy at {settings['power_watts']:g} W"
            + (f", price {price:g} per kWh." if price is not None else ".")
        )
    if judges:
        out.append(
            "- Judge: " + ", ".join(f"`{model}` at {url}" for url, model in judges) + " (judge.jsonl)."
        )
    out += ["", "| " + " | ".join(c.header for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_md_escape(_cell(r, c)) for c in cols) + " |")
    out += ["", "Columns:", ""]
    out += [f"- **{c.header}**: {c.doc}." for c in cols]
    reasons = [r for r in rows if r.get("reason")]
    seen: set[tuple[str, str]] = set()
    if reasons:
        out += ["", "## Status reasons", ""]
        for r in reasons:
            ident = (str(r.get("host")), str(r.get("model")))
            if ident in seen:
                continue
            seen.add(ident)
            where = f" on {r['host']}" if r.get("host_url") else ""
            out.append(f"- `{r['model']}`{where}: **{r['status']}**: {_md_escape(str(r['reason']))}")
    samples = [e for e in manifest.get("models", []) if e.get("sample_answer")]
    if samples:
        out += ["", "## Sample answers (first measured answer, first 200 characters)", ""]
        out += [
            f"- `{e['resolved']}` on {e['host_label']}: “{_md_escape(e['sample_answer'].strip())}”"
            for e in samples
        ]
    if notes:
        out += ["", "## Notes", ""] + [f"- {_md_escape(n)}" for n in notes]
    out += [
        "",
        "Latency and throughput come from the run's `summary.json` (the post-processor, over raw records, no "
        "trimming). Hand scores: fill the `score` column of `scoring.csv`, then `harness bench --rescore RUN_DIR`.",
        "",
    ]
    return "\n".join(out)


def _console(rows: list[dict[str, Any]]) -> str:
    from harness.report.tables import fixed_width, format_value

    header = [
        "alias",
        "model",
        "host",
        "mode",
        "status",
        "TTFT p50",
        "E2E p95",
        "out tok/s",
        "RSS MB",
        "quality",
    ]
    body = []
    for r in rows:
        mode = f"{r['mode']} c={r['concurrency']}" if r.get("mode") else "-"
        # People's scores first; the judge's where nobody scored.
        quality = r.get("quality_hand") if r.get("quality_hand_n") else r.get("quality_judge")
        body.append(
            [
                str(r["alias"]),
                str(r["model"]),
                str(r["host"]),
                mode,
                str(r["status"]),
                format_value(r.get("ttft_ms_p50")),
                format_value(r.get("e2e_ms_p95")),
                format_value(r.get("output_tokens_per_s")),
                format_value(r.get("peak_rss_mb")),
                str(quality or "—"),
            ]
        )
    if not body:
        return "(no model was benched)"
    return (
        fixed_width(header, body, left=5)
        + "\n(latencies in ms; output tokens/s counts completion tokens only)"
    )
