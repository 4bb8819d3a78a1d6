"""From a global request index to the request to send: `Workload.build(indices)`.

Every request (or conversation) is a pure function of (seed, index): its lengths, its text, its
dataset entry, whether it carries the shared prefix. Workers therefore never coordinate: worker k
of n builds indices k, k+n, ... (`harness.workload.pool`) and together they build exactly what one
worker would. Building happens in blocks, vectorised where it can be (all lengths of a block in one
numpy call), and never inside a send.

A request asks for `requested_input_tokens` tokens of message text (the new user message; with a
shared prefix, its tokens are apart in `prefix_tokens`) and `requested_output_tokens` (= max_tokens).
`expected_prompt_tokens` is what a host applying the model's own chat template reports as
`usage.prompt_tokens`, where the model's tokenizer is known; `describe()` states the template
offset (expected - requested) once for the manifest.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from harness.errors import InputError
from harness.workload._random import stream_key, uniforms
from harness.workload.config import WorkloadSpec
from harness.workload.datasets import DatasetEntry, fit_lengths, load_dataset
from harness.workload.lengths import LengthDist, parse_length
from harness.workload.synthetic import PromptSynth
from harness.workload.tokens import PLAIN_WORDS, Calibration, Counter, ModelTokenizer

__all__ = ["RequestSpec", "SessionSpec", "TurnSpec", "Workload", "build_workload"]

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request, ready to send: messages, max_tokens, extra body fields, and what it asked for."""

    index: int
    prompt_id: str
    messages: list[Message]
    max_tokens: int
    requested_input_tokens: int | None
    requested_output_tokens: int
    expected_prompt_tokens: int | None = None
    prefix_id: int | None = None
    prefix_tokens: int = 0
    extra_body: dict[str, Any] | None = None
    session_id: str | None = None
    turn: int | None = None

    def record_fields(self) -> dict[str, Any]:
        """The per-request record keys this request adds (CONTRACT.md, 2026-11-29)."""
        return {
            "prompt_id": self.prompt_id,
            "session_id": self.session_id,
            "turn": self.turn,
            "requested_input_tokens": self.requested_input_tokens,
            "requested_output_tokens": self.requested_output_tokens,
            "shared_prefix_tokens": self.prefix_tokens,
        }

    def key(self) -> tuple[Any, ...]:
        """What identifies the request in multiset comparisons (same seed, any worker count): ids,
        lengths, prefix, and a digest of the text itself."""
        digest = zlib.crc32("\x00".join(m["content"] for m in self.messages).encode())
        return (
            self.prompt_id,
            self.session_id,
            self.turn,
            self.requested_input_tokens,
            self.max_tokens,
            self.prefix_id,
            digest,
        )


@dataclass(frozen=True, slots=True)
class TurnSpec:
    """One user turn of a planned conversation."""

    prompt_id: str
    text: str
    requested_input_tokens: int | None
    max_tokens: int


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """A planned conversation: its turns' user messages and lengths; the replies come from the host."""

    index: int
    session_id: str
    turns: tuple[TurnSpec, ...]
    system: str | None = None
    prefix_id: int | None = None
    prefix_tokens: int = 0
    extra_body: dict[str, Any] | None = None

    def key(self) -> tuple[Any, ...]:
        turns = tuple(
            (t.prompt_id, t.requested_input_tokens, t.max_tokens, zlib.crc32(t.text.encode()))
            for t in self.turns
        )
        return (self.session_id, self.prefix_id, self.system, turns)


@dataclass(slots=True)
class _Prefixes:
    tokens: int
    share: float
    texts: list[str]
    key: int


@dataclass(slots=True)
class Workload:
    """Builds requests (or conversations) by global index. Use `build_workload` to make one."""

    seed: int
    output_tokens: LengthDist
    input_tokens: LengthDist | None = None
    entries: list[DatasetEntry] | None = None
    source: str = "synthetic"
    counter: Counter | None = None
    synth: PromptSynth | None = None
    turns: LengthDist | None = None
    whole_conversations: bool = False
    prefixes: _Prefixes | None = None
    exact_output: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    count_template: bool = False
    user_offset: int | None = None
    system_offset: int | None = None
    exact: bool = False
    _perm_cache: dict[int, npt.NDArray[np.int64]] = field(default_factory=dict)
    _expected_cache: dict[tuple[int, int | None], int] = field(default_factory=dict)

    # --- facts ----------------------------------------------------------------------------------
    @property
    def conversational(self) -> bool:
        return self.turns is not None or self.whole_conversations

    def describe(self) -> dict[str, Any]:
        """The workload as the manifest states it: sources, how lengths are known, the offset."""
        out: dict[str, Any] = {
            "source": self.source,
            "input_tokens": str(self.input_tokens) if self.input_tokens else None,
            "output_tokens": str(self.output_tokens),
            "conversation_turns": str(self.turns)
            if self.turns
            else ("dataset" if self.whole_conversations else None),
            "shared_prefix": (
                {
                    "tokens": self.prefixes.tokens,
                    "share": self.prefixes.share,
                    "count": len(self.prefixes.texts),
                }
                if self.prefixes
                else None
            ),
            "lengths": self.counter.describe() if self.counter else {"method": "words", "exact": False},
            "exact_lengths": self.exact,
            "count_template": self.count_template,
            "template_offset": self.user_offset,
            "template_offset_with_prefix": self.system_offset if self.prefixes else None,
        }
        return out

    def mean_turns(self) -> float:
        """Requests per item on average (1 for single requests)."""
        if not self.conversational:
            return 1.0
        if self.whole_conversations and self.entries:
            mean = sum(len(e.turns) for e in self.entries) / len(self.entries)
            return min(mean, self.turns.mean) if self.turns else mean
        return self.turns.mean if self.turns else 1.0

    def turns_of(self, index: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Requests each item (a request: 1, a conversation: its turns) stands for."""
        idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
        if not self.conversational:
            return np.ones(idx.shape, dtype=np.int64)
        if self.whole_conversations:
            assert self.entries is not None
            n = np.array([len(self.entries[k].turns) for k in self._entry_index(idx)], dtype=np.int64)
            return np.minimum(n, self.turns.sample(self.seed, "turns", idx)) if self.turns else n
        assert self.turns is not None
        return self.turns.sample(self.seed, "turns", idx)

    # --- building -------------------------------------------------------------------------------
    def build(
        self, indices: Sequence[int] | npt.NDArray[np.int64], turn_caps: Sequence[int] | None = None
    ) -> list[Any]:
        """RequestSpecs (or SessionSpecs, for conversations) for these global indices, in order.
        `turn_caps` cuts conversations short (an exact `max_requests` ends mid-conversation)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return []
        if self.conversational:
            return self._sessions(idx, turn_caps)
        return self._requests(idx)

    def _out_lengths(self, idx: npt.NDArray[np.int64], stream: str = "output") -> list[int]:
        out: list[int] = self.output_tokens.sample(self.seed, stream, idx).tolist()
        return out

    def _prefix_of(self, idx: npt.NDArray[np.int64]) -> list[int | None]:
        p = self.prefixes
        if p is None:
            return [None] * len(idx)
        has = uniforms(p.key, idx, 0) < p.share
        which = np.minimum((uniforms(p.key, idx, 1) * len(p.texts)).astype(np.int64), len(p.texts) - 1)
        return [int(w) if h else None for h, w in zip(has.tolist(), which.tolist(), strict=True)]

    def _body(self, max_tokens: int) -> dict[str, Any] | None:
        if not self.exact_output and not self.extra_body:
            return None
        body = dict(self.extra_body)
        if self.exact_output:
            body["min_tokens"] = max_tokens
            body["ignore_eos"] = True
        return body

    def _synthetic_texts(
        self, idx: npt.NDArray[np.int64], stream: str
    ) -> tuple[list[str], list[int], list[int]]:
        """User texts of the requested lengths for these indices, the lengths asked for, and the
        words (= tokens, with the model's tokenizer) of each text."""
        assert self.input_tokens is not None and self.synth is not None
        want = self.input_tokens.sample(self.seed, stream, idx).tolist()
        starts = (
            (uniforms(stream_key(self.seed, stream + ":start"), idx) * self.synth.ring_words)
            .astype(np.int64)
            .tolist()
        )
        words = want
        if isinstance(self.counter, Calibration):
            cal = self.counter
            less = round(cal.offset) if self.count_template else 0
            words = [cal.words_for(max(1, n - less)) for n in want]
        elif self.count_template and self.user_offset is not None:
            words = [max(1, n - self.user_offset) for n in want]
        text = self.synth.text
        return [text(w, i, s) for w, i, s in zip(words, idx.tolist(), starts, strict=True)], want, words

    def _requests(self, idx: npt.NDArray[np.int64]) -> list[RequestSpec]:
        outs = self._out_lengths(idx)
        prefixes = self._prefix_of(idx)
        out: list[RequestSpec] = []
        if self.entries is None:
            texts, want, words = self._synthetic_texts(idx, "input")
            ptexts = self.prefixes.texts if self.prefixes else []
            k_prefix = self.prefixes.tokens if self.prefixes else 0
            # Exact: each word is one token and the template adds a constant (checked once).
            uo = self.user_offset if self.exact else None
            so = self.system_offset if self.exact else None
            for i, text, n, nw, m, pj in zip(idx.tolist(), texts, want, words, outs, prefixes, strict=True):
                user = {"role": "user", "content": text}
                if pj is None:
                    msgs = [user]
                    expected = nw + uo if uo is not None else None
                else:
                    msgs = [{"role": "system", "content": ptexts[pj]}, user]
                    expected = nw + k_prefix + so if so is not None else None
                out.append(
                    RequestSpec(
                        i,
                        f"syn-{i}",
                        msgs,
                        m,
                        n,
                        m,
                        expected,
                        pj,
                        k_prefix if pj is not None else 0,
                        self._body(m),
                    )
                )
            return out
        entries = self.entries
        for i, e_idx, m, pj in zip(
            idx.tolist(), self._entry_index(idx).tolist(), outs, prefixes, strict=True
        ):
            e = entries[e_idx]
            if e.max_tokens is not None:
                m = e.max_tokens
            msgs = self._entry_messages(e, pj)
            out.append(
                RequestSpec(
                    i,
                    e.id,
                    msgs,
                    m,
                    e.tokens[0] if e.tokens else None,
                    m,
                    self._expected(e_idx, pj, msgs),
                    pj,
                    self.prefixes.tokens if self.prefixes and pj is not None else 0,
                    self._body(m),
                )
            )
        return out

    def _entry_messages(self, e: DatasetEntry, pj: int | None) -> list[Message]:
        if e.messages is not None:
            msgs = [dict(m) for m in e.messages]
        else:
            msgs = [{"role": "system", "content": e.system}] if e.system else []
            msgs.append({"role": "user", "content": e.turns[0]})
        if pj is not None and self.prefixes is not None:
            msgs.insert(0, {"role": "system", "content": self.prefixes.texts[pj]})
        return msgs

    def _expected(self, e_idx: int, pj: int | None, msgs: list[Message]) -> int | None:
        if not isinstance(self.counter, ModelTokenizer) or self.counter.chat_template is None:
            return None
        key = (e_idx, pj)
        n = self._expected_cache.get(key)
        if n is None:
            n = self._expected_cache[key] = self.counter.prompt_tokens(msgs)
        return n

    def _entry_index(self, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Dataset entry of each index: a seeded permutation per pass over the dataset, so every
        entry is used once before any is used twice, whichever worker builds which index."""
        assert self.entries is not None
        m = len(self.entries)
        epochs, pos = np.divmod(idx, m)
        out = np.empty(idx.shape, dtype=np.int64)
        for ep in np.unique(epochs).tolist():
            perm = self._perm_cache.get(ep)
            if perm is None:
                if len(self._perm_cache) > 8:
                    self._perm_cache.clear()
                perm = np.random.default_rng([stream_key(self.seed, "dataset-order"), ep]).permutation(m)
                self._perm_cache[ep] = perm
            sel = epochs == ep
            out[sel] = perm[pos[sel]]
        return out

    def _sessions(self, idx: npt.NDArray[np.int64], turn_caps: Sequence[int] | None) -> list[SessionSpec]:
        n_turns = self.turns_of(idx).tolist()
        if turn_caps is not None:
            n_turns = [min(a, b) for a, b in zip(n_turns, turn_caps, strict=True)]
        prefixes = self._prefix_of(idx)
        ptexts = self.prefixes.texts if self.prefixes else []
        k_prefix = self.prefixes.tokens if self.prefixes else 0
        max_t = max(n_turns)
        # Per turn position j, one vectorised draw over the block's sessions.
        texts: list[list[str]] = []
        wants: list[list[int | None]] = []
        ids: list[list[str]] = []
        entry_sys: list[str | None] = [None] * len(idx)
        if self.whole_conversations:
            assert self.entries is not None
            e_idx = self._entry_index(idx).tolist()
            for j in range(max_t):
                texts.append(
                    [self.entries[e].turns[j] if j < len(self.entries[e].turns) else "" for e in e_idx]
                )
                wants.append(
                    [
                        (t[j] if j < len(t) else None) if (t := self.entries[e].tokens) is not None else None
                        for e in e_idx
                    ]
                )
                ids.append([self.entries[e].id for e in e_idx])
            entry_sys = [self.entries[e].system for e in e_idx]
        elif self.entries is not None:
            # Single-turn dataset: each turn of a conversation is its own draw from the dataset.
            m = len(self.entries)
            for j in range(max_t):
                picks = np.minimum(
                    (uniforms(stream_key(self.seed, f"conv-entry:{j}"), idx) * m).astype(np.int64), m - 1
                )
                es = [self.entries[e] for e in picks.tolist()]
                texts.append([e.turns[0] for e in es])
                wants.append([e.tokens[0] if e.tokens else None for e in es])
                ids.append([e.id for e in es])
        else:
            for j in range(max_t):
                t, w, _ = self._synthetic_texts(idx, "input" if j == 0 else f"input:{j}")
                texts.append(t)
                wants.append(list(w))
                ids.append([f"syn-{i}-t{j + 1}" for i in idx.tolist()])
        outs = [self._out_lengths(idx, "output" if j == 0 else f"output:{j}") for j in range(max_t)]
        sessions = []
        for col, i in enumerate(idx.tolist()):
            turns = tuple(
                TurnSpec(ids[j][col], texts[j][col], wants[j][col], outs[j][col]) for j in range(n_turns[col])
            )
            pj = prefixes[col]
            system = ptexts[pj] if pj is not None else None
            if entry_sys[col]:
                system = f"{system}\n{entry_sys[col]}" if system else entry_sys[col]
            sessions.append(
                SessionSpec(
                    i,
                    f"s{i}",
                    turns,
                    system,
                    pj,
                    k_prefix if pj is not None else 0,
                    dict(self.extra_body) if self.extra_body else None,
                )
            )
        return sessions


# ---------------------------------------------------------------------------------------------
# Making a workload from the scenario's section
# ---------------------------------------------------------------------------------------------


def build_workload(
    spec: WorkloadSpec,
    *,
    seed: int,
    default_max_tokens: int | tuple[int, int] = 128,
    counter: Counter | None = None,
    base_dir: Path | None = None,
    prompts: Sequence[dict[str, Any]] | None = None,
) -> Workload:
    """A `Workload` from the scenario's `workload` section.

    `counter`: the model's `ModelTokenizer` (exact lengths), a `Calibration` against the host, or
    None (lengths in plain words, stated as inexact). `prompts`: the scenario's prompt set (as
    `harness.plan.prompt_dicts` gives it), used when the section names no dataset and no input
    length. `default_max_tokens`: the scenario's `request.max_tokens` ([lo, hi]: uniform)."""
    if spec.output_tokens is not None:
        out_dist = parse_length(spec.output_tokens)
    elif isinstance(default_max_tokens, int):
        out_dist = parse_length(default_max_tokens)
    else:
        out_dist = parse_length(f"{default_max_tokens[0]}:{default_max_tokens[1]}")
    w = Workload(
        seed=seed,
        output_tokens=out_dist,
        counter=counter,
        turns=spec.turns_dist,
        exact_output=spec.exact_output,
        extra_body=dict(spec.extra_body),
        count_template=spec.count_template,
    )
    in_dist = spec.input_dist
    if spec.dataset is not None:
        ds = spec.dataset
        path = Path(ds.path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        entries = load_dataset(path, ds.format, field=ds.field)
        if ds.conversations == "first_turn":
            entries = [
                DatasetEntry(e.id, e.turns[:1], e.system, e.where, None, e.messages, e.max_tokens)
                for e in entries
            ]
        w.whole_conversations = ds.conversations == "whole"
        if in_dist is not None:
            if counter is None:
                raise InputError(
                    f"{path}: keeping prompts of {in_dist} tokens needs the model's tokenizer (workload.tokenizer) or a calibration"
                )
            lo, hi = in_dist.support
            entries = fit_lengths(entries, counter, lo=lo, hi=hi, mode=ds.too_long, source=str(path))
        elif isinstance(counter, ModelTokenizer):
            # No range asked: measure every entry, drop none.
            entries = fit_lengths(entries, counter, lo=0, source=str(path))
        w.entries = entries
        w.source = f"dataset:{path}"
    elif in_dist is not None:
        w.input_tokens = in_dist
        words: Sequence[str] = PLAIN_WORDS
        if isinstance(counter, ModelTokenizer):
            words = counter.single_token_words()
            if len(words) < 16:
                raise InputError(
                    f"{counter.source}: the tokenizer has too few single-token words for synthetic prompts; use a dataset"
                )
        w.synth = PromptSynth(words, seed=seed)
        w.source = "synthetic"
    else:
        raw = prompts or []
        if not raw:
            raise InputError("workload: give input_tokens, a dataset, or a prompt set")
        w.entries = [
            DatasetEntry(
                str(p["id"]),
                tuple(m["content"] for m in p["messages"] if m["role"] == "user") or ("",),
                next((m["content"] for m in p["messages"] if m["role"] == "system"), None),
                f"prompt {p['id']}",
                messages=tuple(p["messages"]),
                max_tokens=p.get("max_tokens"),
            )
            for p in raw
        ]
        if isinstance(counter, ModelTokenizer):
            w.entries = fit_lengths(w.entries, counter, lo=0, source="prompts")
        w.source = "prompts"
    if spec.shared_prefix is not None:
        sp = spec.shared_prefix
        synth = w.synth or PromptSynth(
            counter.single_token_words() if isinstance(counter, ModelTokenizer) else PLAIN_WORDS, seed=seed
        )
        n_words = counter.words_for(sp.tokens) if isinstance(counter, Calibration) else sp.tokens
        key = stream_key(seed, "prefix")
        texts = [
            synth.text(n_words, j, int(uniforms(key, [j], 2)[0] * synth.ring_words)) for j in range(sp.count)
        ]
        w.prefixes = _Prefixes(sp.tokens, sp.share, texts, key)
    _check_offsets(w)
    return w


def _check_offsets(w: Workload) -> None:
    """With the model's tokenizer and synthetic text: verify that n words are n tokens and that the
    template adds a constant, at several lengths, once. Sets `exact` and the offsets."""
    tok = w.counter
    if not isinstance(tok, ModelTokenizer) or w.synth is None:
        return
    synth = w.synth
    offsets_user, offsets_sys, ok = set(), set(), True
    for n, i in ((1, 7), (3, 12345), (17, 2), (100, 99), (333, 31337)):
        text = synth.text(n, i, i * 7919)
        if tok.count(text) != n:
            ok = False
            break
        offsets_user.add(tok.prompt_tokens([{"role": "user", "content": text}]) - n)
        if w.prefixes is not None:
            p = w.prefixes.texts[0]
            if tok.count(p) != w.prefixes.tokens:
                ok = False
                break
            msgs = [{"role": "system", "content": p}, {"role": "user", "content": text}]
            offsets_sys.add(tok.prompt_tokens(msgs) - n - w.prefixes.tokens)
    w.exact = ok and len(offsets_user) == 1 and len(offsets_sys) <= 1 and tok.chat_template is not None
    if w.exact:
        w.user_offset = offsets_user.pop()
        w.system_offset = offsets_sys.pop() if offsets_sys else None
