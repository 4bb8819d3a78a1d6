"""Counting tokens the way the target model does, or as near as a calibration can.

`ModelTokenizer` reads a model folder offline (Foundry Local / ONNX Runtime GenAI and Hugging Face
folders alike): `tokenizer.json` with the `tokenizers` library, and the chat template from
`chat_template.jinja` or `tokenizer_config.json`'s `chat_template`, rendered with Jinja2 the way
Hugging Face's `apply_chat_template` does (sandboxed, `trim_blocks`, `lstrip_blocks`). Rendering
the template and counting the result gives what a host that applies the same template reports as
`usage.prompt_tokens`; the difference from the message text alone is the template offset.

Where no tokenizer is available, `calibrate(probe)` fits prompt tokens = tokens_per_word * words +
offset from a few probe prompts whose `usage.prompt_tokens` the caller obtains from the real host
(the caller passes a function that sends one request), and says in its result that it was
calibrated, not counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from harness.errors import InputError

__all__ = [
    "PLAIN_WORDS",
    "Calibration",
    "Counter",
    "ModelTokenizer",
    "calibrate",
]

# Short, common English words: most tokenizers hold each (with its leading space) as one token, so
# text made of them has close to one token per word even where no tokenizer is available.
_PLAIN_WORDS = (
    "the of and to in is was for on are as with his they at be this from have or by one had not "
    "but what all were when we there can an your which their said if do will each about how up "
    "out them then she many some so these would other into has more her two like him see time "
    "could no make than first been its who now people my made over did down only way find use "
    "may water long little very after words called just where most know get through back much "
    "before go good new write our used me man too any day same right look think also around "
    "another came come work three word must because does part even place well such here take "
    "why things help put years different away again off went old number great tell men say small "
    "every found still between name should home big give air line set own under read last never "
    "us left end along while might next sound below saw something thought both few those always "
    "looked show large often together asked house world going want school important until form "
    "food keep children feet land side without boy once animals life enough took sometimes four "
    "head above kind began almost live page got earth need far hand high year mother light parts "
    "country father let night following picture being study second eyes soon times story boys "
    "since white days ever paper hard near sentence better best across during today others sure "
    "means knew try told young miles sun ways thing whole hear example heard several change "
    "answer room sea against top turned learn point city play toward five using himself usually"
)
PLAIN_WORDS: tuple[str, ...] = tuple(_PLAIN_WORDS.split())


class Counter:
    """What the request builder needs from a token counter (a tokenizer or a calibration)."""

    exact: bool = False

    def count(self, text: str) -> int:
        raise NotImplementedError

    def truncate(self, text: str, n: int) -> str:
        """`text` cut to at most `n` tokens."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """How lengths are known, for the run's manifest."""
        raise NotImplementedError


def _token_str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class ModelTokenizer(Counter):
    """A model's own tokenizer and chat template, read from its folder without any network."""

    exact = True

    def __init__(
        self,
        tokenizer: Any,
        *,
        chat_template: str | None,
        special: dict[str, str] | None = None,
        source: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.special = dict(special or {})
        self.source = source
        self._template: Any = None
        if chat_template is not None:
            self._template = _compile_template(chat_template, source)

    @classmethod
    def from_path(cls, path: Path | str) -> ModelTokenizer:
        """A model folder (with `tokenizer.json`) or a `tokenizer.json` file; the chat template comes
        from `chat_template.jinja`, else `tokenizer_config.json`, in the same folder."""
        from tokenizers import Tokenizer

        p = Path(path)
        tok_file = p / "tokenizer.json" if p.is_dir() else p
        folder = tok_file.parent
        if not tok_file.is_file():
            raise InputError(
                f"{tok_file}: tokenizer file not found (expected a model folder with tokenizer.json)"
            )
        try:
            tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as exc:  # the Rust library raises a bare Exception for any bad file
            raise InputError(
                f"{tok_file}: not a tokenizers JSON file ({str(exc).splitlines()[0][:120]})"
            ) from None
        config: dict[str, Any] = {}
        cfg_file = folder / "tokenizer_config.json"
        if cfg_file.is_file():
            try:
                loaded = orjson.loads(cfg_file.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise InputError(f"{cfg_file}: not valid JSON ({exc})") from None
            if isinstance(loaded, dict):
                config = loaded
        template: str | None = None
        jinja_file = folder / "chat_template.jinja"
        if jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        else:
            raw = config.get("chat_template")
            if isinstance(raw, str):
                template = raw
            elif isinstance(raw, list):
                named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
                default = named.get("default")
                template = default if isinstance(default, str) else None
        special = {
            k: s
            for k in ("bos_token", "eos_token", "pad_token", "unk_token")
            if (s := _token_str(config.get(k)))
        }
        return cls(tokenizer, chat_template=template, special=special, source=str(folder))

    # --- counting -----------------------------------------------------------------------------
    def ids(self, text: str) -> list[int]:
        # As `apply_chat_template(tokenize=True)`: the rendered template already holds every special
        # token the model expects, so none are added here.
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def truncate(self, text: str, n: int) -> str:
        ids = self.ids(text)
        if len(ids) <= n:
            return text
        out: str = self.tokenizer.decode(ids[:n], skip_special_tokens=False)
        # Decoding then encoding again can merge differently at the cut; trim until it fits.
        while out and self.count(out) > n:
            out = out[:-1]
        return out

    def render(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text the host's template makes of `messages` (no template: contents joined)."""
        if self._template is None:
            return "".join(m["content"] for m in messages)
        try:
            text: str = self._template.render(
                messages=list(messages), add_generation_prompt=add_generation_prompt, **self.special
            )
        except Exception as exc:  # a template's own raise_exception, or a bad template
            raise InputError(f"{self.source}: chat template failed to render ({exc})") from None
        return text

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens of the whole rendered prompt: what a host applying this template reports."""
        return self.count(self.render(messages))

    def single_token_words(self, limit: int = 8192) -> list[str]:
        """Vocabulary entries that are one word with a leading space (` word`) and encode back to
        exactly that one token: text made only of such words, one after another, has exactly one
        token per word in tokenizers that split words before merging (byte-level BPE, Metaspace).
        The first `limit` in id order (BPE ids follow merge order: common words first), which
        bounds the scan on 150k-token vocabularies; `build_workload` verifies the result."""
        out: set[str] = set()
        word = re.compile(r" [A-Za-z]{2,}")
        for token_id in range(self.tokenizer.get_vocab_size()):
            s = self.tokenizer.decode([token_id], skip_special_tokens=True)
            if word.fullmatch(s) and self.ids(s) == [token_id]:
                out.add(s)
                if len(out) >= limit:
                    break
        return sorted(out)

    def describe(self) -> dict[str, Any]:
        return {
            "method": "tokenizer",
            "source": self.source,
            "chat_template": self.chat_template is not None,
        }


def _compile_template(source_text: str, where: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def strftime_now(fmt: str) -> str:
        return datetime.now(UTC).strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # As Hugging Face's: json.dumps with these options, not Jinja's HTML-escaping tojson.
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source_text)
    except jinja2.TemplateSyntaxError as exc:
        raise InputError(f"{where}: chat template line {exc.lineno}: {exc.message}") from None


# ---------------------------------------------------------------------------------------------
# Calibration against a host, where no tokenizer is available
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Calibration(Counter):
    """prompt_tokens ≈ tokens_per_word * words + offset, fitted against a host's usage.prompt_tokens.

    Approximate by nature: lengths built from it are near, not equal, to the requested ones; the
    manifest says `"method": "calibrated"` so nobody mistakes them for counted lengths."""

    tokens_per_word: float
    offset: float
    probes: tuple[tuple[int, int], ...] = field(default=())
    calibrated: bool = True

    def count(self, text: str) -> int:
        return max(0, round(self.tokens_per_word * len(text.split())))

    def words_for(self, n_tokens: int) -> int:
        """Words to send for about `n_tokens` tokens of message text."""
        return max(1, round(n_tokens / self.tokens_per_word))

    def truncate(self, text: str, n: int) -> str:
        words = text.split()
        keep = self.words_for(n)
        return text if len(words) <= keep else " ".join(words[:keep])

    def describe(self) -> dict[str, Any]:
        return {
            "method": "calibrated",
            "tokens_per_word": round(self.tokens_per_word, 6),
            "offset": round(self.offset, 3),
            "probes": [list(p) for p in self.probes],
        }


def calibrate(
    probe: Callable[[list[dict[str, str]]], int],
    *,
    words: Sequence[int] = (16, 64, 256),
    vocabulary: Sequence[str] = PLAIN_WORDS,
) -> Calibration:
    """Fit tokens per word and the template offset from `probe(messages) -> usage.prompt_tokens`.

    `probe` sends one request (the wiring passes a real one, before the run) and returns the host's
    `usage.prompt_tokens`; it is called once per entry of `words`. A least-squares line through the
    points gives the fit; a host whose counts do not grow with the words is bad input."""
    if len(words) < 2 or len(set(words)) < 2:
        raise ValueError("calibration needs at least two different probe lengths")
    points: list[tuple[int, int]] = []
    for k in words:
        # Shaped like the synthetic text the fit is used for: every word after a space.
        text = "".join(" " + vocabulary[j % len(vocabulary)].strip() for j in range(k))
        tokens = probe([{"role": "user", "content": text}])
        if not isinstance(tokens, int) or tokens < 0:
            raise InputError(f"calibration: the host reported no usable usage.prompt_tokens ({tokens!r})")
        points.append((k, tokens))
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    slope = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    if slope <= 0:
        raise InputError(
            f"calibration: the host's usage.prompt_tokens did not grow with the prompt ({points}); "
            "give the model's tokenizer instead"
        )
    return Calibration(tokens_per_word=slope, offset=my - slope * mx, probes=tuple(points))
