"""Hosts before a run: normalise base URLs, probe what answers, list models, resolve aliases.

Foundry Local wants exact variant ids (`qwen2.5-0.5b-instruct-generic-cpu:4`) in requests; people
write aliases (`qwen2.5-0.5b`). `resolve_model` applies the Foundry SDK's rule against the ids a
host lists: exact id; else the highest version of `id:`; else the alias, preferring NPU, then GPU,
then CPU variants. Resolution is per host: two hosts may serve different variants of one alias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from harness.client import Connection, Timeouts
from harness.errors import HostError

__all__ = ["HostInfo", "normalize_base_url", "probe_host", "resolve_model", "resolve_models", "root_url"]

_DEVICE_RANK = (("npu", 0), ("gpu", 1), ("cuda", 1), ("webgpu", 1), ("dml", 1), ("trt", 1), ("cpu", 2))


@dataclass
class HostInfo:
    url: str
    flavour: str
    """`foundry` (current web service), `foundry-legacy` (0.8 service), `sim`, or `openai` (other)."""
    models: list[str]
    status: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def normalize_base_url(url: str) -> str:
    """`http://h:5273` and `http://h:5273/` mean `http://h:5273/v1`; other paths are kept as given."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HostError(f"host {url!r}: expected a URL like http://127.0.0.1:5273/v1")
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def root_url(url: str) -> str:
    """`scheme://host:port` of a base URL: where a host's non-OpenAI endpoints (status, loading) live."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


def _get_json(conn: Connection, path: str) -> tuple[int, Any]:
    status, _headers, body = conn.get(path)
    try:
        return status, orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return status, None


def probe_host(url: str, *, timeout_s: float = 5.0, api_key: str | None = None) -> HostInfo:
    """List models at `url` and tell which kind of host answers. Raises HostError naming the host."""
    url = normalize_base_url(url)
    t = Timeouts(connect_s=timeout_s, first_token_s=timeout_s, idle_s=timeout_s, total_s=timeout_s * 2)
    conn = Connection(url, policy="reuse", timeouts=t, api_key=api_key)
    try:
        for attempt in range(3):
            try:
                status, obj = _get_json(conn, "/models")
                break
            except ConnectionRefusedError as exc:
                raise HostError(f"host {url}: not reachable ({_reason(exc)})") from None
            except OSError as exc:
                # A reset or a dropped connection may be a passing fault: ask again, twice.
                if attempt == 2:
                    raise HostError(f"host {url}: not reachable ({_reason(exc)})") from None
        if status != 200 or not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
            raise HostError(
                f"host {url}: GET {url}/models answered HTTP {status} without a JSON model list; "
                "expected an OpenAI-compatible API (is the base URL right, e.g. .../v1?)"
            )
        models = [str(m["id"]) for m in obj["data"] if isinstance(m, dict) and "id" in m]
        flavour, st = _flavour(url, t, api_key)
        return HostInfo(url=url, flavour=flavour, models=models, status=st)
    finally:
        conn.close()


def _flavour(url: str, t: Timeouts, api_key: str | None) -> tuple[str, dict[str, Any] | None]:
    root = Connection(root_url(url), policy="reuse", timeouts=t, api_key=api_key)
    try:
        for path, kind in (
            ("/sim/stats", "sim"),
            ("/status", "foundry"),
            ("/openai/status", "foundry-legacy"),
        ):
            try:
                status, obj = _get_json(root, path)
            except OSError:
                return "openai", None
            if status != 200 or not isinstance(obj, dict):
                continue
            if (
                kind == "sim"
                or (kind == "foundry" and "endpoints" in obj)
                or (kind == "foundry-legacy" and "Endpoints" in obj)
            ):
                return kind, obj
        return "openai", None
    finally:
        root.close()


def _reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: is the host running?"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _split_version(model_id: str) -> tuple[str, int]:
    name, sep, ver = model_id.rpartition(":")
    if sep and ver.isdigit():
        return name, int(ver)
    return model_id, -1


def _device_rank(name: str) -> int:
    tokens = re.split(r"[-_]", name.lower())
    for dev, rank in _DEVICE_RANK:
        if dev in tokens:
            return rank
    return 3


def resolve_model(wanted: str, available: list[str]) -> str | None:
    """The id among `available` that `wanted` (an id or alias) names, or None."""
    if wanted in available:
        return wanted
    versioned = [(v, m) for m in available for n, v in [_split_version(m)] if n == wanted]
    if versioned:
        return max(versioned)[1]
    prefix = wanted.lower() + "-"
    candidates = [m for m in available if _split_version(m)[0].lower().startswith(prefix)]
    if not candidates:
        return None
    # NPU before GPU before CPU; then the closest name; then the newest version.
    return min(
        candidates,
        key=lambda m: (_device_rank(_split_version(m)[0]), len(_split_version(m)[0]), -_split_version(m)[1]),
    )


def resolve_models(info: HostInfo, wanted: list[str]) -> dict[str, str]:
    """Map each wanted name to the id this host serves; HostError names the ones it lacks."""
    if not wanted:
        if not info.models:
            raise HostError(f"host {info.url}: serves no models")
        return {info.models[0]: info.models[0]}
    out: dict[str, str] = {}
    missing = []
    for w in wanted:
        got = resolve_model(w, info.models)
        if got is None:
            missing.append(w)
        else:
            out[w] = got
    if missing:
        shown = ", ".join(info.models[:8]) + (" ..." if len(info.models) > 8 else "")
        raise HostError(
            f"host {info.url}: no model matches {', '.join(missing)} (it serves: {shown or 'nothing'})"
        )
    return out
