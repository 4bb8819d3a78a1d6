"""Finding and preparing Foundry Local hosts: endpoints, flavours, aliases, loading models."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from harness_helpers import harness, last_line, records

from harness.discovery import alias_candidates, discover_foundry_endpoints, load_model, loaded_models
from harness.hosts import normalize_base_url, probe_host, resolve_model

IDS = [
    "qwen2.5-0.5b-instruct-generic-cpu:3",
    "qwen2.5-0.5b-instruct-generic-cpu:4",
    "qwen2.5-0.5b-instruct-cuda-gpu:4",
    "qwen2.5-0.5b-instruct-qnn-npu:1",
    "phi-4-mini-instruct-generic-cpu:1",
]


def test_resolution_rule() -> None:
    assert resolve_model("qwen2.5-0.5b-instruct-generic-cpu:3", IDS) == "qwen2.5-0.5b-instruct-generic-cpu:3"
    assert resolve_model("qwen2.5-0.5b-instruct-generic-cpu", IDS) == "qwen2.5-0.5b-instruct-generic-cpu:4"
    assert resolve_model("qwen2.5-0.5b", IDS) == "qwen2.5-0.5b-instruct-qnn-npu:1", (
        "NPU before GPU before CPU"
    )
    assert resolve_model("qwen2.5-0.5b", IDS[:3]) == "qwen2.5-0.5b-instruct-cuda-gpu:4"
    assert resolve_model("phi-4-mini", IDS) == "phi-4-mini-instruct-generic-cpu:1"
    assert resolve_model("mistral-7b", IDS) is None


def test_alias_candidates() -> None:
    assert alias_candidates("tiny-chat-generic-cpu:1", "tiny-chat-generic-cpu:1") == [
        "tiny-chat",
        "tiny-chat-generic-cpu",
    ]
    assert alias_candidates("qwen2.5-0.5b", "qwen2.5-0.5b-instruct-cuda-gpu:4")[0] == "qwen2.5-0.5b"


def test_base_url_with_or_without_v1() -> None:
    assert normalize_base_url("http://127.0.0.1:5273") == "http://127.0.0.1:5273/v1"
    assert normalize_base_url("http://127.0.0.1:5273/v1/") == "http://127.0.0.1:5273/v1"
    assert normalize_base_url("http://h:1/catalogs/local/v1") == "http://h:1/catalogs/local/v1"


def test_endpoints_from_env_and_foundry_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in `foundry` CLI printing what the real one prints: the service URL.
    cli = tmp_path / "foundry"
    cli.write_text(
        "#!/bin/sh\necho '🟢 Model management service is running on http://127.0.0.1:5273/openai/status'\n"
    )
    cli.chmod(cli.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FOUNDRY_LOCAL_ENDPOINT", "http://127.0.0.1:6000/v1")
    assert discover_foundry_endpoints() == ["http://127.0.0.1:6000/v1", "http://127.0.0.1:5273/v1"]


@pytest.mark.slow
@pytest.mark.foundry
def test_loading_an_unloaded_model_on_a_real_foundry_host(tmp_path: Path) -> None:
    from harness.client import Connection
    from harness.servers.foundry import start_foundry_host

    host = start_foundry_host()
    try:
        info = probe_host(host.base_url)
        assert info.flavour == "foundry" and info.models == ["tiny-chat-generic-cpu:1"]
        root = host.base_url.split("/catalogs")[0]
        conn = Connection(root)
        assert conn.get("/catalogs/local/models/unload/tiny-chat")[0] == 200
        conn.close()
        assert loaded_models(info) == []
        scenario = tmp_path / "s.yaml"
        scenario.write_text(
            f"hosts: [{{url: '{host.base_url}', load_models: true, models: [tiny-chat]}}]\n"
            "request: {max_tokens: 8}\nload: {users: 1, duration: 2s}\n"
        )
        proc = harness("run", str(scenario), "--out", str(tmp_path), "--no-report")
        assert proc.returncode == 0, proc.stderr
        assert loaded_models(info) == ["tiny-chat-generic-cpu:1"]
        assert any(r["ok"] for r in records(Path(last_line(proc.stdout))))
        assert load_model(info, "tiny-chat", "tiny-chat-generic-cpu:1")[0]
    finally:
        host.stop()
