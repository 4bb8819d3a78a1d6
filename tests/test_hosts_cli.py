"""`harness hosts URL...` and `harness hosts --probe`, as a user runs them before a run.

Real processes: `harness hosts` against the simulated host (its own process) and against the
embedded Foundry Local host with the shipped tiny model. What the command prints is checked
against what the host itself says: the models it lists (`GET /v1/models`, read here directly),
the requests and tokens it served (`/sim/stats`), and the sim's configured timing, within bounds
that a unit mix-up or a late stamp would leave.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from harness_helpers import harness, sim_host

from harness.servers.ready import ChildHost, start_child_host

pytestmark = pytest.mark.slow

TINY_ID = "tiny-chat-generic-cpu:1"
CHAT_LINE = re.compile(
    r"^  chat \((?P<model>[^)]+)\): ok, connect (?P<connect>[\d.]+) ms, "
    r"first token (?P<ttft>[\d.]+) ms, total (?P<total>[\d.]+) ms$"
)
POLICY_ROW = re.compile(
    r"^  (?P<policy>reuse-quickack|reuse|new)\s+(?P<ok>\d+)/(?P<n>\d+)\s+(?P<ttfb>[\d.]+)\s+(?P<ttft>[\d.]+)"
    r"\s+(?P<tpot>[\d.]+)\s+(?P<tpr>[\d.]+)\s+(?P<connect>[\d.]+|-)$"
)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def sim_stats(base_url: str) -> dict[str, Any]:
    stats: dict[str, Any] = get_json(base_url.rsplit("/v1", 1)[0] + "/sim/stats")
    return stats


def listed_models(base_url: str) -> list[str]:
    return [m["id"] for m in get_json(base_url + "/models")["data"]]


def policy_rows(stdout: str) -> dict[str, dict[str, Any]]:
    rows = {}
    for line in stdout.splitlines():
        if m := POLICY_ROW.match(line):
            rows[m["policy"]] = m.groupdict()
    return rows


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def foundry() -> Iterator[ChildHost]:
    host = start_child_host("foundry", ["--port", "0"])
    try:
        yield host
    finally:
        host.stop()


def test_hosts_against_the_sim_names_flavour_models_and_a_one_token_chat() -> None:
    with sim_host("--ttft-ms", "30", "--itl-ms", "5", "--model", "m-one", "--model", "m-two") as sim:
        before = sim_stats(sim.base_url)
        proc = harness("hosts", sim.base_url, timeout=60)
        after = sim_stats(sim.base_url)
        models = listed_models(sim.base_url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == sim.base_url
    assert "  flavour: sim" in lines
    assert f"  models ({len(models)}): {', '.join(models)}" in lines and models == ["m-one", "m-two"]
    (chat,) = [m for line in lines if (m := CHAT_LINE.match(line))]
    # With no --model, the chat goes to the host's first model.
    assert chat["model"] == "m-one"
    # The sim answers the first token 30 ms after the request, never sooner: the printed figure is
    # in milliseconds (a µs/s slip lands 1000x off). One sample on a loaded machine: 70 ms of slack.
    assert 29.5 <= float(chat["ttft"]) < 100
    assert float(chat["ttft"]) <= float(chat["total"]) < 100
    # One chat of one token, as the host counted it.
    assert after["chat_requests"] - before["chat_requests"] == 1
    assert after["tokens"] - before["tokens"] == 1
    assert "Traceback" not in proc.stdout + proc.stderr


def test_hosts_probe_against_the_sim_compares_three_policies_side_by_side() -> None:
    requests, max_tokens = 4, 8
    with sim_host("--ttft-ms", "30", "--itl-ms", "5") as sim:
        before = sim_stats(sim.base_url)
        proc = harness(
            "hosts",
            sim.base_url,
            "--probe",
            "--requests",
            str(requests),
            "--max-tokens",
            str(max_tokens),
            timeout=60,
        )
        after = sim_stats(sim.base_url)
    assert proc.returncode == 0, proc.stderr
    rows = policy_rows(proc.stdout)
    assert list(rows) == ["reuse", "new", "reuse-quickack"]
    for policy, row in rows.items():
        assert (int(row["ok"]), int(row["n"])) == (requests, requests), policy
        # The sim's exact timing, two-sided: TTFT 30 ms, tokens every 5 ms, about one token per
        # read (it sends each event on its own with TCP_NODELAY; a busy client may read two at once,
        # a server holding writes until ACK would give all 8 in one or two reads). Medians of 4:
        # 20 ms of slack for a loaded machine, less than the +40 ms a delayed ACK would add; TPOT
        # within a factor that a unit slip or a per-stream (not per-token) figure leaves.
        assert 29.5 <= float(row["ttft"]) < 50, (policy, row)
        assert 3.0 <= float(row["tpot"]) < 8.0, (policy, row)
        assert float(row["ttfb"]) < float(row["ttft"])
        assert 1.0 <= float(row["tpr"]) < 2.0
        # Only `new` opens a connection for every measured request.
        assert (row["connect"] != "-") == (policy == "new"), (policy, row)
    # The sim leaves no Nagle artefact, and the probe does not claim one. (Its "does not change"
    # verdict needs the two medians within 2 ms, which a loaded machine can miss: not asserted.)
    assert "reuse - reuse-quickack: TTFT" in proc.stdout
    assert "holds small writes until ACK" not in proc.stdout
    # The host's own count: the one-token chat, then per policy one opening stream and `requests`
    # measured ones, each of `max_tokens` tokens.
    streams = 3 * (requests + 1)
    assert after["chat_requests"] - before["chat_requests"] == 1 + streams
    assert after["tokens"] - before["tokens"] == 1 + streams * max_tokens


@pytest.mark.foundry
def test_hosts_and_probe_against_the_embedded_foundry_host(foundry: ChildHost) -> None:
    proc = harness("hosts", foundry.base_url, "--probe", "--requests", "3", "--max-tokens", "16", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    models = listed_models(foundry.base_url)
    assert lines[0] == foundry.base_url
    assert "  flavour: foundry" in lines
    assert f"  models ({len(models)}): {', '.join(models)}" in lines and TINY_ID in models
    # Foundry Local says which models are loaded; the embedded host loads the one it serves.
    assert f"  loaded: {TINY_ID}" in lines
    (chat,) = [m for line in lines if (m := CHAT_LINE.match(line))]
    assert chat["model"] == TINY_ID and 0 < float(chat["ttft"]) <= float(chat["total"])
    rows = policy_rows(proc.stdout)
    assert list(rows) == ["reuse", "new", "reuse-quickack"]
    for policy, row in rows.items():
        assert (row["ok"], row["n"]) == ("3", "3"), policy
        assert 0 < float(row["ttfb"]) <= float(row["ttft"]), (policy, row)
    assert "reuse - reuse-quickack: TTFT" in proc.stdout


@pytest.mark.foundry
def test_hosts_with_a_model_alias_and_with_an_unknown_model(foundry: ChildHost) -> None:
    ok = harness("hosts", foundry.base_url, "--model", "tiny-chat", timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert any((m := CHAT_LINE.match(line)) and m["model"] == TINY_ID for line in ok.stdout.splitlines())
    bad = harness("hosts", foundry.base_url, "--model", "no-such-model", timeout=60)
    assert bad.returncode == 2
    assert "  chat: no model matches no-such-model" in bad.stdout.splitlines()
    assert "Traceback" not in bad.stdout + bad.stderr


def test_unreachable_host_is_one_line_naming_it_exit_2_no_traceback() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    proc = harness("hosts", url, "--timeout", "2", timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if "unusable" in line]
    assert url in line and "not reachable" in line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("notaurl", "expected a URL like http://127.0.0.1:5273/v1"),
        ("ftp://127.0.0.1/v1", "expected a URL like http://127.0.0.1:5273/v1"),
    ],
)
def test_not_a_url_is_one_line_naming_it_exit_2(url: str, expected: str) -> None:
    proc = harness("hosts", url, "--timeout", "2", timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if "unusable" in line]
    assert url in line and expected in line


def test_a_host_that_is_not_openai_compatible_is_named_so() -> None:
    # The sim answers, but not at this path: a wrong base URL, as users type it.
    with sim_host() as sim:
        url = sim.base_url.rsplit("/v1", 1)[0] + "/api"
        proc = harness("hosts", url, "--timeout", "2", timeout=30)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if "unusable" in line]
    assert url in line and "expected an OpenAI-compatible API" in line


def test_one_good_and_one_unreachable_host_reports_both() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    with sim_host("--ttft-ms", "5") as sim:
        proc = harness("hosts", url, sim.base_url, "--timeout", "2", timeout=30)
    # Each host gets its own verdict; the command fails only when no host is usable.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == url and url in lines[1] and "unusable" in lines[1]
    assert lines[2] == sim.base_url and "  flavour: sim" in lines
    assert sum(1 for line in lines if CHAT_LINE.match(line)) == 1
