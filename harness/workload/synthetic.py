"""Synthetic message text of an exact number of tokens, built in microseconds.

The text is a window of a long seeded "ring" of words, each of which is one token of the target
model's tokenizer (` word`, leading space included; `ModelTokenizer.single_token_words`), so n words
are n tokens. Each request's window starts at its own seeded place, and its first words spell the
request's index in base-V (V = the number of words): no two requests share a first token, so a
host's prefix cache cannot serve one request's prompt from another's (only an explicit shared
prefix does that). Building one text is two slices of a prebuilt string: no tokenizing per request.

Without a tokenizer the words are `PLAIN_WORDS` and lengths are approximate (see `Calibration`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.workload._random import stream_key

__all__ = ["PromptSynth"]

_RING_WORDS = 1 << 16


class PromptSynth:
    """Texts of n words from a seeded ring; `text(n, index, start)` is a pure function of its
    arguments and the seed, whichever process calls it."""

    def __init__(self, words: Sequence[str], *, seed: int, ring_words: int = _RING_WORDS) -> None:
        vocab = sorted({w if w.startswith(" ") else " " + w for w in words})
        if len(vocab) < 16:
            raise ValueError(f"synthetic text needs at least 16 distinct words, got {len(vocab)}")
        self.vocab = vocab
        rng = np.random.default_rng(stream_key(seed, "synthetic-ring"))
        self._ring = [vocab[k] for k in rng.integers(0, len(vocab), ring_words)]
        self.ring_words = ring_words
        self._copies = 0
        self._text = ""
        self._off: list[int] = [0]
        self._grow(2 * ring_words)
        # Digits of the index: 3 words of a 744-word vocabulary tell 411 million requests apart.
        self.id_words = 1
        while len(vocab) ** self.id_words < 100_000_000 and self.id_words < 8:
            self.id_words += 1

    def _grow(self, words_needed: int) -> None:
        """Repeat the ring until the prebuilt text holds at least `words_needed` words."""
        while len(self._off) - 1 < words_needed:
            chunk = "".join(self._ring)
            base = self._off[-1]
            acc = base
            offs = []
            for w in self._ring:
                acc += len(w)
                offs.append(acc)
            self._text += chunk
            self._off.extend(offs)
            self._copies += 1

    def window(self, n: int, start: int) -> str:
        """n consecutive ring words from `start` (taken modulo the ring)."""
        if n <= 0:
            return ""
        s = start % self.ring_words
        e = s + n
        if e >= len(self._off):
            self._grow(e + 1)
        return self._text[self._off[s] : self._off[e]]

    def id_prefix(self, n: int, index: int) -> str:
        """The first `min(n, id_words)` words: `index` in base-V, least significant first."""
        v = len(self.vocab)
        out = []
        x = index
        for _ in range(min(n, self.id_words)):
            x, d = divmod(x, v)
            out.append(self.vocab[d])
        return "".join(out)

    def text(self, n: int, index: int, start: int) -> str:
        """n words: the index's digits, then ring words from `start`."""
        k = min(n, self.id_words)
        return self.id_prefix(k, index) + self.window(n - k, start)
