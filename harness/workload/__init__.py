"""Workloads: what each request asks for, built before it is sent.

This package owns the request *content* and knows nothing of Locust or the network:

- `lengths`: length distributions (`256`, `128:512`, `normal:256,64`, `lognormal:256,64`,
  `list:64,128,256`), one parser for flags and scenario files, seeded per-index sampling;
- `tokens`: the target model's own tokenizer and chat template (offline), or a calibration
  against a host's `usage.prompt_tokens` where there is no tokenizer;
- `synthetic`: message text of an exact number of tokens;
- `datasets`: JSONL, CSV, ShareGPT and prompts.json files, length filtering and truncation;
- `requests`: global request index -> `RequestSpec` (or a planned conversation);
- `conversation`: a session's per-turn requests carrying the history;
- `pool`: each worker's share, pre-built, exact `max_requests` over all workers;
- `config`: the scenario's `workload` section.
"""

from __future__ import annotations

from harness.workload.config import ConversationSpec, DatasetSpec, SharedPrefixSpec, WorkloadSpec
from harness.workload.conversation import Conversation
from harness.workload.datasets import DatasetEntry, fit_lengths, load_dataset
from harness.workload.lengths import LengthDist, LengthSpecError, length_option, parse_length
from harness.workload.pool import RequestPool, items_for_max_requests, worker_share
from harness.workload.requests import RequestSpec, SessionSpec, TurnSpec, Workload, build_workload
from harness.workload.synthetic import PromptSynth
from harness.workload.tokens import Calibration, Counter, ModelTokenizer, calibrate

__all__ = [
    "Calibration",
    "Conversation",
    "ConversationSpec",
    "Counter",
    "DatasetEntry",
    "DatasetSpec",
    "LengthDist",
    "LengthSpecError",
    "ModelTokenizer",
    "PromptSynth",
    "RequestPool",
    "RequestSpec",
    "SessionSpec",
    "SharedPrefixSpec",
    "TurnSpec",
    "Workload",
    "WorkloadSpec",
    "build_workload",
    "calibrate",
    "fit_lengths",
    "items_for_max_requests",
    "length_option",
    "load_dataset",
    "parse_length",
    "worker_share",
]
