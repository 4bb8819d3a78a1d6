"""Hosts before a run: normalise base URLs, probe what answers, list models, resolve aliases.

Foundry Local wants exact variant ids (`qwen2.5-0.5b-instruct-generic-cpu:4`) in requests; people
write aliases (`qwen2.5-0.5b`). `resolve_model` applies the Foundry SDK's rule against the ids a
host lists: exact id; else the highest version of `id:`; else the alias, preferring NPU, then GPU,
then CPU variants. Resolution is per host: two hosts may serve different variants of one alias.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from harness.client import Connection, Timeouts
from harness.errors import HostError
from harness.flavours import FLAVOURS, OPENAI

__all__ = [
    "HostInfo",
    "is_loopback",
    "local_status",
    "normalize_base_url",
    "probe_host",
    "resolve_model",
    "resolve_models",
    "root_url",
]

_DEVICE_RANK = (("npu", 0), ("gpu", 1), ("cuda", 1), ("webgpu", 1), ("dml", 1), ("trt", 1), ("cpu", 2))


@dataclass
class HostInfo:
    url: str
    flavour: str
    """A name of `harness.flavours.FLAVOURS` (`foundry`, `foundry-legacy`, `sim`, `openai`)."""
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


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (a host name, not a URL)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_status(url: str) -> tuple[int | None, Path | None]:
    """(pid, modelCachePath) of a host on this machine, from its `/status` (Foundry Local's current
    service and the simulated host answer it). The pid counts only if that process listens on the
    URL's port: a pid from another machine or namespace must never be sampled."""
    if not is_loopback(urlsplit(url).hostname or ""):
        return None, None
    conn = Connection(root_url(url), timeouts=Timeouts(5.0, 5.0, 5.0, 10.0))
    try:
        status, obj = _get_json(conn, "/status")
    except OSError:
        return None, None
    finally:
        conn.close()
    if status != 200 or not isinstance(obj, dict):
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
    """The first flavour of the registry whose status endpoint answers as that flavour's does."""
    root = Connection(root_url(url), policy="reuse", timeouts=t, api_key=api_key)
    try:
        for f in FLAVOURS.values():
            if f.status_path is None:
                continue
            try:
                status, obj = _get_json(root, f.status_path)
            except OSError:
                return OPENAI, None
            if status == 200 and isinstance(obj, dict) and (f.status_key is None or f.status_key in obj):
                return f.name, obj
        return OPENAI, None
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
