"""The web UI's start-form texts for the scenario's choices: parsing and formatting, nothing else.

`harness.locust.webui` shows the choices in effect as Locust custom arguments (`--llm-hosts`, `--llm-models`,
`--llm-max-tokens`, `--llm-prompts-file`) and reads them back here; kept apart from Locust (no gevent
import) so that it is tested in plain Python.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from harness.errors import HarnessError, InputError
from harness.hosts import normalize_base_url
from harness.plan import host_label

__all__ = ["Choices", "format_max_tokens", "format_models", "models_by_host", "parse_max_tokens"]


@dataclass(frozen=True)
class Choices:
    """What the start form can change, as asked (aliases unresolved)."""

    hosts: tuple[tuple[str, tuple[str, ...]], ...]
    """(normalized base URL, model names asked there), in order."""
    max_tokens: int | tuple[int, int]
    prompts_file: str
    """Absolute path of a JSON prompt set; "" for the scenario's own prompts."""


def parse_max_tokens(text: str) -> int | tuple[int, int]:
    """`128` -> 128; `64-192`, `64,192` or `[64, 192]` -> (64, 192)."""
    cleaned = text.strip().strip("[]()").replace(",", "-").replace(" ", "")
    parts = [p for p in cleaned.split("-") if p]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1 and nums[0] > 0:
        return nums[0]
    if len(nums) == 2 and 0 < nums[0] <= nums[1]:
        return nums[0], nums[1]
    raise InputError(f"llm_max_tokens: {text!r} is not N or LO-HI (positive whole numbers, LO ≤ HI)")


def format_max_tokens(value: int | tuple[int, int] | list[int]) -> str:
    return str(value) if isinstance(value, int) else f"{value[0]}-{value[1]}"


def _names(text: str) -> tuple[str, ...]:
    return tuple(n for n in (p.strip() for p in text.split(",")) if n)


def models_by_host(
    text: str,
    hosts: list[tuple[str, str]],
    fallback: Mapping[str, tuple[str, ...]],
) -> dict[str, tuple[str, ...]]:
    """Model names asked per host URL from the form's text.

    `hosts`: (url, label) in order. `text`: `a, b` for every host, or `LABEL=a, b; URL=c` per host
    (entries without a host apply to the hosts not named); a host the text leaves out keeps
    `fallback[url]` (its current list, or () for "the host's first model")."""
    everyone: tuple[str, ...] | None = None
    named: dict[str, tuple[str, ...]] = {}
    known = {u: u for u, _ in hosts} | {label: u for u, label in hosts}
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        who, eq, names = entry.partition("=")
        if not eq:
            everyone = _names(entry)
            continue
        who = who.strip()
        url = known.get(who)
        if url is None:
            with contextlib.suppress(HarnessError):
                url = known.get(normalize_base_url(who))
        if url is None:
            shown = ", ".join(label for _, label in hosts)
            raise InputError(f"llm_models: no host named {who!r} (hosts: {shown})")
        named[url] = _names(names)
    out = {}
    for url, _ in hosts:
        if url in named:
            out[url] = named[url]
        elif everyone is not None:
            out[url] = everyone
        else:
            out[url] = tuple(fallback.get(url, ()))
    return out


def format_models(hosts: tuple[tuple[str, tuple[str, ...]], ...], labels: Mapping[str, str]) -> str:
    lists = {names for _, names in hosts}
    if len(lists) == 1:
        return ", ".join(next(iter(lists)))
    return "; ".join(f"{labels.get(url, host_label(url))}={', '.join(names)}" for url, names in hosts)
