"""Distributed runs with real processes: a master and workers, many hosts, separate networks."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from harness_helpers import FINAL_STATS, REPO, embedded_sim_stats, final_stats, harness, last_line, records

pytestmark = pytest.mark.slow


def foundry_own_ttft_ms() -> float:
    """This machine's Foundry Local host's own TTFT (median, connections that ACK at once): the
    reference the run's Foundry figures are judged against, measured here, not assumed."""
    from harness.probe import probe_policies
    from harness.servers.foundry import start_foundry_host

    host = start_foundry_host()
    try:
        figs = probe_policies(host.base_url, host.models[0], requests=8, max_tokens=16)
    finally:
        host.stop()
    own = [f.ttft_ms_p50 for f in figs if f.policy in ("new", "reuse-quickack")]
    assert None not in own
    return statistics.median(own)  # type: ignore[arg-type]


def test_two_workers_three_sims_and_a_foundry_host(tmp_path: Path) -> None:
    own = foundry_own_ttft_ms()
    scenario = tmp_path / "fleet.yaml"
    scenario.write_text(
        "name: fleet\n"
        "hosts:\n"
        "  - {embedded: sim, name: fast, options: {ttft_ms: 20, itl_ms: 2}}\n"
        "  - {embedded: sim, name: mid, options: {ttft_ms: 60, itl_ms: 2}}\n"
        "  - {embedded: sim, name: slow, options: {ttft_ms: 120, itl_ms: 2}}\n"
        "  - {embedded: foundry, name: foundry}\n"
        "request: {max_tokens: 16}\n"
        "load: {users: 8, duration: 8s, stop_timeout: 10s}\n"
    )
    proc = harness("run", str(scenario), "--workers", "2", "--out", str(tmp_path), timeout=240)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(last_line(proc.stdout))
    all_recs = records(run_dir)
    recs = [r for r in all_recs if not r["warmup"]]
    counts = orjson.loads((run_dir / "locust_counts.json").read_bytes())["counts"]
    assert counts["E2E"]["requests"] == len(recs), "every request Locust counted on the master has a record"
    assert len({r["worker"] for r in recs}) == 2
    manifest = orjson.loads((run_dir / "manifest.json").read_bytes())
    url_of = {h["label"]: h["url"] for h in manifest["hosts"]}
    assert set(url_of) == {"fast", "mid", "slow", "foundry"}
    # Each sim's own count of the chat requests it received (from its log) against the records.
    host_stats = embedded_sim_stats(run_dir)
    for i, label in enumerate(("fast", "mid", "slow")):
        got = sum(1 for r in all_recs if r["host"] == url_of[label])
        assert got == host_stats[i]["chat_requests"], (label, got, host_stats[i])
    per_host = Counter(r["host"] for r in recs)
    assert set(per_host) == set(url_of.values()), "users spread over every host"
    models = {h: {r["model"] for r in recs if r["host"] == h} for h in per_host}
    assert models[url_of["foundry"]] == {"tiny-chat-generic-cpu:1"}, "each host gets only models it serves"
    summary = orjson.loads((run_dir / "summary.json").read_bytes())
    ttft = {g["key"]["host"]: g["ttft_ms_p50"] for g in summary["by_host_model"]}
    for label, expected in (("fast", 20), ("mid", 60), ("slow", 120)):
        got = ttft[url_of[label]]
        assert expected - 0.5 <= got < expected + 15, (label, got)
    # Foundry: judged against its own speed measured above on this machine. Under the run it shares
    # two cores with three sims, a master and two workers and serves ~2 users at once, so its TTFT
    # may grow a few times, never shrink below half; 15 ms more covers a busy scheduler. Whether the
    # run's figures sit on the 40 ms delayed-ACK floor (the default policy must avoid it) is judged by
    # the diagnostics from the records themselves, against the group's fresh connections.
    got = ttft[url_of["foundry"]]
    assert 0.5 * own - 0.5 <= got <= 3 * own + 15, (got, own)
    foundry_diag = [d for d in summary["diagnostics"] if d["key"].get("host") == url_of["foundry"]]
    assert foundry_diag and not any(f["pattern"] == "nagle" for d in foundry_diag for f in d["findings"])
    assert {w["worker"] for w in manifest["workers"]} == {r["worker"] for r in recs}


# --- separate network namespaces: master, workers and host on a bridge, as on separate machines

NET = "10.77.0"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def namespaces(names: list[str]) -> Iterator[dict[str, str]]:
    """One namespace per name, each with one address on a bridge living in its own namespace."""
    tag = f"hx{os.getpid() % 10000}"
    switch = f"{tag}-sw"
    made: list[str] = []
    addrs = {}
    try:
        _ip("netns", "add", switch)
        made.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, name in enumerate(names, start=1):
            ns = f"{tag}-{name}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", f"{tag}v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", f"{tag}v{i}", "netns", switch)
            _ip("-n", switch, "link", "set", f"{tag}v{i}", "master", "br0", "up")
            addrs[name] = f"{NET}.{i}"
            _ip("-n", ns, "addr", "add", f"{addrs[name]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield {name: f"{tag}-{name}" for name in names} | {f"{name}_ip": addrs[name] for name in names}
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _netns_allowed() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = subprocess.run(["ip", "netns", "add", "hxprobe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"network namespaces are not permitted here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "hxprobe"], capture_output=True)
    return None


def in_ns(ns: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "harness", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        **kw,  # type: ignore[arg-type]
    )


def test_master_workers_and_host_on_separate_networks(tmp_path: Path) -> None:
    why = _netns_allowed()
    if why:
        pytest.skip(why)
    with namespaces(["master", "w1", "w2", "host"]) as ns:
        host = in_ns(
            ns["host"],
            "serve",
            "sim",
            "--host",
            ns["host_ip"],
            "--port",
            "8000",
            "--ttft-ms",
            "15",
            "--itl-ms",
            "2",
        )
        workers = []
        try:
            line = host.stdout.readline() if host.stdout else ""
            ready = orjson.loads(line)
            assert ready["base_url"] == f"http://{ns['host_ip']}:8000/v1"
            master = in_ns(
                ns["master"],
                "run",
                "--host",
                ready["base_url"],
                "--master",
                "--expect-workers",
                "2",
                "--master-bind-host",
                ns["master_ip"],
                "--users",
                "4",
                "--duration",
                "5s",
                "--max-tokens",
                "16",
                "--stop-timeout",
                "10s",
                "--out",
                str(tmp_path),
                "--run-id",
                "netns",
            )
            time.sleep(1.0)
            workers = [in_ns(ns[w], "worker", "--master-host", ns["master_ip"]) for w in ("w1", "w2")]
            out, err = master.communicate(timeout=120)
        finally:
            for p in [*workers, host]:
                p.terminate()
                p.wait(10)
            _, host_err = host.communicate(timeout=10)
    assert master.returncode == 0, err
    run_dir = Path(last_line(out))
    recs = [r for r in records(run_dir) if not r["warmup"]]
    counts = orjson.loads((run_dir / "locust_counts.json").read_bytes())["counts"]
    assert counts["E2E"]["requests"] == len(recs) > 0
    # The host's own count, from the line it wrote when stopped: one record per request it received.
    (line,) = [x for x in host_err.splitlines() if x.startswith(FINAL_STATS)]
    assert len(records(run_dir)) == final_stats(line)["chat_requests"]
    assert len({r["worker"] for r in recs}) == 2, "both workers on their own networks sent load"
    assert all(r["host"] == f"http://{ns['host_ip']}:8000/v1" and r["ok"] for r in recs)
