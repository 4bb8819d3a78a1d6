"""Where Foundry Local hosts are: the environment, the `foundry` CLI, and model loading.

The legacy service picks a new port on every start, so a URL from last week's notes is wrong today:
`FOUNDRY_LOCAL_ENDPOINT` or the CLI's status output is the only reliable source.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from urllib.parse import quote, urlsplit

from harness.client import Connection, Timeouts
from harness.hosts import HostInfo, normalize_base_url, root_url

__all__ = ["alias_candidates", "discover_foundry_endpoints", "load_model", "loaded_models"]

_URL = re.compile(r"https?://[\w.\-\[\]:]+(?::\d+)?(?:/[\w./\-]*)?")


def discover_foundry_endpoints() -> list[str]:
    """Base URLs of local Foundry hosts: `FOUNDRY_LOCAL_ENDPOINT`, then `foundry service|server status`."""
    found: list[str] = []
    env = os.environ.get("FOUNDRY_LOCAL_ENDPOINT")
    if env:
        found.append(normalize_base_url(env))
    exe = shutil.which("foundry")
    if exe:
        for args in (["service", "status"], ["server", "status"]):
            try:
                out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=15).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            for url in _URL.findall(out):
                parts = urlsplit(url)
                base = normalize_base_url(f"{parts.scheme}://{parts.netloc}")
                if base not in found:
                    found.append(base)
    return found


def loaded_models(info: HostInfo, *, timeout_s: float = 10.0) -> list[str] | None:
    """Models a Foundry host has loaded (None when the host cannot say)."""
    path = {"foundry": "/models/loaded", "foundry-legacy": "/openai/loadedmodels"}.get(info.flavour)
    if path is None:
        return None
    # Local-catalog models are served under /catalogs/<name>/, their loaded list too.
    path = _catalog_prefix(info.url) + path
    import orjson

    conn = Connection(root_url(info.url), timeouts=Timeouts(timeout_s, timeout_s, timeout_s, timeout_s))
    try:
        status, _, body = conn.get(path)
    except OSError:
        return None
    finally:
        conn.close()
    if status != 200:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        obj = obj.get("models") or obj.get("data") or []
    return (
        [str(m.get("id", m)) if isinstance(m, dict) else str(m) for m in obj]
        if isinstance(obj, list)
        else None
    )


_VARIANT = re.compile(r"-(generic|cuda|trt|trtrtx|qnn|openvino|vitis|webgpu|dml)-(cpu|gpu|npu)$")


def _catalog_prefix(url: str) -> str:
    """`/catalogs/local` for local-catalog models (their endpoints live under it), else ''."""
    prefix = urlsplit(url).path.rsplit("/v1", 1)[0]
    return prefix if prefix.startswith("/catalogs/") else ""


def alias_candidates(asked: str, resolved: str) -> list[str]:
    """Names the current service may know a model by: it loads by alias only (an id with `:` is 404).
    The alias is what the user asked when that has no version, else the id without its variant suffix."""
    out = [] if ":" in asked else [asked]
    name = resolved.split(":", 1)[0]
    for candidate in (_VARIANT.sub("", name), name):
        if candidate not in out:
            out.append(candidate)
    return out


def load_model(info: HostInfo, asked: str, resolved: str, *, timeout_s: float = 600.0) -> tuple[bool, str]:
    """Ask a Foundry host to load a cached model; returns (ok, detail).

    The current service loads by alias (`[/catalogs/<name>]/models/load/{alias}`); the legacy
    service by id (`/openai/load/{id}?ttl=600`).
    """
    if info.flavour == "foundry":
        prefix = _catalog_prefix(info.url)
        paths = [f"{prefix}/models/load/{quote(a, safe='')}" for a in alias_candidates(asked, resolved)]
    elif info.flavour == "foundry-legacy":
        paths = [f"/openai/load/{quote(resolved, safe='')}?ttl=600"]
    else:
        return False, f"a {info.flavour} host has no load endpoint"
    detail = ""
    for path in paths:
        conn = Connection(root_url(info.url), timeouts=Timeouts(10.0, timeout_s, timeout_s, timeout_s))
        try:
            status, _, body = conn.get(path)
        except OSError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        detail = f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
        if status == 200:
            return True, detail
    return False, detail
