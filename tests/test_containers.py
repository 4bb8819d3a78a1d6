"""The deployment files: the image, the compose fleet (real containers) and the Kubernetes manifests.

Container tests (marker `containers`) build the image with `scripts/build-image.sh` and run
`deploy/compose.yaml` as users do: a simulated host, a master and workers, all on the host network.
They need a Docker daemon; as root one is started for the session (and stopped after) when none
runs. Where none can be had (no docker.io, not root, the daemon refuses to start) they skip with
the reason. The manifest checks need no engine: every file in deploy/k8s/ is validated offline
against Kubernetes' schemas (kubernetes-validate bundles them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from harness_helpers import ARTIFACTS, REPO, records

from harness.scenario import load_scenario

COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
K8S = REPO / "deploy" / "k8s"
IMAGE = "llm-load-harness:dev"
#: The user the image runs as; the results folder must be writable by it.
IMAGE_UID = 10001


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _timing(key: str, seconds: float) -> None:
    """Keep the container tests' durations (image build, runs) for the CI-time figure."""
    path = ARTIFACTS / "containers-timing.json"
    ARTIFACTS.mkdir(exist_ok=True)
    data = orjson.loads(path.read_bytes()) if path.exists() else {}
    data[key] = round(seconds, 1)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


# --- the engine and the image ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Iterator[list[str]]:
    """The compose command, with a Docker daemon answering and the image built."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI (scripts/install-system-deps.sh installs docker.io as root)")
    started = subprocess.run(
        ["bash", str(REPO / "scripts" / "start-dockerd.sh")], capture_output=True, text=True, timeout=60
    )
    if started.returncode != 0:
        pytest.skip(f"no Docker daemon: {started.stderr.strip()}")
    dockerd_pid = int(started.stdout.strip()) if started.stdout.strip() else None
    try:
        if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
            cmd = ["docker", "compose"]
        elif shutil.which("docker-compose"):
            cmd = ["docker-compose"]
        else:
            pytest.skip("no docker compose (apt-get install docker-compose)")
        t0 = time.monotonic()
        built = subprocess.run(
            ["bash", str(REPO / "scripts" / "build-image.sh")],
            capture_output=True,
            text=True,
            timeout=1200,
            cwd=REPO,
        )
        if built.returncode == 2:
            pytest.skip(built.stderr.strip().splitlines()[-1])
        assert built.returncode == 0, f"make image failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
        _timing("image_build_s", time.monotonic() - t0)
        size = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE], capture_output=True, text=True
        )
        _timing("image_size_mb", int(size.stdout.strip()) / 1e6)
        yield cmd
    finally:
        if dockerd_pid is not None:  # we started it: leave the machine as we found it
            os.kill(dockerd_pid, signal.SIGTERM)
            for _ in range(60):
                try:
                    os.kill(dockerd_pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.5)


class Fleet:
    """One compose project: its own name, ports, scenario and results folders on this machine."""

    def __init__(self, compose: list[str], tmp: Path, scenario: str, run_id: str) -> None:
        self.compose = compose
        self.project = f"hxt{os.getpid()}{run_id}"
        self.results = tmp / "results"
        self.results.mkdir()
        if os.geteuid() == 0:
            os.chown(self.results, IMAGE_UID, IMAGE_UID)
        else:
            self.results.chmod(0o777)
        scenarios = tmp / "scenarios"
        scenarios.mkdir()
        (scenarios / "s.yaml").write_text(scenario)
        self.sim_port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.sim_port}/v1"
        self.run_dir = self.results / run_id
        self.env = {
            **os.environ,
            "HARNESS_SCENARIOS": str(scenarios),
            "HARNESS_SCENARIO": "s.yaml",
            "HARNESS_RESULTS": str(self.results),
            "HARNESS_MASTER_PORT": str(_free_port()),
            "HARNESS_SIM_PORT": str(self.sim_port),
            "HARNESS_SIM_ARGS": "--ttft-ms 20 --itl-ms 5",
            "HARNESS_RUN_ARGS": f"--host {self.base_url} --run-id {run_id}",
        }

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        proc = subprocess.run(
            [*self.compose, "-p", self.project, "-f", str(COMPOSE_FILE), "--profile", "sim", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, f"compose {' '.join(args)}: {proc.stderr[-2000:]}"
        return proc.stdout

    def sim_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.sim_port}/sim/stats", timeout=5) as r:
            return dict(orjson.loads(r.read()))

    def start_sim(self) -> None:
        self("up", "-d", "sim")
        deadline = time.monotonic() + 60
        while True:
            try:
                self.sim_stats()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the sim container never answered:\n{self('logs', 'sim')}"
                    ) from None
                time.sleep(0.3)

    def start_run(self, workers: int) -> None:
        self.env["HARNESS_WORKERS"] = str(workers)
        self("up", "-d", "--scale", f"worker={workers}", "master", "worker")

    def container_ids(self, service: str) -> list[str]:
        return self("ps", "-q", service).split()

    def wait_master(self, timeout: float) -> int:
        (master,) = self.container_ids("master")
        code = subprocess.run(["docker", "wait", master], capture_output=True, text=True, timeout=timeout)
        return int(code.stdout.strip())

    def down(self) -> None:
        self("down", "--remove-orphans", "-t", "5", check=False)


@pytest.fixture
def fleet(compose: list[str], tmp_path: Path) -> Iterator[Any]:
    made: list[Fleet] = []

    def make(scenario: str, run_id: str) -> Fleet:
        f = Fleet(compose, tmp_path, scenario, run_id)
        made.append(f)
        return f

    yield make
    for f in made:
        # The containers' output outlives them, for a failure's post-mortem.
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"compose-{f.project}.log").write_text(f("logs", "--no-color", check=False))
        f.down()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _spool_pid(path: Path) -> int:
    """The pid in a worker's spool name, `<hostname>-<pid>.records.jsonl`."""
    return int(path.name.removesuffix(".records.jsonl").rsplit("-", 1)[1])


SCENARIO = (
    "name: compose\n"
    "request: {max_tokens: 32}\n"
    "load: {users: 6, spawn_rate: 6, duration: %s, stop_timeout: 10s}\n"
    "warmup: {requests: 1}\n"
)


@pytest.mark.containers
@pytest.mark.slow
def test_compose_master_and_three_workers_record_every_request(fleet: Any) -> None:
    f = fleet(SCENARIO % "20s", "three")
    f.start_sim()
    t0 = time.monotonic()
    f.start_run(workers=3)
    code = f.wait_master(timeout=240)
    _timing("compose_3_workers_20s_run_s", time.monotonic() - t0)
    assert code == 0, f("logs", "master")
    stats = f.sim_stats()
    recs = records(f.run_dir)
    measured = [r for r in recs if not r["warmup"]]
    senders = Counter(r["worker"] for r in measured)
    assert len(senders) == 3, f"records from 3 worker containers, got {dict(senders)}"
    assert len(list((f.run_dir / "spool").glob("*.records.jsonl"))) == 3
    # Independent count: every chat request the host answered has exactly one record (warm-up
    # included, sent by the master itself), none twice.
    assert len(recs) == stats["chat_requests"] > 0, (len(recs), stats)
    assert len({(r["worker"], r["seq"]) for r in recs}) == len(recs)
    assert all(r["ok"] for r in measured)
    manifest = orjson.loads((f.run_dir / "manifest.json").read_bytes())
    assert manifest["state"] == "complete" and manifest["problems"] == []


@pytest.mark.containers
@pytest.mark.slow
def test_killed_worker_container_loses_no_record_it_wrote(fleet: Any) -> None:
    f = fleet(SCENARIO % "12s", "kill")
    f.start_sim()
    f.start_run(workers=2)
    # Kill a worker once its spool on the shared volume holds records, well before the end.
    victim = f.container_ids("worker")[0]
    spool = None
    deadline = time.monotonic() + 90
    while spool is None or len(_lines(spool)) < 20:
        assert time.monotonic() < deadline, f"the victim never spooled 20 records:\n{f('logs')}"
        time.sleep(0.3)
        # Its processes now: the Locust process that writes the spool starts after the container.
        top = subprocess.run(["docker", "top", victim, "-eo", "pid"], capture_output=True, text=True)
        pids = {int(p) for p in top.stdout.split()[1:] if p.isdigit()}
        spools = list((f.run_dir / "spool").glob("*.records.jsonl")) if f.run_dir.is_dir() else []
        spool = next((p for p in spools if _spool_pid(p) in pids), None)
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    killed_ns = time.time_ns()
    code = f.wait_master(timeout=180)
    assert code == 0, f("logs", "master")
    written = _lines(spool)
    assert written, "the killed worker's spool is on the host"
    in_run = {(r["worker"], r["seq"]) for r in records(f.run_dir)}
    lost = [(r["worker"], r["seq"]) for r in written if (r["worker"], r["seq"]) not in in_run]
    assert lost == [], (
        f"{len(lost)} of {len(written)} records the killed worker wrote are not in records.jsonl"
    )
    # The run went on without it: the other worker kept sending until the end.
    victim_id = written[0]["worker"]
    later = [
        r for r in records(f.run_dir) if r["worker"] != victim_id and r["sent_unix_ns"] > killed_ns + 3e9
    ]
    assert later, "the surviving worker sent nothing after the kill"


# --- static checks of the deployment files (no engine needed) ------------------------------------


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in _k8s_docs() if d["kind"] == kind]


def test_k8s_manifests_validate_against_the_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate ('.[test]')")
    docs = _k8s_docs()
    assert {d["kind"] for _, d in docs} >= {
        "Job",
        "Service",
        "Deployment",
        "ConfigMap",
        "PersistentVolumeClaim",
    }
    for name, doc in docs:
        try:
            kv.validate(doc, "1.30.0", strict=True)
        except Exception as exc:  # kubernetes-validate's own error or jsonschema's, as it goes
            where = "/".join(str(p) for p in getattr(exc, "path", []))
            msg = getattr(exc, "message", str(exc))
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {msg} at {where or '.'}")


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_k8s_master_service_workers_and_scenario_fit_together(tmp_path: Path) -> None:
    (job,) = _by_kind("Job")
    (svc,) = _by_kind("Service")
    (workers,) = _by_kind("Deployment")
    (cm,) = _by_kind("ConfigMap")
    master = _container(job)
    worker = _container(workers)
    assert {p["port"] for p in svc["spec"]["ports"]} == {5557, 8089}
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items(), "the Service selects the master pod"
    assert not svc["spec"]["selector"].items() <= workers["spec"]["template"]["metadata"]["labels"].items()
    args = worker["args"]
    assert args[args.index("--master-host") + 1] == svc["metadata"]["name"]
    margs = master["args"]
    assert int(margs[margs.index("--expect-workers") + 1]) == workers["spec"]["replicas"]
    assert master["image"] == worker["image"]
    # The scenario in the ConfigMap is one the harness accepts, and it names its key's variable only.
    (text,) = cm["data"].values()
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(text)
    sc = load_scenario(scenario_file, {})
    key_vars = {h.api_key_env for h in sc.hosts if h.api_key_env}
    assert key_vars, "the example shows where a key comes from"
    for c in (master, worker):
        env = {e["name"]: e for e in c.get("env", [])}
        for var in key_vars:
            assert "value" not in env[var] and env[var]["valueFrom"]["secretKeyRef"], f"{var} from a Secret"
    # Same results path on master and workers: workers spool into the run folder on the volume.
    mounts = {m["mountPath"]: m["name"] for m in master["volumeMounts"]}
    wmounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    assert margs[margs.index("--out") + 1] in mounts and margs[margs.index("--out") + 1] in wmounts


def test_compose_file_shares_the_results_path_and_names_workers_apart() -> None:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    svc = doc["services"]
    anchor = doc["x-harness"]
    assert "--out /results" in svc["master"]["command"]
    assert any(v.endswith(":/results") for v in anchor["volumes"])
    for name in ("master", "worker", "sim"):
        assert svc[name].get("network_mode", anchor["network_mode"]) == "host"
    # hostname:pid names a worker's records; on the host network only the host's pids tell them apart.
    assert svc["worker"]["pid"] == "host"
