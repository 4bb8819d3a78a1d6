"""A scenario's `workload` section in a run: which token counter, and the same workload in every process.

`harness run` calls `plan_workload` once, after probing the hosts and before the warm-up. It picks
how lengths are known, in this order: the scenario's `workload.tokenizer` (a model folder or a
`tokenizer.json`), else the model folder of the embedded Foundry host (`--model-dir`, default the
shipped tiny model), else a calibration sent once through the one send path (`harness.send`) to the
first host and model, fitted against the host's own `usage.prompt_tokens`. It builds the workload
once (a bad dataset file stops the run here, exit 2, naming the file and line) and returns what
the plan carries and the manifest states: the counter's source, a calibration's fitted numbers, and
`Workload.describe()` (including the chat template's constant offset).

Every Locust process calls `workload_from_plan`: it rebuilds the same `Workload` from the plan alone
(the plan reaches workers on other machines inside Locust's spawn message), so worker k of n builds
exactly its share of the requests one process would build. No Locust or gevent here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.plan import Plan, Target, read_api_key
from harness.scenario import Scenario
from harness.workload import Calibration, Counter, ModelTokenizer, Workload, build_workload, calibrate
from harness.workload.config import WorkloadSpec

__all__ = ["check_workload_files", "plan_workload", "token_counter", "workload_from_plan"]

_PACKAGE = Path(__file__).resolve().parent


def check_workload_files(sc: Scenario) -> None:
    """Before anything starts: the dataset and tokenizer files exist and parse (exit 2 naming them)."""
    spec = sc.workload
    if spec is None:
        return
    if spec.tokenizer is not None:
        ModelTokenizer.from_path(spec.tokenizer)
    if spec.dataset is not None:
        from harness.workload.datasets import load_dataset

        load_dataset(Path(spec.dataset.path), spec.dataset.format, field=spec.dataset.field)


def _embedded_model_dir(sc: Scenario, targets: list[Target]) -> Path | None:
    """The one model folder every host serves, when every host is an embedded Foundry host."""
    from harness.flavours import shipped_model_dir

    folders: set[Path] = set()
    for spec, t in zip(sc.hosts, targets, strict=False):
        if t.embedded != "foundry" or spec.options.get("alias"):
            return None
        dirs = spec.options.get("model_dir")
        dirs = [dirs] if isinstance(dirs, str) else list(dirs or [])
        if len(dirs) > 1:
            return None
        folders.add(Path(dirs[0]).expanduser().resolve() if dirs else shipped_model_dir())
    if len(folders) != 1:
        return None
    folder = folders.pop()
    return folder if (folder / "tokenizer.json").is_file() else None


def _needs_lengths(spec: WorkloadSpec) -> bool:
    """Whether requests must be built to a token length (synthetic text, a kept length range)."""
    return spec.input_tokens is not None or spec.shared_prefix is not None


def _calibrate_against(sc: Scenario, target: Target, run_id: str) -> Calibration:
    """Fit tokens per word and the template offset from a few requests through the send path."""
    from harness.client import Connection
    from harness.records import Record
    from harness.send import Request, Sender

    model = target.models[0]
    got: list[Record] = []
    sender = Sender(run_id, got.append)
    conn = Connection(
        target.url,
        policy=sc.connection,
        timeouts=sc.timeouts.timeouts(),
        api_key=read_api_key(target.api_key_env, target.api_key_file),
    )

    def probe(messages: list[dict[str, str]]) -> int:
        rec = sender.send(
            conn,
            Request(
                host=target.url,
                model=model,
                prompt_id="calibration",
                messages=messages,
                max_tokens=1,
                temperature=0.0,
                stream=False,
                warmup=True,
            ),
        )
        if not rec.ok:
            raise InputError(
                f"host {target.url}: calibration request to model {model} failed ({rec.error}: {rec.error_detail}); "
                "give the model's tokenizer as workload.tokenizer"
            )
        return rec.input_tokens if rec.input_tokens is not None else -1

    try:
        return calibrate(probe)
    finally:
        conn.close()


def token_counter(sc: Scenario, targets: list[Target], run_id: str) -> tuple[Counter | None, dict[str, Any]]:
    """How prompt lengths are counted, and what the manifest says of it: the scenario's tokenizer,
    else the embedded Foundry host's model folder, else (only when lengths are asked for) a
    calibration sent once through the send path to the first target; `harness run` and `harness bench`."""
    spec = sc.workload
    assert spec is not None
    if spec.tokenizer is not None:
        return ModelTokenizer.from_path(spec.tokenizer), {"counter": "tokenizer", "tokenizer": spec.tokenizer}
    folder = _embedded_model_dir(sc, targets)
    if folder is not None:
        return ModelTokenizer.from_path(folder), {
            "counter": "tokenizer",
            "tokenizer": str(folder),
            "tokenizer_from": "the embedded Foundry host's model folder",
        }
    if _needs_lengths(spec) and targets and targets[0].models:
        cal = _calibrate_against(sc, targets[0], run_id)
        return cal, {
            "counter": "calibrated",
            "calibrated_against": {"host": targets[0].url, "model": targets[0].models[0]},
            "calibration": {
                "tokens_per_word": cal.tokens_per_word,
                "offset": cal.offset,
                "probes": [list(p) for p in cal.probes],
            },
        }
    return None, {"counter": "none"}


def _build(sc: Scenario, counter: Counter | None, prompts: list[dict[str, Any]]) -> Workload:
    assert sc.workload is not None
    return build_workload(
        sc.workload,
        seed=sc.seed,
        default_max_tokens=sc.request.max_tokens,
        counter=counter,
        prompts=prompts,
    )


def plan_workload(
    sc: Scenario, targets: list[Target], run_id: str, prompts: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The plan's `workload` entry (None without a workload section): how lengths are known, and
    the workload's own description for the manifest. Builds the workload once, here, so bad input
    ends the run before the load starts."""
    spec = sc.workload
    if spec is None:
        return None
    counter, info = token_counter(sc, targets, run_id)
    w = _build(sc, counter, prompts)
    tok = info.get("tokenizer")
    if tok is not None:
        # A worker on another machine finds the shipped model inside its own installed package.
        with contextlib.suppress(ValueError):
            info["tokenizer_in_package"] = str(Path(tok).resolve().relative_to(_PACKAGE))
    info["describe"] = w.describe()
    info["max_requests"] = spec.max_requests
    return info


def _tokenizer_path(info: dict[str, Any]) -> Path:
    path = Path(info["tokenizer"])
    if not path.exists() and info.get("tokenizer_in_package"):
        path = _PACKAGE / info["tokenizer_in_package"]
    if not path.exists():
        raise InputError(
            f"workload.tokenizer: {info['tokenizer']} not found on this machine (a worker on another "
            "machine needs the tokenizer and the dataset at the same paths)"
        )
    return path


def workload_from_plan(plan: Plan) -> Workload | None:
    """This process's copy of the run's workload, the same in every process (None: no workload)."""
    sc = plan.scenario_obj()
    if sc.workload is None:
        return None
    info = plan.workload or {}
    counter: Counter | None = None
    kind = info.get("counter")
    if kind == "tokenizer":
        counter = ModelTokenizer.from_path(_tokenizer_path(info))
    elif kind == "calibrated":
        c = info["calibration"]
        counter = Calibration(
            tokens_per_word=float(c["tokens_per_word"]),
            offset=float(c["offset"]),
            probes=tuple((int(a), int(b)) for a, b in c["probes"]),
        )
    elif kind is None and sc.workload.tokenizer is not None:
        # A plain `locust -f` run: no orchestrator chose, the scenario names the tokenizer.
        counter = ModelTokenizer.from_path(sc.workload.tokenizer)
    return _build(sc, counter, plan.prompts)
