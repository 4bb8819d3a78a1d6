"""The plan: a scenario with its hosts probed and its models resolved, ready for Locust processes.

`harness run` builds the plan once (after starting embedded hosts), writes it into the run folder,
and hands it to every Locust process; a plain `locust -f locustfiles/chat.py` builds it itself from
`--scenario` and `--host`. Secrets never enter the plan: a target names where its key comes from.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from harness.errors import HostError, InputError
from harness.hosts import HostInfo, normalize_base_url, probe_host, resolve_models
from harness.scenario import Scenario

__all__ = [
    "Plan",
    "Target",
    "build_targets",
    "host_label",
    "prompt_dicts",
    "read_api_key",
    "resolve_target",
]


def prompt_dicts(scenario: Scenario, base_dir: Path | None = None) -> list[dict[str, Any]]:
    """The prompt set as the Locust processes use it: id, messages, optional max_tokens and aspects."""
    return [
        {
            "id": p.id,
            "messages": p.chat_messages(),
            "max_tokens": p.max_tokens,
            "expected": p.expected,
            "capabilities": p.capabilities,
        }
        for p in scenario.prompt_set(base_dir)
    ]


@dataclass
class Target:
    url: str
    label: str
    weight: float
    models: list[str]
    """Model ids this host serves, resolved from what the scenario asked."""
    asked: dict[str, str] = field(default_factory=dict)
    """asked name -> resolved id."""
    flavour: str = "openai"
    embedded: str | None = None
    pid: int | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    down_since_utc: str | None = None
    """Set after the run when every request from some moment on failed to reach the host."""


@dataclass
class Plan:
    run_id: str
    run_dir: str
    scenario: dict[str, Any]
    targets: list[Target]
    prompts: list[dict[str, Any]]
    stages: list[dict[str, Any]] = field(default_factory=list)
    """`harness.shapes.Stage` fields of each stage, in order."""
    workload: dict[str, Any] | None = None
    """How the scenario's `workload` lengths are known (tokenizer path or calibration) and its
    description (`harness.workload_run.plan_workload`); None without a workload section."""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes | str) -> Plan:
        obj = orjson.loads(data)
        obj["targets"] = [Target(**t) for t in obj["targets"]]
        return cls(**obj)

    def scenario_obj(self) -> Scenario:
        return Scenario.model_validate(self.scenario)


def host_label(url: str) -> str:
    return urlsplit(url).netloc or url


def read_api_key(env: str | None, file: str | None) -> str | None:
    """A host's API key from its environment variable or file; never logged, never in the plan."""
    if env:
        value = os.environ.get(env)
        if value is None:
            raise InputError(f"api_key_env: environment variable {env} is not set")
        return value.strip()
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InputError(f"api_key_file: cannot read {file} ({exc.strerror})") from None
    return None


def _load_missing(info: HostInfo, resolved: dict[str, str]) -> None:
    """Load every resolved model the host has not loaded yet (Foundry Local flavours only)."""
    from harness.discovery import load_model, loaded_models

    loaded = loaded_models(info)
    if loaded is None:
        raise HostError(
            f"host {info.url}: load_models is set but a {info.flavour} host cannot say what it has loaded"
        )
    for asked, model in resolved.items():
        if model in loaded:
            continue
        ok, detail = load_model(info, asked, model)
        if not ok:
            raise HostError(f"host {info.url}: could not load model {model} ({detail})")


def resolve_target(
    url: str,
    asked: list[str],
    *,
    label: str | None = None,
    weight: float = 1.0,
    embedded: str | None = None,
    pid: int | None = None,
    api_key_env: str | None = None,
    api_key_file: str | None = None,
    load_models: bool = False,
) -> Target:
    """Probe one host and resolve the models asked of it (loading them if `load_models`).
    Raises HostError naming the host."""
    url = normalize_base_url(url)
    info = probe_host(url, api_key=read_api_key(api_key_env, api_key_file))
    resolved = resolve_models(info, asked)
    if load_models:
        _load_missing(info, resolved)
    return Target(
        url=url,
        label=label or host_label(url),
        weight=weight,
        models=list(dict.fromkeys(resolved.values())),
        asked=resolved,
        flavour=info.flavour,
        embedded=embedded,
        pid=pid,
        api_key_env=api_key_env,
        api_key_file=api_key_file,
    )


def build_targets(scenario: Scenario, urls: dict[int, tuple[str, str | None, int | None]]) -> list[Target]:
    """Probe every host of the scenario and resolve its models.

    `urls` maps a host's index in `scenario.hosts` to (base URL, embedded kind, pid) for hosts
    started by the harness; the others use their `url`. Raises HostError naming the host.
    """
    targets = []
    for i, spec in enumerate(scenario.hosts):
        url, embedded, pid = urls.get(i, (spec.url or "", None, None))
        targets.append(
            resolve_target(
                url,
                spec.models if spec.models is not None else scenario.models,
                label=spec.name,
                weight=spec.weight,
                embedded=embedded,
                pid=pid,
                api_key_env=spec.api_key_env,
                api_key_file=spec.api_key_file,
                load_models=spec.load_models,
            )
        )
    labels = [t.label for t in targets]
    for t in targets:
        if labels.count(t.label) > 1:
            t.label = f"{t.label}#{targets.index(t) + 1}"
    return targets
