"""The scenario's `workload` section: what each request asks for (lengths, dataset, conversations,
shared prefixes, a request limit), validated like the rest of the scenario.

Ready to become one field of `harness.scenario.Scenario` (`workload: WorkloadSpec | None`); the
command-line flags `--input-tokens`, `--output-tokens`, `--dataset`, `--max-requests` set the same
fields as dotted overrides (`workload.input_tokens`, ...). Lengths are validated with the one parser
in `harness.workload.lengths`, so a file and a flag get the same message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.workload.lengths import LengthDist, parse_length

__all__ = ["ConversationSpec", "DatasetSpec", "SharedPrefixSpec", "WorkloadSpec"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _length(v: Any) -> Any:
    if v is None:
        return None
    return parse_length(v).spec  # LengthSpecError is a ValueError: pydantic names the field


class SharedPrefixSpec(_Model):
    """A system prompt of `tokens` tokens that a fraction of requests start with (prefix caches)."""

    tokens: int = Field(..., ge=1, description="length of the shared system prompt, in tokens")
    share: float = Field(
        1.0,
        ge=0,
        le=1,
        description="fraction of requests (or conversations) that start with it, drawn per request",
    )
    count: int = Field(
        1, ge=1, description="distinct shared prefixes; a request that gets one picks one (seeded)"
    )


class ConversationSpec(_Model):
    """Multi-turn sessions: each request carries the history so far, with the host's real replies."""

    turns: str | None = Field(
        None,
        description="turns per conversation, a length (4, 2:6, list:2,4); with a whole-conversation dataset it caps the recorded turns",
    )

    _turns = field_validator("turns", mode="before")(classmethod(lambda cls, v: _length(v)))


class DatasetSpec(_Model):
    """Prompts from a local file (users bring it; nothing is downloaded)."""

    path: str = Field(..., description="JSONL, CSV, ShareGPT JSON/JSONL, or a workshop prompts.json")
    format: Literal["auto", "jsonl", "csv", "sharegpt", "prompts"] = Field(
        "auto", description="file format; auto: by extension and content"
    )
    field: str | None = Field(
        None, description="the JSONL key or CSV column holding the prompt (default prompt, then text)"
    )
    conversations: Literal["first_turn", "whole"] = Field(
        "first_turn", description="ShareGPT: send the first user turn only, or hold whole conversations"
    )
    too_long: Literal["drop", "truncate"] = Field(
        "drop",
        description="with input_tokens as a range: drop prompts outside it, or cut longer ones to its top (shorter are dropped)",
    )


class WorkloadSpec(_Model):
    """What each request asks for. Empty: the scenario's prompt set, as before."""

    input_tokens: str | None = Field(
        None,
        description="synthetic prompts of this many tokens (256, 128:512, normal:256,64, lognormal:256,64, list:64,128,256); with a dataset, the range of prompt lengths kept",
    )
    output_tokens: str | None = Field(
        None, description="max_tokens per request, same syntax (default: request.max_tokens)"
    )
    dataset: DatasetSpec | None = Field(
        None, description="prompts from a local file (a path alone is enough)"
    )
    conversation: ConversationSpec | None = Field(
        None, description="multi-turn sessions instead of single requests"
    )
    shared_prefix: SharedPrefixSpec | None = Field(
        None, description="a shared system prompt for prefix-cache tests"
    )
    max_requests: int | None = Field(
        None,
        ge=1,
        description="stop after exactly this many requests over all workers (alongside the duration)",
    )
    tokenizer: str | None = Field(
        None,
        description="model folder or tokenizer.json for exact lengths (default: the embedded host's model; otherwise calibrated against the host)",
    )
    count_template: bool = Field(
        False,
        description="count the chat template's tokens in input_tokens (the host's usage.prompt_tokens equals it); default: input_tokens counts the message text and the template adds a constant stated in the manifest",
    )
    exact_output: bool = Field(
        False,
        description="also send min_tokens = max_tokens and ignore_eos: true (vLLM, SGLang); hosts that reject unknown fields answer 4xx",
    )
    extra_body: dict[str, Any] = Field(default_factory=dict, description="more fields for every request body")
    prebuild: int = Field(
        4096,
        ge=1,
        description="requests each worker builds before sending starts; between sends it tops up to this many, 256 at a time",
    )

    _lengths = field_validator("input_tokens", "output_tokens", mode="before")(
        classmethod(lambda cls, v: _length(v))
    )

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_path(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadSpec:
        dist = self.input_dist
        if self.dataset is not None and dist is not None and dist.kind in ("normal", "lognormal"):
            raise ValueError(
                "with a dataset, input_tokens is the range of prompt lengths kept: give 256, LO:HI or list:..., not a normal or lognormal"
            )
        whole = self.dataset is not None and self.dataset.conversations == "whole"
        if whole and self.conversation is None:
            raise ValueError(
                "dataset.conversations: whole needs a `conversation` section (turns may be left out)"
            )
        if self.conversation is not None and self.conversation.turns is None and not whole:
            raise ValueError("conversation.turns is needed unless the dataset holds whole conversations")
        if self.dataset is not None and self.dataset.too_long == "truncate" and self.input_tokens is None:
            raise ValueError("dataset.too_long: truncate needs input_tokens (the range to cut to)")
        return self

    # --- parsed views ---------------------------------------------------------------------------
    @property
    def input_dist(self) -> LengthDist | None:
        return parse_length(self.input_tokens) if self.input_tokens is not None else None

    @property
    def output_dist(self) -> LengthDist | None:
        return parse_length(self.output_tokens) if self.output_tokens is not None else None

    @property
    def turns_dist(self) -> LengthDist | None:
        c = self.conversation
        return parse_length(c.turns) if c is not None and c.turns is not None else None
