"""What a bench run is asked to do: which models, which prompts, how (`BenchConfig`).

The configuration is the command line and BENCH_* variables merged (`harness.commands.bench`).
`models.json` (the workshop's `{alias: {capabilities, size_mb, license}}`) gives each model its
capabilities (which prompts it gets), declared size and license; a variant id
(`qwen2.5-0.5b-instruct-cuda-gpu:4`) names its alias and execution provider; `DEFAULT_BENCH_PROMPTS`
is the workshop's prompt set with the aspects a good answer covers.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.client import DEFAULT_CONNECTION_POLICY, Timeouts
from harness.errors import InputError
from harness.hosts import resolve_model
from harness.scenario import Prompt
from harness.workload.config import WorkloadSpec

__all__ = [
    "DEFAULT_BENCH_PROMPTS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_ROUNDS",
    "MODES",
    "BenchConfig",
    "ModelInfo",
    "alias_of",
    "catalog_entry",
    "load_models_file",
    "prompts_for",
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


def catalog_entry(
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


MODES = {"stream": [True], "plain": [False], "both": [True, False]}
DEFAULT_ROUNDS = 3
DEFAULT_MAX_TOKENS = 150
"""The workshop's `max_tokens`, so figures compare with its script."""


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
    workload: WorkloadSpec | None = None
    """The workload flags: the workload's requests replace the prompt set (`harness.bench`)."""
    seed: int = 0

    @property
    def workload_requests(self) -> int:
        """Requests per round for each model with a workload: `--max-requests`, else as many as the
        prompt set holds (so a bench costs what it did without one)."""
        w = self.workload
        return w.max_requests if w is not None and w.max_requests else len(self.prompts)

    @property
    def scored(self) -> bool:
        """Whether answers can be scored: synthetic or dataset prompts have no reference answers."""
        w = self.workload
        return w is None or (w.input_tokens is None and w.dataset is None)

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
            "workload": (
                self.workload.model_dump(exclude_defaults=True)
                | {"seed": self.seed, "requests_per_round": self.workload_requests, "scored": self.scored}
                if self.workload is not None
                else None
            ),
        }


def prompts_for(prompts: Sequence[Prompt], capabilities: Sequence[str]) -> list[Prompt]:
    """Prompts without `capabilities` go to every model; the others to models sharing a tag."""
    caps = set(capabilities)
    return [p for p in prompts if not p.capabilities or caps & set(p.capabilities)]
