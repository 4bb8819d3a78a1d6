"""Answer quality for `harness bench`: hand scores from a CSV, and verdicts of a judge model.

Owns the run folder's two quality files and their reading:

* `scoring.csv`: one row per distinct answer to a prompt that lists expected aspects (identical
  answers of several rounds share a row; `round` lists them), with an empty `score` column (1-5)
  for people to fill in with a spreadsheet. Reading it back is tolerant: a spreadsheet's BOM or `;`
  delimiter, blank scores (not scored) and bad cells (counted, named, never fatal).
* `judge.jsonl`: one line per answer a judge model scored, with the exact messages sent and the
  raw verdict, for audit. The judge is any OpenAI-compatible host, reached with the `openai` SDK
  (the measuring client is not needed here: fidelity over speed). A verdict that does not parse is
  kept and counted, never fatal. A later judge pass appends; the last verdict per answer counts.

Scores are summarised per (host, model) as a mean with the number of scored answers.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from harness.errors import HarnessError
from harness.hosts import probe_host, resolve_model
from harness.rundir import RunDir

__all__ = [
    "JUDGE_API_KEY_ENV",
    "SCORING_COLUMNS",
    "JudgeOutcome",
    "ScoreSummary",
    "ScoringRow",
    "ask_judge",
    "judge_messages",
    "judges_used",
    "parse_verdict",
    "read_judge",
    "read_scoring_csv",
    "run_judge",
    "scoring_rows",
    "scoring_rows_from_csv",
    "write_answers",
    "write_scoring_csv",
]

SCORING_COLUMNS = (
    "run_id",
    "model",
    "host",
    "prompt_id",
    "round",
    "answer",
    "expected_aspects",
    "score",
    "comment",
)
#: Where the judge's API key comes from, if its host needs one (never written anywhere).
JUDGE_API_KEY_ENV = "HARNESS_JUDGE_API_KEY"
#: Expected aspects are joined with this in the CSV cell (and split on it when read back).
ASPECT_SEPARATOR = " | "
MIN_SCORE, MAX_SCORE = 1.0, 5.0

Key = tuple[str, str]
"""(host URL, model id)."""


@dataclass
class ScoringRow:
    """One distinct answer to score: what `scoring.csv` holds per line."""

    run_id: str
    model: str
    host: str
    prompt_id: str
    rounds: list[int]
    answer: str
    expected: list[str]
    prompt_text: str = ""
    """The question as sent (the last user message), for the judge; not a CSV column."""
    score: float | None = None
    comment: str = ""

    @property
    def key(self) -> Key:
        return (self.host, self.model)

    @property
    def round_label(self) -> str:
        return " ".join(str(r) for r in self.rounds)


@dataclass
class ScoreSummary:
    """Scores of one (host, model): mean over the scored answers, their number, and spread."""

    scores: list[float] = field(default_factory=list)
    unparsed: int = 0
    """Judge verdicts that gave no score (kept in judge.jsonl, counted here)."""

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float | None:
        return sum(self.scores) / len(self.scores) if self.scores else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation; None below two scores."""
        if len(self.scores) < 2:
            return None
        m = sum(self.scores) / len(self.scores)
        return math.sqrt(sum((s - m) ** 2 for s in self.scores) / (len(self.scores) - 1))

    def label(self) -> str:
        """`4.25 (n=4)`, `4.00 (n=3, 1 unparsed)`, or `—` when nothing was scored."""
        if not self.scores and not self.unparsed:
            return "—"
        head = f"{self.mean:.2f}" if self.mean is not None else "—"
        tail = f", {self.unparsed} unparsed" if self.unparsed else ""
        return f"{head} (n={self.n}{tail})"

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "n": self.n, "sd": self.sd, "unparsed": self.unparsed}


# ---------------------------------------------------------------------------------------------
# scoring.csv
# ---------------------------------------------------------------------------------------------


def scoring_rows(
    records: Iterable[dict[str, Any]],
    prompts: dict[str, dict[str, Any]],
    *,
    stages: dict[Key, str],
) -> list[ScoringRow]:
    """Distinct answers to score, from measured records that kept their text.

    `prompts`: prompt id -> {"expected": [...], "text": ...}; only prompts with expected aspects
    count. `stages`: per (host, model) the one stage whose answers are scored (the first measured),
    so a model run in several modes or concurrencies is scored once per answer, not once per stage.
    Rows keep the records' order; identical answers of several rounds share one row.
    """
    out: list[ScoringRow] = []
    index: dict[tuple[str, str, str, str], ScoringRow] = {}
    for r in records:
        if r.get("warmup") or not r.get("ok") or not isinstance(r.get("text"), str):
            continue
        prompt = prompts.get(str(r.get("prompt_id")))
        if not prompt or not prompt.get("expected"):
            continue
        key = (str(r["host"]), str(r["model"]))
        if stages.get(key) != r.get("stage"):
            continue
        rnd = int((r.get("extra") or {}).get("round") or 0)
        text = str(r["text"])
        ident = (*key, str(r["prompt_id"]), text)
        row = index.get(ident)
        if row is not None:
            if rnd not in row.rounds:
                row.rounds.append(rnd)
            continue
        row = ScoringRow(
            run_id=str(r.get("run_id", "")),
            model=key[1],
            host=key[0],
            prompt_id=str(r["prompt_id"]),
            rounds=[rnd],
            answer=text,
            expected=list(prompt["expected"]),
            prompt_text=str(prompt.get("text") or ""),
        )
        index[ident] = row
        out.append(row)
    return out


def write_scoring_csv(path: Path, rows: Sequence[ScoringRow]) -> None:
    """Write `scoring.csv` (UTF-8, comma-separated, every cell quoted where needed)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(SCORING_COLUMNS)
        for row in rows:
            w.writerow(
                [
                    row.run_id,
                    row.model,
                    row.host,
                    row.prompt_id,
                    row.round_label,
                    row.answer,
                    ASPECT_SEPARATOR.join(row.expected),
                    "" if row.score is None else f"{row.score:g}",
                    row.comment,
                ]
            )
    tmp.replace(path)


def read_scoring_csv(path: Path) -> tuple[dict[Key, ScoreSummary], list[str]]:
    """Hand scores per (host, model), and one problem line per cell that could not be used.

    A blank score is "not scored yet"; a score outside 1-5 or not a number is named and skipped.
    Spreadsheets may save with a BOM, `;` as delimiter or `,` as decimal mark: all are read.
    """
    if not path.is_file():
        return {}, []
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    fields = {(f or "").strip().lower() for f in reader.fieldnames or []}
    missing = {"model", "score"} - fields
    if missing:
        return {}, [f"{path}: no {' or '.join(sorted(missing))} column; hand scores not read"]
    out: dict[Key, ScoreSummary] = {}
    problems: list[str] = []
    for line_no, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if isinstance(v, str)}
        cell = row.get("score", "")
        if not cell:
            continue
        try:
            score = float(cell.replace(",", "."))
        except ValueError:
            problems.append(f"{path}:{line_no}: score {cell!r} is not a number from 1 to 5; skipped")
            continue
        if not MIN_SCORE <= score <= MAX_SCORE:
            problems.append(f"{path}:{line_no}: score {cell!r} is outside 1-5; skipped")
            continue
        out.setdefault((row.get("host", ""), row.get("model", "")), ScoreSummary()).scores.append(score)
    return out, problems


# ---------------------------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------------------------

JUDGE_SYSTEM = (
    "You grade answers of a language model. You are strict and consistent. "
    'Reply with one JSON object and nothing else: {"score": <integer 1 to 5>, "reason": "<one sentence>"}.'
)
JUDGE_RUBRIC = (
    "Score 5: covers every expected aspect, correct and clear. 4: covers most aspects, no errors. "
    "3: covers some aspects or has a minor error. 2: covers few aspects or has a clear error. "
    "1: covers none, is wrong, or does not answer."
)


def judge_messages(row: ScoringRow) -> list[dict[str, str]]:
    """The messages a judge gets for one answer (kept verbatim in judge.jsonl)."""
    aspects = "\n".join(f"- {a}" for a in row.expected)
    user = (
        f"Question:\n{row.prompt_text or '(prompt ' + row.prompt_id + ')'}\n\n"
        f"Aspects a good answer covers:\n{aspects}\n\n"
        f"Answer to grade:\n<<<\n{row.answer}\n>>>\n\n{JUDGE_RUBRIC}"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_SCORE_TEXT = re.compile(r"\bscore\b\W{0,4}([1-5](?:\.\d+)?)", re.I)


def parse_verdict(text: str | None) -> tuple[float | None, str | None]:
    """(score, reason) from a judge's reply; (None, None) when it holds no score from 1 to 5.

    Accepts the JSON object asked for, that object inside other text or a code fence, and as a last
    resort `score: N` in prose. Anything else is unparsed: the caller keeps the raw text.
    """
    if not text:
        return None, None
    candidates: list[Any] = []
    with contextlib.suppress(orjson.JSONDecodeError):
        candidates.append(orjson.loads(text.strip()))
    for m in _JSON_OBJECT.finditer(text):
        try:
            candidates.append(orjson.loads(m.group(0)))
        except orjson.JSONDecodeError:
            continue
    for obj in candidates:
        if not isinstance(obj, dict):
            continue
        score = _score_value(obj.get("score"))
        if score is not None:
            reason = obj.get("reason")
            return score, str(reason) if reason is not None else None
    in_prose = _SCORE_TEXT.search(text)
    if in_prose:
        return float(in_prose.group(1)), None
    return None, None


def _score_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and MIN_SCORE <= float(value) <= MAX_SCORE:
        return float(value)
    return None


@dataclass
class JudgeOutcome:
    """What a judge pass did: answers sent, verdicts that gave a score, and problems to report."""

    judged: int = 0
    parsed: int = 0
    errors: int = 0
    problems: list[str] = field(default_factory=list)


def run_judge(
    rows: Sequence[ScoringRow],
    out_path: Path,
    *,
    base_url: str,
    model: str,
    max_tokens: int = 256,
    timeout_s: float = 300.0,
) -> JudgeOutcome:
    """Ask the judge model about every row, one at a time, appending a line per answer to `out_path`.

    `model` is sent as given (resolve aliases before). Errors of one call (HTTP, timeout, an empty
    reply) are recorded on that answer's line and counted; the pass goes on. The API key, if the
    judge needs one, comes from the environment variable `HARNESS_JUDGE_API_KEY` and is never written.
    """
    from openai import OpenAI, OpenAIError

    outcome = JudgeOutcome()
    client = OpenAI(
        base_url=base_url,
        api_key=os.environ.get(JUDGE_API_KEY_ENV) or "not-needed",
        timeout=timeout_s,
        max_retries=2,
    )
    with open(out_path, "ab") as fh:
        for row in rows:
            messages = judge_messages(row)
            raw: str | None = None
            error: str | None = None
            started = time.time()
            try:
                resp = client.chat.completions.create(
                    model=model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=0,
                    max_tokens=max_tokens,
                )
                raw = resp.choices[0].message.content if resp.choices else None
                if raw is None:
                    error = "the judge's reply has no content"
            except OpenAIError as exc:
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
            score, reason = parse_verdict(raw)
            outcome.judged += 1
            outcome.parsed += score is not None
            outcome.errors += error is not None
            line = {
                "run_id": row.run_id,
                "host": row.host,
                "model": row.model,
                "prompt_id": row.prompt_id,
                "round": row.round_label,
                "judge_url": base_url,
                "judge_model": model,
                "judged_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                "messages": messages,
                "raw": raw,
                "score": score,
                "reason": reason,
                "parsed": score is not None,
                "error": error,
            }
            fh.write(orjson.dumps(line) + b"\n")
            fh.flush()
    unparsed = outcome.judged - outcome.parsed - outcome.errors
    if outcome.errors:
        outcome.problems.append(f"judge: {outcome.errors} of {outcome.judged} calls failed (see judge.jsonl)")
    if unparsed:
        outcome.problems.append(
            f"judge: {unparsed} of {outcome.judged} verdicts gave no score 1-5 (kept in judge.jsonl)"
        )
    return outcome


def read_judge(path: Path) -> dict[Key, ScoreSummary]:
    """Judge scores per (host, model); the last verdict per answer counts, unparsed ones are counted."""
    if not path.is_file():
        return {}
    latest: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut by a crash: the verdict is lost, the others count
        if isinstance(obj, dict):
            ident = (
                str(obj.get("host")),
                str(obj.get("model")),
                str(obj.get("prompt_id")),
                str(obj.get("round")),
            )
            latest[ident] = obj
    out: dict[Key, ScoreSummary] = {}
    for (host, model, _, _), obj in latest.items():
        summary = out.setdefault((host, model), ScoreSummary())
        score = _score_value(obj.get("score"))
        if score is None:
            summary.unparsed += 1
        else:
            summary.scores.append(score)
    return out


def judges_used(path: Path) -> list[tuple[str, str]]:
    """(judge URL, judge model) pairs that gave the verdicts in `path`, in order of first use."""
    if not path.is_file():
        return []
    seen: dict[tuple[str, str], None] = {}
    for line in path.read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            seen.setdefault((str(obj.get("judge_url")), str(obj.get("judge_model"))), None)
    return list(seen)


def scoring_rows_from_csv(path: Path, prompts: dict[str, dict[str, Any]]) -> list[ScoringRow]:
    """The answers of a run's scoring.csv, with their prompts and aspects (`prompts`: id -> the
    prompt as a bench manifest holds it: messages, expected)."""
    if not path.is_file():
        return []
    out = []
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    first = text.split("\n", 1)[0]
    reader = csv.DictReader(io.StringIO(text), delimiter=";" if first.count(";") > first.count(",") else ",")
    for raw in reader:
        pid = raw.get("prompt_id") or ""
        p = prompts.get(pid, {})
        msgs = p.get("messages") or [{"content": ""}]
        out.append(
            ScoringRow(
                run_id=raw.get("run_id") or "",
                model=raw.get("model") or "",
                host=raw.get("host") or "",
                prompt_id=pid,
                rounds=[int(x) for x in (raw.get("round") or "0").split() if x.isdigit()],
                answer=raw.get("answer") or "",
                expected=list(p.get("expected") or []),
                prompt_text=str(msgs[-1].get("content", "")),
            )
        )
    return out


def ask_judge(
    run_dir: Path, rows: list[ScoringRow], url: str, model: str, say: Callable[[str], None]
) -> list[str]:
    """Score answers with the judge model `model` at `url` (resolved there); a judge that cannot be reached costs a note, not the run."""
    try:
        info = probe_host(url)
    except HarnessError as exc:
        return [f"judge not asked: {exc}"]
    judge_id = resolve_model(model, info.models) or model
    say(f"asking the judge {judge_id} at {info.url} about {len(rows)} answer(s)")
    outcome = run_judge(rows, RunDir(run_dir).judge, base_url=info.url, model=judge_id)
    return outcome.problems


def write_answers(
    run_dir: Path, records: list[dict[str, Any]], prompts: Sequence[Any], stages: dict[tuple[str, str], str]
) -> list[ScoringRow]:
    """scoring.csv: the distinct answers to prompts with expected aspects, score column empty.
    `prompts`: `harness.scenario.Prompt`s; `stages`: (host, model) -> the stage whose answers count."""
    by_id = {
        p.id: {
            "expected": p.expected,
            "text": (p.chat_messages()[-1]["content"] if p.chat_messages() else ""),
        }
        for p in prompts
    }
    rows = scoring_rows(records, by_id, stages=stages)
    if rows:
        write_scoring_csv(RunDir(run_dir).scoring, rows)
    return rows
