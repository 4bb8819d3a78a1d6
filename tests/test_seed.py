"""`--seed`: the same seed sends the same requests, a different seed different ones.

Real processes: the simulated host as its own process and `harness run` (Locust in a child process).
What was sent is read twice: from the records (prompt_id, max_tokens) and from the host's own view
of each request, the usage it answered (prompt tokens tell the prompts apart, as they differ in
length; completion tokens are what it generated), whose totals are checked against `/sim/stats`.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness_helpers import harness, last_line, records, sim_host

pytestmark = pytest.mark.slow

#: Prompt texts whose lengths differ, so the host's prompt-token count names the prompt
#: (the sim counts ceil(chars / 4)).
PROMPTS = {"p8": "a" * 28, "p16": "b" * 60, "p32": "c" * 124, "p64": "d" * 252}
HOST_PROMPT_TOKENS = {"p8": 7, "p16": 15, "p32": 31, "p64": 63}


def sim_stats(base_url: str) -> dict[str, Any]:
    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(root + "/sim/stats", timeout=10) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
        return stats


Sent = list[tuple[str, int]]
Seen = list[tuple[int, int]]


def run_with_seed(tmp_path: Path, seed: int, name: str, *, workers: int = 0) -> dict[str, tuple[Sent, Seen]]:
    """One run against a fresh sim, one user per process: for each process that sent load,
    (prompt_id, max_tokens) in send order from the records, and (prompt tokens, completion tokens)
    in the same order as the host counted them."""
    scenario = tmp_path / f"{name}.yaml"
    scenario.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "prompts": [{"id": k, "text": v} for k, v in PROMPTS.items()],
                "request": {"max_tokens": [1, 40], "temperature": 0},
                # stagger 0: the first request goes at once (a random first wait only costs time here).
                # Worker processes get their users a little later than a lone process: 2 s.
                "load": {
                    "users": max(1, workers),
                    "duration": "2s" if workers else "1s",
                    "stagger": 0,
                    "stop_timeout": "5s",
                },
                "warmup": {"requests": 0},
            }
        )
    )
    with sim_host("--ttft-ms", "2", "--itl-ms", "0.5") as sim:
        proc = harness(
            "run",
            str(scenario),
            "--host",
            sim.base_url,
            "--seed",
            str(seed),
            "--workers",
            str(workers),
            "--out",
            str(tmp_path),
            "--no-report",
        )
        stats = sim_stats(sim.base_url)
    assert proc.returncode == 0, proc.stderr
    recs = records(Path(last_line(proc.stdout)))
    assert all(r["ok"] and not r["warmup"] and r["tokens_source"] == "usage" for r in recs)
    # The host's own count: every request it received is a record, every token it generated counted.
    assert len(recs) == stats["chat_requests"]
    assert sum(r["output_tokens"] for r in recs) == stats["tokens"]
    out = {}
    for worker in {r["worker"] for r in recs}:
        mine = sorted((r for r in recs if r["worker"] == worker), key=lambda r: r["seq"])
        sent = [(r["prompt_id"], r["max_tokens"]) for r in mine]
        seen = [(r["input_tokens"], r["output_tokens"]) for r in mine]
        # Records and host agree request by request on what was sent.
        assert seen == [(HOST_PROMPT_TOKENS[p], mt) for p, mt in sent]
        out[worker] = (sent, seen)
    assert len(out) == max(1, workers)
    return out


def test_same_seed_same_requests_different_seed_different(tmp_path: Path) -> None:
    ((a_sent, a_seen),) = run_with_seed(tmp_path, 7, "seed-a").values()
    ((b_sent, b_seen),) = run_with_seed(tmp_path, 7, "seed-b").values()
    ((c_sent, c_seen),) = run_with_seed(tmp_path, 8, "seed-c").values()
    # A 1 s run sends a number of requests that depends on the machine; the order does not.
    n = min(len(a_sent), len(b_sent), len(c_sent))
    assert n >= 20, f"too few requests to compare: {n}"
    assert a_sent[:n] == b_sent[:n]
    assert a_seen[:n] == b_seen[:n]
    # Different seed: different sequence; both draw from the whole set (not one prompt, one length).
    assert c_sent[:n] != a_sent[:n] and c_seen[:n] != a_seen[:n]
    for sent in (a_sent[:n], c_sent[:n]):
        assert len({p for p, _ in sent}) == len(PROMPTS)
        assert len({mt for _, mt in sent}) > 5 and all(1 <= mt <= 40 for _, mt in sent)


def test_same_seed_same_requests_from_each_worker_process(tmp_path: Path) -> None:
    """Two local worker processes, one user each: the pair of sequences repeats (which process
    sends which one may swap: processes are ordered by Locust's client ids), and the two differ."""
    a = list(run_with_seed(tmp_path, 7, "workers-a", workers=2).values())
    b = list(run_with_seed(tmp_path, 7, "workers-b", workers=2).values())
    n = min(len(sent) for sent, _ in a + b)
    assert n >= 10, f"too few requests to compare: {n}"
    a_pair = sorted(sent[:n] for sent, _ in a)
    b_pair = sorted(sent[:n] for sent, _ in b)
    assert a_pair == b_pair
    assert sorted(seen[:n] for _, seen in a) == sorted(seen[:n] for _, seen in b)
    assert a_pair[0] != a_pair[1]
