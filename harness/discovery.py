"""Where Foundry Local hosts are: the environment, the `foundry` CLI, and model loading.

The legacy service picks a new port on every start, so a URL from last week's notes is wrong today:
`FOUNDRY_LOCAL_ENDPOINT` or the CLI's status output is the only reliable source.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from harness.client import Connection, Timeouts
from harness.flavours import alias_candidates, catalog_prefix, flavour
from harness.hosts import HostInfo, normalize_base_url, root_url

__all__ = [
    "alias_candidates",
    "default_models",
    "dir_size_mb",
    "discover_foundry_endpoints",
    "find_model_folder",
    "load_model",
    "loaded_models",
]

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
    path = flavour(info.flavour).loaded_path
    if path is None:
        return None
    # Local-catalog models are served under /catalogs/<name>/, their loaded list too.
    path = catalog_prefix(info.url) + path
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


def load_model(info: HostInfo, asked: str, resolved: str, *, timeout_s: float = 600.0) -> tuple[bool, str]:
    """Ask a Foundry host to load a cached model; returns (ok, detail).

    The paths come from the host's flavour (`harness.flavours`): the current service loads by alias
    (`[/catalogs/<name>]/models/load/{alias}`), the legacy service by id (`/openai/load/{id}?ttl=600`).
    """
    load_paths = flavour(info.flavour).load_paths
    if load_paths is None:
        return False, f"a {info.flavour} host has no load endpoint"
    paths = load_paths(info.url, asked, resolved)
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


def dir_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def find_model_folder(cache: Path, model_id: str) -> Path | None:
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


def default_models(info: HostInfo) -> tuple[list[str], str | None]:
    """(models, why none) to use on a host when no model was named: what it has loaded (Foundry), else all it
    lists; a Foundry host with nothing loaded lists its whole catalog, so nothing is guessed there."""
    loaded = loaded_models(info)
    if loaded:
        return [m for m in loaded if m in info.models] or loaded, None
    if flavour(info.flavour).can_load:
        return [], f"host {info.url} has no model loaded and none was named: name models with --model"
    if not info.models:
        return [], f"host {info.url} lists no models"
    return list(info.models), None
