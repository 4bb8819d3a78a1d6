"""Secrets: each host's API key goes to that host only, and nowhere else (files, logs, output).
And the web UI: loopback unless told otherwise, a login when it listens elsewhere."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from harness_helpers import REPO, harness, last_line, sim_host

pytestmark = pytest.mark.slow

KEY_A = "sk-test-ALPHA-7f3c9e1b2d"
KEY_B = "sk-test-BRAVO-0a4e8c6f5b"


@contextmanager
def recording_proxy(upstream_port: int) -> Iterator[tuple[int, list[bytes]]]:
    """A TCP proxy on 127.0.0.1 that keeps every byte clients send (to see the headers)."""
    seen: list[bytes] = []
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket, keep: bool) -> None:
        try:
            while data := src.recv(65536):
                if keep:
                    seen.append(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = lsock.accept()
            except (TimeoutError, OSError):
                continue
            server = socket.create_connection(("127.0.0.1", upstream_port))
            threading.Thread(target=pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=pump, args=(server, client, False), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()[1], seen
    finally:
        stop.set()
        t.join(2)
        lsock.close()


def test_api_keys_go_only_to_their_host_and_never_to_disk(tmp_path: Path) -> None:
    key_file = tmp_path / "b.key"
    key_file.write_text(KEY_B + "\n")
    with sim_host("--ttft-ms", "2", "--itl-ms", "1") as a, sim_host("--ttft-ms", "2", "--itl-ms", "1") as b:
        port_a = int(a.base_url.split(":")[2].split("/")[0])
        port_b = int(b.base_url.split(":")[2].split("/")[0])
        with recording_proxy(port_a) as (pa, seen_a), recording_proxy(port_b) as (pb, seen_b):
            scenario = tmp_path / "s.yaml"
            scenario.write_text(
                "hosts:\n"
                f"  - {{url: 'http://127.0.0.1:{pa}/v1', api_key_env: HX_KEY_A}}\n"
                f"  - {{url: 'http://127.0.0.1:{pb}/v1', api_key_file: '{key_file}'}}\n"
                "request: {max_tokens: 4}\n"
                "load: {users: 2, duration: 2s, stop_timeout: 5s}\n"
            )
            proc = harness("run", str(scenario), "--out", str(tmp_path / "out"), env={"HX_KEY_A": KEY_A})
    assert proc.returncode == 0, proc.stderr
    sent_a, sent_b = b"".join(seen_a), b"".join(seen_b)
    assert f"Authorization: Bearer {KEY_A}".encode() in sent_a and KEY_B.encode() not in sent_a
    assert f"Authorization: Bearer {KEY_B}".encode() in sent_b and KEY_A.encode() not in sent_b
    run_dir = Path(last_line(proc.stdout))
    leaks = [
        str(p)
        for p in run_dir.rglob("*")
        if p.is_file() and (KEY_A.encode() in p.read_bytes() or KEY_B.encode() in p.read_bytes())
    ]
    assert not leaks, f"secret written to {leaks}"
    assert KEY_A not in proc.stdout + proc.stderr and KEY_B not in proc.stdout + proc.stderr
    assert "HX_KEY_A" in (run_dir / "manifest.json").read_text(), "the manifest names where the key came from"


def test_missing_key_variable_is_bad_input(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("hosts: [{url: 'http://127.0.0.1:9/v1', api_key_env: HX_NOT_SET}]\n")
    proc = harness("run", str(scenario), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "HX_NOT_SET is not set" in proc.stderr and "Traceback" not in proc.stderr


def test_web_ui_beyond_loopback_needs_a_password(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_WEB_PASSWORD"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--web", "--web-host", "0.0.0.0", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 2 and "HARNESS_WEB_PASSWORD" in proc.stderr, proc.stderr


def _netns_ok() -> bool:
    r = subprocess.run(["ip", "netns", "add", "hxweb-probe"], capture_output=True)
    subprocess.run(["ip", "netns", "del", "hxweb-probe"], capture_output=True)
    return r.returncode == 0


def test_web_login_on_a_non_loopback_address(tmp_path: Path) -> None:
    if not _netns_ok():
        pytest.skip("network namespaces are not permitted here")
    ns = f"hxweb{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
            ["addr", "add", "10.78.0.1/24", "dev", "d0"],
            ["link", "set", "d0", "up"],
            ["link", "set", "d1", "up"],
        ):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        env = {**os.environ, "HARNESS_WEB_PASSWORD": "s3cret-pw"}
        run = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-m",
                "harness",
                "run",
                "--web",
                "--web-host",
                "10.78.0.1",
                "--web-port",
                "8099",
                "--out",
                str(tmp_path),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        probe = (
            "import http.cookiejar, urllib.request, urllib.parse, time\n"
            "base = 'http://10.78.0.1:8099'\n"
            "for _ in range(150):\n"
            "    try:\n"
            "        urllib.request.urlopen(base + '/login', timeout=2); break\n"
            "    except Exception: time.sleep(0.2)\n"
            "class NoRedirect(urllib.request.HTTPRedirectHandler):\n"
            "    def redirect_request(self, *a, **k): return None\n"
            "plain = urllib.request.build_opener(NoRedirect)\n"
            "try:\n"
            "    r = plain.open(base + '/'); print('ROOT', r.status)\n"
            "except urllib.error.HTTPError as e: print('ROOT', e.code, e.headers.get('Location'))\n"
            "jar = http.cookiejar.CookieJar()\n"
            "op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))\n"
            "for pw in ('wrong', 's3cret-pw'):\n"
            "    data = urllib.parse.urlencode({'username': 'harness', 'password': pw}).encode()\n"
            "    r = op.open(base + '/harness-login', data)\n"
            "    print('LOGIN', pw, r.url)\n"
        )
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=90,
        )
        run.terminate()
        run.communicate(timeout=60)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    lines = out.stdout.splitlines()
    assert any(line.startswith("ROOT 302") and "login" in line for line in lines), out.stdout + out.stderr
    assert any(line.startswith("LOGIN wrong") and line.endswith("/login") for line in lines), lines
    assert any(line.startswith("LOGIN s3cret-pw") and not line.endswith("/login") for line in lines), lines
