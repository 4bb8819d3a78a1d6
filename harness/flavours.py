"""Host flavours: the kinds of OpenAI-compatible host the harness tells apart, in one registry.

A flavour says how to recognise it (a status endpoint at the host's root and a key in its answer),
what it can do beyond chat (list loaded models, load a cached one), and, for flavours the harness
can start itself (embedded), which server module `harness serve NAME` runs.

To add a remote flavour: one `Flavour(...)` entry in `FLAVOURS`. An embedded one: that entry with
`server=` set, and the server module under `harness/servers/` (`add_arguments`, `serve`).
The probe (`harness.hosts.probe_host`) asks each flavour's status path in the order of `FLAVOURS`;
a host that answers none is `openai`.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

__all__ = [
    "EMBEDDED_FLAVOURS",
    "FLAVOURS",
    "OPENAI",
    "Flavour",
    "alias_candidates",
    "catalog_prefix",
    "flavour",
    "model_id_for",
    "shipped_model_dir",
]

OPENAI = "openai"
"""Any other OpenAI-compatible host: chat and a model list, nothing more is assumed."""


@dataclass(frozen=True)
class Flavour:
    name: str
    description: str
    status_path: str | None = None
    """GET at the host's root URL; a JSON object (with `status_key`, if set) means this flavour."""
    status_key: str | None = None
    loaded_path: str | None = None
    """GET (under the host's catalog prefix): the models loaded now. None: the host cannot say."""
    load_paths: Callable[[str, str, str], list[str]] | None = None
    """(base URL, name asked, resolved id) -> GET paths that load a cached model, tried in order."""
    server: str | None = None
    """Module of `harness serve NAME` for a flavour the harness starts itself (embedded)."""

    @property
    def can_load(self) -> bool:
        return self.load_paths is not None


_VARIANT = re.compile(r"-(generic|cuda|trt|trtrtx|qnn|openvino|vitis|webgpu|dml)-(cpu|gpu|npu)$")


def catalog_prefix(url: str) -> str:
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


def _foundry_load(url: str, asked: str, resolved: str) -> list[str]:
    # The current service loads by alias, under the catalog's prefix.
    prefix = catalog_prefix(url)
    return [f"{prefix}/models/load/{quote(a, safe='')}" for a in alias_candidates(asked, resolved)]


def _foundry_legacy_load(url: str, asked: str, resolved: str) -> list[str]:
    return [f"/openai/load/{quote(resolved, safe='')}?ttl=600"]


#: Every flavour, in the order the probe asks them.
FLAVOURS: dict[str, Flavour] = {
    f.name: f
    for f in (
        Flavour(
            "sim",
            "simulated OpenAI-compatible host with known timing and faults on demand",
            status_path="/sim/stats",
            server="harness.servers.sim",
        ),
        Flavour(
            "foundry",
            "a real Foundry Local host in this process (foundry-local-sdk)",
            status_path="/status",
            status_key="endpoints",
            loaded_path="/models/loaded",
            load_paths=_foundry_load,
            server="harness.servers.foundry",
        ),
        Flavour(
            "foundry-legacy",
            "Foundry Local's 0.8 service",
            status_path="/openai/status",
            status_key="Endpoints",
            loaded_path="/openai/loadedmodels",
            load_paths=_foundry_legacy_load,
        ),
        Flavour(OPENAI, "another OpenAI-compatible host"),
    )
}

#: Flavours `harness run` and `harness serve` can start.
EMBEDDED_FLAVOURS: tuple[str, ...] = tuple(name for name, f in FLAVOURS.items() if f.server)


def flavour(name: str) -> Flavour:
    """The registry entry of a flavour name (an unknown name is a plain OpenAI host)."""
    return FLAVOURS.get(name) or FLAVOURS[OPENAI]


# --- the embedded Foundry host's shipped model --------------------------------------------------

SHIPPED_MODEL = "tiny-chat"


def shipped_model_dir() -> Path:
    """The tiny chat model shipped as package data (`harness/models/tiny-chat`)."""
    res = importlib.resources.files("harness").joinpath("models", SHIPPED_MODEL)
    path = Path(str(res))
    if not path.is_dir():  # e.g. a zipped install; the source tree layout is the fallback
        path = Path(__file__).resolve().parent / "models" / SHIPPED_MODEL
    return path


def model_id_for(model_dir: Path) -> str:
    """Foundry variant id derived from a folder name: `tiny-chat` -> `tiny-chat-generic-cpu:1`."""
    name = re.sub(r"[^a-z0-9.-]+", "-", model_dir.resolve().name.lower()).strip("-.") or "model"
    if not name.endswith("-cpu"):
        name += "-generic-cpu"
    return f"{name}:1"
