#!/usr/bin/env python3
"""Write the example dataset the project ships: `scenarios/example-conversations.jsonl`.

ShareGPT-format conversations (`{"id", "conversations": [{"from": "human"|"gpt", "value"}]}`, one
per line) about running local language models, written from templates and a seeded random number
generator: no downloads, nothing copied from anywhere, the same bytes on every run. 2 to 5 user
turns each, with user turns from a dozen words to a few hundred (some carry a pasted "log" or
"notes" block), so length filtering, truncation and whole-conversation runs all have work to do.

    python tools/make_example_dataset.py            # rewrite the file
    python tools/make_example_dataset.py --check    # exit 1 if the committed file differs
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "scenarios" / "example-conversations.jsonl"
SEED = 20261129
COUNT = 64

TOPICS = [
    "prompt caching",
    "batch size",
    "time to first token",
    "token throughput",
    "quantisation",
    "context length",
    "KV cache memory",
    "streaming responses",
    "GPU offload",
    "CPU inference",
    "model warm-up",
    "request queueing",
    "rate limits",
    "load balancing across hosts",
    "tail latency",
    "speculative decoding",
]
OPENERS = [
    "Explain {topic} to a developer who has never run a model locally.",
    "How does {topic} change what users feel when they chat with a local model?",
    "Give me three practical tips about {topic} on a laptop.",
    "What should I measure first when I tune {topic}?",
    "Summarise the trade-offs of {topic} in a short paragraph.",
    "I am benchmarking a local host. Why would {topic} matter for my numbers?",
]
FOLLOW_UPS = [
    "Can you make that shorter?",
    "What would change on a machine with twice the memory?",
    "Give a concrete example with numbers.",
    "How would I test that with a load generator?",
    "Which of those points matters most for {topic}?",
    "Now explain it as a checklist.",
    "What goes wrong if I ignore {topic}?",
]
PASTES = [
    "Here are my notes from the last run:",
    "This is the log from the host while the test ran:",
    "My colleague wrote this summary, is it right?",
]
_WORDS = (
    "request response latency token stream host model worker user second millisecond queue memory "
    "batch prefill decode cache prompt reply throughput percentile median spike ramp stage warm cold "
    "steady rate error timeout retry connection socket thread core fan clock budget target"
)
WORDS = _WORDS.split()
ANSWERS = [
    "In short, {topic} decides how much work the host repeats for every request.",
    "The main effect of {topic} shows up in the first token, less in the tokens after it.",
    "Measure it with and without {topic}, on the same machine, several times, and compare medians.",
    "A small model hides the cost of {topic}; a larger one makes it obvious.",
]


def _paste(rng: random.Random) -> str:
    lines = []
    for k in range(rng.randint(3, 12)):
        n = rng.randint(6, 18)
        lines.append(f"{k + 1:02d} " + " ".join(rng.choice(WORDS) for _ in range(n)) + ".")
    return "\n".join(lines)


def conversation(rng: random.Random, i: int) -> dict[str, object]:
    topic = rng.choice(TOPICS)
    turns: list[dict[str, str]] = []
    n_user = rng.randint(2, 5)
    for t in range(n_user):
        if t == 0:
            text = rng.choice(OPENERS).format(topic=topic)
        else:
            text = rng.choice(FOLLOW_UPS).format(topic=topic)
        if rng.random() < 0.3:
            text = f"{text}\n{rng.choice(PASTES)}\n{_paste(rng)}"
        turns.append({"from": "human", "value": text})
        answer = " ".join(rng.choice(ANSWERS).format(topic=topic) for _ in range(rng.randint(1, 4)))
        turns.append({"from": "gpt", "value": answer})
    return {"id": f"example-{i:03d}", "conversations": turns}


def render() -> str:
    rng = random.Random(SEED)
    return "".join(json.dumps(conversation(rng, i), ensure_ascii=True) + "\n" for i in range(COUNT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    text = render()
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'differs from the generator'}")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"{args.out}: {COUNT} conversations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
