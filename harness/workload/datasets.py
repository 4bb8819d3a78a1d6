"""Prompt datasets from local files: JSONL, CSV, ShareGPT conversations, the workshop's prompts.json.

Every reader returns `DatasetEntry`s: an id, the user turns in order (one for a plain prompt), an
optional system message, and where it came from (file and line, for messages). Formats:

- **JSONL**: one object per line with the prompt under `prompt` or `text` (or the column named by
  `field`); optional `id` and `system`. A line holding `conversations` or `messages` is a
  conversation (as below).
- **CSV**: a header row naming a `prompt` or `text` column (or `field`); optional `id`, `system`.
- **ShareGPT**: a JSON list (or JSONL) of `{"id", "conversations": [{"from": "human"|"gpt"|"system",
  "value": ...}]}`; the OpenAI spelling `{"messages": [{"role", "content"}]}` is read the same way.
  Only the user turns are kept: a conversation run feeds the host's own replies back instead of the
  recorded ones.
- **prompts.json** (the workshop's file, `scenarios/bench-prompts*.json`): read by the scenario's own
  `load_prompts_file`, so both paths accept exactly the same files.

Nothing is downloaded: users bring the file. A file that does not read is an `InputError` naming
the file, the line (or item) and what was expected.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import orjson

from harness.errors import InputError
from harness.workload.tokens import Counter

__all__ = ["DATASET_FORMATS", "DatasetEntry", "fit_lengths", "load_dataset"]

DatasetFormat = Literal["auto", "jsonl", "csv", "sharegpt", "prompts"]
DATASET_FORMATS: tuple[str, ...] = ("auto", "jsonl", "csv", "sharegpt", "prompts")
_TEXT_FIELDS = ("prompt", "text")
_USER_ROLES = {"human", "user"}
_REPLY_ROLES = {"gpt", "assistant", "bot", "model", "chatgpt", "bard"}


@dataclass(frozen=True, slots=True)
class DatasetEntry:
    """One prompt (one user turn) or one conversation (several user turns) of a dataset."""

    id: str
    turns: tuple[str, ...]
    system: str | None = None
    where: str = ""
    """`file:line` (or `file: item N`) it came from."""
    tokens: tuple[int, ...] | None = None
    """Tokens of each user turn's text, where a counter measured them (`fit_lengths`)."""
    messages: tuple[dict[str, str], ...] | None = None
    """A prompts.json prompt's own message list, sent as it is (single requests)."""
    max_tokens: int | None = None
    """A prompts.json prompt's own `max_tokens`, which wins over the output length."""


def load_dataset(path: Path | str, fmt: str = "auto", *, field: str | None = None) -> list[DatasetEntry]:
    """Read a dataset file; `fmt` auto picks by extension and content."""
    p = Path(path)
    if fmt not in DATASET_FORMATS:
        raise InputError(f"dataset format must be one of {', '.join(DATASET_FORMATS)}, not {fmt!r}")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: dataset file not found") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise InputError(f"{p}: cannot read dataset file ({exc.__class__.__name__})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{p}:{line}: not UTF-8 text") from None
    if fmt == "auto":
        fmt = _guess_format(p, text)
    if fmt == "csv":
        entries = _read_csv(p, text, field)
    elif fmt == "prompts":
        entries = _read_prompts(p)
    elif fmt == "jsonl" or (fmt == "sharegpt" and not text.lstrip().startswith("[")):
        entries = _read_jsonl(p, text, field)
    else:
        entries = _read_json_list(p, text, field)
    if not entries:
        raise InputError(f"{p}: no prompts in the dataset (expected at least one)")
    return entries


def _guess_format(p: Path, text: str) -> str:
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    head = text.lstrip()
    if suffix == ".json" or head.startswith("["):
        # A JSON document: ShareGPT (a list of conversations) or a workshop prompts.json.
        try:
            raw = orjson.loads(text)
        except orjson.JSONDecodeError:
            return "sharegpt" if head.startswith("[") else "prompts"
        first = raw[0] if isinstance(raw, list) and raw else None
        if isinstance(first, dict) and "conversations" in first:
            return "sharegpt"
        if (
            isinstance(first, dict)
            and "messages" in first
            and not {"text", "prompt", "expected_aspects"} & first.keys()
        ):
            return "sharegpt"
        return "prompts"
    return "jsonl"


def _read_prompts(p: Path) -> list[DatasetEntry]:
    from harness.scenario import load_prompts_file

    out = []
    for i, prompt in enumerate(load_prompts_file(p)):
        msgs = prompt.chat_messages()
        system = next((m["content"] for m in msgs if m["role"] == "system"), None)
        users = tuple(m["content"] for m in msgs if m["role"] == "user")
        out.append(
            DatasetEntry(
                prompt.id,
                users or ("",),
                system,
                f"{p}: item {i + 1}",
                messages=tuple(msgs),
                max_tokens=prompt.max_tokens,
            )
        )
    return out


def _jsonl_objects(p: Path, text: str) -> Iterator[tuple[int, Any]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(
                f"{p}:{n}: not valid JSON ({str(exc).split(':')[0]}); expected one JSON object per line"
            ) from None


def _read_jsonl(p: Path, text: str, field: str | None) -> list[DatasetEntry]:
    return [_entry(obj, f"{p}:{n}", f"{p.stem}:{n}", field) for n, obj in _jsonl_objects(p, text)]


def _read_json_list(p: Path, text: str, field: str | None) -> list[DatasetEntry]:
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # orjson reports a character position; turn it into a line for the message.
        pos = getattr(exc, "pos", None)
        line = text.count("\n", 0, pos) + 1 if isinstance(pos, int) else "?"
        raise InputError(f"{p}:{line}: not valid JSON; expected a list of ShareGPT conversations") from None
    if not isinstance(raw, list):
        raise InputError(f"{p}:1: expected a JSON list of conversations, got {type(raw).__name__}")
    return [_entry(obj, f"{p}: item {i + 1}", f"{p.stem}:{i + 1}", field) for i, obj in enumerate(raw)]


def _entry(obj: Any, where: str, default_id: str, field: str | None) -> DatasetEntry:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    eid = obj.get("id", default_id)
    if not isinstance(eid, str | int) or isinstance(eid, bool):
        raise InputError(f"{where}: `id` must be a string or number")
    eid = str(eid)
    turns_raw = obj.get("conversations", obj.get("messages")) if field is None else None
    if turns_raw is not None:
        return _conversation(turns_raw, where, eid)
    names = (field,) if field else _TEXT_FIELDS
    for name in names:
        value = obj.get(name)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: `{name}` must be a non-empty string")
            system = obj.get("system")
            if system is not None and not isinstance(system, str):
                raise InputError(f"{where}: `system` must be a string")
            return DatasetEntry(eid, (value,), system, where)
    wanted = f"`{field}`" if field else "`prompt` or `text` (or `conversations` / `messages`)"
    raise InputError(f"{where}: expected a field {wanted}")


def _conversation(turns: Any, where: str, eid: str) -> DatasetEntry:
    if not isinstance(turns, list) or not turns:
        raise InputError(f"{where}: `conversations` must be a non-empty list of turns")
    users: list[str] = []
    system: str | None = None
    for k, t in enumerate(turns):
        if not isinstance(t, dict):
            raise InputError(f"{where}: turn {k + 1}: expected an object with from/value or role/content")
        role = t.get("from", t.get("role"))
        value = t.get("value", t.get("content"))
        if not isinstance(role, str) or not isinstance(value, str):
            raise InputError(
                f"{where}: turn {k + 1}: expected string `from` and `value` (or `role` and `content`)"
            )
        role = role.lower()
        if role == "system":
            system = value
        elif role in _USER_ROLES:
            users.append(value)
        elif role not in _REPLY_ROLES and role != "tool":
            raise InputError(
                f"{where}: turn {k + 1}: unknown speaker {role!r} (expected human/user, gpt/assistant or system)"
            )
    if not users or not any(u.strip() for u in users):
        raise InputError(f"{where}: the conversation has no user turn")
    return DatasetEntry(eid, tuple(users), system, where)


def _read_csv(p: Path, text: str, field: str | None) -> list[DatasetEntry]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(
            f"{p}:1: empty CSV file; expected a header row with a `prompt` or `text` column"
        ) from None
    except csv.Error as exc:
        raise InputError(f"{p}:1: not valid CSV ({exc})") from None
    cols = [h.strip().lower() for h in header]
    names = (field.lower(),) if field else _TEXT_FIELDS
    col = next((cols.index(n) for n in names if n in cols), None)
    if col is None:
        wanted = f"`{field}`" if field else "`prompt` or `text`"
        raise InputError(
            f"{p}:1: the header row has no {wanted} column (columns: {', '.join(cols) or 'none'})"
        )
    id_col = cols.index("id") if "id" in cols else None
    sys_col = cols.index("system") if "system" in cols else None
    out = []
    try:
        for row in reader:
            line = reader.line_num
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(cols):
                raise InputError(f"{p}:{line}: expected {len(cols)} columns as in the header, got {len(row)}")
            value = row[col]
            if not value.strip():
                raise InputError(f"{p}:{line}: empty `{cols[col]}`; expected the prompt text")
            eid = row[id_col] if id_col is not None and row[id_col].strip() else f"{p.stem}:{line}"
            system = row[sys_col] if sys_col is not None and row[sys_col].strip() else None
            out.append(DatasetEntry(eid, (value,), system, f"{p}:{line}"))
    except csv.Error as exc:
        raise InputError(f"{p}:{reader.line_num}: not valid CSV ({exc})") from None
    return out


def fit_lengths(
    entries: Sequence[DatasetEntry],
    counter: Counter,
    *,
    lo: int = 1,
    hi: int | None = None,
    mode: Literal["drop", "truncate"] = "drop",
    source: str = "dataset",
) -> list[DatasetEntry]:
    """Keep entries whose every user turn has between `lo` and `hi` tokens (by `counter`);
    `truncate` cuts longer turns to `hi` tokens instead of dropping them. Each kept entry carries
    its turns' token counts. Nothing left is bad input."""
    out = []
    for e in entries:
        turns = list(e.turns)
        counts = [counter.count(t) for t in turns]
        if mode == "truncate" and hi is not None:
            for k, c in enumerate(counts):
                if c > hi:
                    turns[k] = counter.truncate(turns[k], hi)
                    counts[k] = counter.count(turns[k])
        if all(lo <= c and (hi is None or c <= hi) for c in counts):
            out.append(replace(e, turns=tuple(turns), tokens=tuple(counts)))
    if not out:
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise InputError(f"{source}: no prompt has {rng} tokens ({len(entries)} read); widen the range")
    return out
