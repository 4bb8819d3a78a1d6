"""The scenario: a validated description of one load test.

`load_scenario(path, overrides)` reads YAML (or JSON), merges command-line overrides, and validates
once; every error names the file, the field path and what was expected, on one line. Unknown keys
are errors. Prompts may be inline or in a JSON file shaped like the workshop's `prompts.json`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import thresholds
from harness.client import policy
from harness.errors import InputError
from harness.flavours import EMBEDDED_FLAVOURS
from harness.workload.config import WorkloadSpec

__all__ = [
    "DEFAULT_PROMPTS",
    "HostSpec",
    "LoadSpec",
    "Prompt",
    "RequestSpec",
    "RetrySpec",
    "Scenario",
    "SloSpec",
    "StageSpec",
    "SweepSpec",
    "TimeoutSpec",
    "WarmupSpec",
    "load_prompts_file",
    "load_scenario",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?!s))?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


def parse_duration(value: str | float | int) -> float:
    """`30s`, `5m`, `1h30m`, `90` (seconds) -> seconds."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    text = str(value).strip()
    try:
        return parse_duration(float(text))
    except ValueError:
        pass
    m = _DURATION.match(text)
    if not text or not m or not any(m.groups()):
        raise ValueError(f"expected a duration like 30s, 5m or 1h30m, got {value!r}")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Message(_Model):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class Prompt(_Model):
    """One prompt of the set. `text` is shorthand for a single user message."""

    id: str = Field(description="stable id, written into every record as prompt_id")
    text: str | None = Field(None, alias="prompt", description="the user message")
    system: str | None = Field(None, description="optional system message before `text`")
    messages: list[Message] | None = Field(None, description="full message list (instead of text)")
    max_tokens: int | None = Field(None, gt=0, description="overrides request.max_tokens for this prompt")
    expected: list[str] | None = Field(
        None, alias="expected_aspects", description="aspects a good answer covers (quality scoring)"
    )
    capabilities: list[str] | None = Field(None, description="models need one of these to get this prompt")

    @model_validator(mode="after")
    def _one_form(self) -> Prompt:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of `text` (or `prompt`) and `messages`")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` must not be empty")
        return self

    def chat_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [m.model_dump() for m in self.messages]
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": self.text or ""})
        return msgs


DEFAULT_PROMPTS: list[dict[str, Any]] = [
    {"id": "rag-2s", "text": "Explain the principle of retrieval augmented generation in 2 sentences."},
    {"id": "benefits-3", "text": "List three benefits of local inference."},
    {
        "id": "summarise",
        "text": "Summarise why small language models suit offline features, in one paragraph.",
    },
    {
        "id": "classify",
        "text": "Is this review positive or negative? 'The battery lasts all day.' Answer briefly.",
    },
]


class HostSpec(_Model):
    """A host to load: a base URL, or one the harness starts itself (`embedded`)."""

    url: str | None = Field(None, description="base URL, e.g. http://127.0.0.1:5273/v1")
    embedded: str | None = Field(
        None, description=f"start this kind of host for the run: {' or '.join(EMBEDDED_FLAVOURS)}"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="options for an embedded host, as its `harness serve` flags (ttft_ms: 100 -> --ttft-ms 100)",
    )
    name: str | None = Field(None, description="label in tables (default: host:port)")
    weight: float = Field(1.0, gt=0, description="share of users relative to the other hosts")
    models: list[str] | None = Field(None, description="models to use on this host (default: the scenario's)")
    load_models: bool = Field(
        False, description="ask a Foundry Local host to load models that are cached but not loaded"
    )
    api_key_env: str | None = Field(None, description="environment variable holding this host's API key")
    api_key_file: str | None = Field(None, description="file holding this host's API key")

    @field_validator("embedded")
    @classmethod
    def _embedded_flavour(cls, v: str | None) -> str | None:
        if v is not None and v not in EMBEDDED_FLAVOURS:
            raise ValueError(f"Input should be {' or '.join(repr(f) for f in EMBEDDED_FLAVOURS)}")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> HostSpec:
        if (self.url is None) == (self.embedded is None):
            raise ValueError("give exactly one of `url` and `embedded`")
        if self.url is not None and not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"url must look like http://HOST:PORT[/v1], got {self.url!r}")
        if self.options and self.embedded is None:
            raise ValueError("`options` only applies to an embedded host")
        return self


class RequestSpec(_Model):
    max_tokens: int | tuple[int, int] = Field(
        128, description="output tokens asked per request; [lo, hi] draws uniformly per request"
    )
    temperature: float | None = Field(0.0, ge=0, description="sampling temperature (0 = repeatable greedy)")
    stream: bool = Field(True, description="streaming (token timings) or complete responses")
    extra: dict[str, Any] = Field(default_factory=dict, description="more fields for the request body")
    keep_text: bool = Field(False, description="keep each answer's text in the records (quality scoring)")

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, v: int | tuple[int, int]) -> int | tuple[int, int]:
        lo, hi = (v, v) if isinstance(v, int) else v
        if lo < 1 or hi < lo:
            raise ValueError("must be a positive integer or [lo, hi] with 1 <= lo <= hi")
        return v


class StageSpec(_Model):
    """One stage of a staged run: closed loop (`users`) or open loop (`rate`)."""

    name: str | None = Field(None, description="label in records and tables (default stage-N)")
    duration: float = Field(..., gt=0, description="30s, 5m")
    users: int | None = Field(None, ge=0, description="concurrent users (closed loop)")
    rate: float | None = Field(None, gt=0, description="requests per second over all workers (open loop)")
    spawn_rate: float | None = Field(
        None, gt=0, description="users started per second when the count changes"
    )
    trim_s: float = Field(0.0, ge=0, description="seconds at the stage start the report treats as warm-up")

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @model_validator(mode="after")
    def _one_mode(self) -> StageSpec:
        if (self.users is None) == (self.rate is None):
            raise ValueError("give exactly one of `users` (closed loop) and `rate` (open loop)")
        return self


class SweepSpec(_Model):
    """Concurrencies or rates run one after another as named stages (c=N or rate=R/s)."""

    users: list[int] | None = Field(None, description="concurrencies, e.g. [1, 2, 4, 8]")
    rates: list[float] | None = Field(None, description="requests per second, e.g. [1, 2, 5]")
    stage_duration: float = Field(30.0, gt=0, description="length of each step")
    trim_s: float = Field(
        5.0, ge=0, description="first seconds of each step treated as warm-up in the report"
    )

    @field_validator("stage_duration", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @model_validator(mode="after")
    def _one_list(self) -> SweepSpec:
        if (self.users is None) == (self.rates is None):
            raise ValueError("give exactly one of `users` and `rates`")
        values = self.users if self.users is not None else self.rates
        if not values or any(v <= 0 for v in values):
            raise ValueError("the sweep needs a non-empty list of positive values")
        if self.trim_s >= self.stage_duration:
            raise ValueError("trim_s must be shorter than stage_duration")
        return self


class LoadSpec(_Model):
    users: int = Field(1, ge=1, description="concurrent users (each one stream at a time)")
    spawn_rate: float | None = Field(
        None, gt=0, description="users started per second (default: all at once)"
    )
    duration: float = Field(30.0, gt=0, description="how long to run: 30s, 5m, 1h")
    think_time: float | tuple[float, float] = Field(
        0.0, description="pause after each response, seconds or [lo, hi]"
    )
    stop_timeout: float = Field(
        0.0, ge=0, description="seconds streams running at the end may take to finish"
    )
    stagger: float = Field(
        1.0,
        ge=0,
        description="each user's first request waits a random 0..stagger s, so users never start in lock-step",
    )
    rate: float | None = Field(None, gt=0, description="open loop: requests per second over all workers")
    arrival: Literal["poisson", "constant"] = Field("poisson", description="open-loop arrival process")
    max_in_flight: int = Field(
        256, ge=1, description="open loop: most streams at once (users carrying arrivals)"
    )
    stages: list[StageSpec] | None = Field(None, description="ramp, steps, spike, soak: stages back to back")
    sweep: SweepSpec | None = Field(None, description="concurrencies or rates one after another")

    @field_validator("duration", "stop_timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("think_time")
    @classmethod
    def _think(cls, v: float | tuple[float, float]) -> float | tuple[float, float]:
        lo, hi = (v, v) if isinstance(v, int | float) else v
        if lo < 0 or hi < lo:
            raise ValueError("must be >= 0, or [lo, hi] with 0 <= lo <= hi")
        return v

    @model_validator(mode="after")
    def _one_shape(self) -> LoadSpec:
        if self.stages is not None and self.sweep is not None:
            raise ValueError("give `stages` or `sweep`, not both")
        if self.stages is not None and not self.stages:
            raise ValueError("`stages` must not be empty")
        return self


class WarmupSpec(_Model):
    requests: int = Field(1, ge=0, description="requests per host and model before measuring (marked warmup)")


class TimeoutSpec(_Model):
    connect_s: float = Field(policy.DEFAULT_TIMEOUTS.connect_s, gt=0)
    first_token_s: float = Field(
        policy.DEFAULT_TIMEOUTS.first_token_s, gt=0, description="headers and first token"
    )
    idle_s: float = Field(
        policy.DEFAULT_TIMEOUTS.idle_s, gt=0, description="longest gap between tokens (beyond: stall)"
    )
    total_s: float = Field(policy.DEFAULT_TIMEOUTS.total_s, gt=0)

    def timeouts(self) -> policy.Timeouts:
        """The client's `Timeouts` for these limits."""
        return policy.Timeouts(self.connect_s, self.first_token_s, self.idle_s, self.total_s)


class RetrySpec(_Model):
    """What a user does when the host answers 429 Too Many Requests."""

    on_429: Literal["count", "retry"] = Field(
        "count",
        description="count: record it and go on; retry: wait (Retry-After, else backoff) and send again",
    )
    max_retries: int = Field(3, ge=0, description="retries of one request before giving up")
    backoff_s: float = Field(0.5, gt=0, description="first wait when the host gives no Retry-After; doubles")
    max_backoff_s: float = Field(30.0, gt=0)


class SloSpec(_Model):
    ttft_ms: float | None = Field(None, gt=0)
    tpot_ms: float | None = Field(None, gt=0)
    e2e_ms: float | None = Field(None, gt=0)


ConnectionPolicyField = Annotated[policy.ConnectionPolicy, Field(description=policy.POLICY_HELP)]


class Scenario(_Model):
    name: str = Field("scenario", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str | None = None
    hosts: list[HostSpec] = Field(default_factory=list, description="empty: an embedded host is started")
    models: list[str] = Field(
        default_factory=list, description="ids or aliases; empty: each host's first model"
    )
    prompts: list[Prompt] | None = None
    prompts_file: str | None = Field(None, description="JSON file of prompts (workshop prompts.json)")
    request: RequestSpec = Field(default_factory=RequestSpec)
    load: LoadSpec = Field(default_factory=LoadSpec)
    warmup: WarmupSpec = Field(default_factory=WarmupSpec)
    timeouts: TimeoutSpec = Field(default_factory=TimeoutSpec)
    slo: SloSpec = Field(default_factory=SloSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    connection: ConnectionPolicyField = policy.DEFAULT_CONNECTION_POLICY
    seed: int = Field(0, description="seeds prompt order and lengths: same seed, same request sequence")
    workload: WorkloadSpec | None = Field(
        None,
        description="what each request asks for: exact input/output lengths, a dataset, conversations, "
        "shared prefixes, a request limit (empty: the prompt set and request.max_tokens, as before)",
    )
    thresholds: list[str] = Field(
        default_factory=list,
        description="checks METRIC OP NUMBER (e.g. ttft_p95_ms<500) per host, model and stage; "
        "a failed one makes `harness run` exit 1",
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: list[str]) -> list[str]:
        # Syntax here, with the rest of the scenario; metric names where the report's keys are known
        # (`harness.thresholds.known_metrics`, checked by `harness run` before it starts).
        for i, text in enumerate(v):
            try:
                thresholds.parse(text)
            except ValueError as exc:
                raise ValueError(f"[{i}] {text!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _prompt_source(self) -> Scenario:
        if self.prompts is not None and self.prompts_file is not None:
            raise ValueError("give `prompts` or `prompts_file`, not both")
        if self.prompts is not None:
            ids = [p.id for p in self.prompts]
            if len(set(ids)) != len(ids):
                raise ValueError("prompt ids must be unique")
            if not ids:
                raise ValueError("`prompts` must not be empty")
        return self

    def prompt_set(self, base_dir: Path | None = None) -> list[Prompt]:
        if self.prompts is not None:
            return self.prompts
        if self.prompts_file is not None:
            path = Path(self.prompts_file)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            return load_prompts_file(path)
        return [Prompt.model_validate(p) for p in DEFAULT_PROMPTS]


def load_prompts_file(path: Path) -> list[Prompt]:
    """A JSON prompt set: a list of prompts, `{"prompts": [...]}`, or `{id: text | prompt}`."""
    try:
        raw = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"{path}: prompts file not found") from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(raw, dict) and "prompts" in raw:
        raw = raw["prompts"]
    elif isinstance(raw, dict):
        raw = [{"id": k, **(v if isinstance(v, dict) else {"text": v})} for k, v in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{path}: expected a non-empty list of prompts")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"id": f"p{i + 1}", "text": item}
        try:
            out.append(Prompt.model_validate(item))
        except ValidationError as exc:
            raise InputError(f"{path}: {_first_error(exc, prefix=f'[{i}]')}") from None
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: prompt ids must be unique")
    return out


def load_scenario(path: Path | None, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read a scenario file (None: all defaults), apply `overrides` (dotted keys), validate once."""
    data: dict[str, Any] = {}
    label = str(path) if path else "scenario"
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{path}: scenario file not found") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read scenario file ({exc.__class__.__name__})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise InputError(f"{path}: not valid YAML{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: expected a mapping of scenario fields at the top level")
        data = loaded
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{label}: {_first_error(exc)}") from None
    if scenario.prompts_file is not None and path is not None:
        pf = Path(scenario.prompts_file)
        if not pf.is_absolute():
            scenario = scenario.model_copy(update={"prompts_file": str((path.parent / pf).resolve())})
    if scenario.workload is not None and path is not None:
        scenario = scenario.model_copy(update={"workload": _workload_paths(scenario.workload, path.parent)})
    return scenario


def _workload_paths(w: WorkloadSpec, base: Path) -> WorkloadSpec:
    """The workload's dataset and tokenizer paths made absolute, relative to the scenario file (so
    the plan names the same files whatever folder a Locust process starts in)."""
    update: dict[str, Any] = {}
    if w.dataset is not None and not Path(w.dataset.path).is_absolute():
        update["dataset"] = w.dataset.model_copy(update={"path": str((base / w.dataset.path).resolve())})
    if w.tokenizer is not None and not Path(w.tokenizer).is_absolute():
        update["tokenizer"] = str((base / w.tokenizer).resolve())
    return w.model_copy(update=update) if update else w


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def _first_error(exc: ValidationError, prefix: str = "") -> str:
    errors = exc.errors()
    e = errors[0]
    loc = prefix + ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = e.get("input")
    shown = (
        ""
        if e["type"] in ("extra_forbidden", "missing") or isinstance(got, dict | list)
        else f" (got {got!r})"
    )
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc or 'top level'}: {msg}{shown}{more}"
