"""A conversation held by one user: per-turn requests carrying the history, the host's replies fed back.

`Conversation(session)` walks a planned `SessionSpec`: `next_request()` gives turn t's request
(system prompt, every earlier user message and the assistant's *actual* reply, then turn t's user
message), `add_reply(text)` appends what the host answered. A failed turn feeds back an empty reply,
so the conversation keeps its planned number of requests (an exact `max_requests` stays exact).
"""

from __future__ import annotations

from harness.workload.requests import Message, RequestSpec, SessionSpec
from harness.workload.tokens import ModelTokenizer

__all__ = ["Conversation"]


class Conversation:
    """The running state of one planned conversation (not shared between users)."""

    def __init__(self, session: SessionSpec, tokenizer: ModelTokenizer | None = None) -> None:
        """`tokenizer`: count each turn's whole prompt (history included) as `expected_prompt_tokens`;
        done in `next_request`, before the send, never during it."""
        self.session = session
        self.tokenizer = tokenizer
        self.history: list[Message] = []
        if session.system:
            self.history.append({"role": "system", "content": session.system})
        self.turn = 0  # turns answered so far
        self._pending = False

    @property
    def done(self) -> bool:
        return self.turn >= len(self.session.turns)

    def next_request(self) -> RequestSpec:
        """The request for turn `turn + 1` (1-based in records); call `add_reply` before the next."""
        if self.done:
            raise IndexError(f"conversation {self.session.session_id} has no turn {self.turn + 1}")
        if self._pending:
            raise RuntimeError("add_reply() the previous turn's answer first")
        t = self.session.turns[self.turn]
        self._pending = True
        s = self.session
        messages = [*self.history, {"role": "user", "content": t.text}]
        expected = None
        if self.tokenizer is not None and self.tokenizer.chat_template is not None:
            expected = self.tokenizer.prompt_tokens(messages)
        return RequestSpec(
            index=s.index,
            prompt_id=t.prompt_id,
            messages=messages,
            expected_prompt_tokens=expected,
            max_tokens=t.max_tokens,
            requested_input_tokens=t.requested_input_tokens,
            requested_output_tokens=t.max_tokens,
            prefix_id=s.prefix_id,
            prefix_tokens=s.prefix_tokens,
            extra_body=dict(s.extra_body) if s.extra_body else None,
            session_id=s.session_id,
            turn=self.turn + 1,
        )

    def add_reply(self, text: str | None) -> None:
        """The assistant's answer to the current turn (None or "" when the request failed)."""
        if not self._pending:
            raise RuntimeError("no turn is waiting for a reply")
        t = self.session.turns[self.turn]
        self.history.append({"role": "user", "content": t.text})
        self.history.append({"role": "assistant", "content": text or ""})
        self.turn += 1
        self._pending = False
