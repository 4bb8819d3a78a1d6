"""Locust's web UI speaks LLM: an LLM tab, the scenario's choices in the start form, downloads.

Owns, through Locust's supported extension points (listeners on `init`, `test_start`,
`reset_stats`, `report_to_master`, `worker_report`; `web_ui.app` routes; `template_args`):

- the **LLM tab** (`extended_tabs` + `extended_tables`; its rows ride on `/stats/requests` as
  `extended_stats`): per host and model, TTFT p50/p95, TPOT p50, output tokens/s, requests in
  flight and errors by category, "now" (a sliding window) and since start; under the table, live
  charts over time (TTFT p50/p95, output tokens/s, errors) per host and model, drawn in the
  browser by `assets/webui/llm.js` (added to Locust's page) from `/llm/stats.json`'s series.
  `harness.webui_figures` computes all of them from the raw records it receives through
  `harness.locust.users.PROCESS.observers` (the single process, or the master) — never from
  Locust's rounded histograms;
- routes `/llm` (the same figures and charts on a page of their own), `/llm/llm.js`,
  `/llm/stats.json`, `/llm/records.jsonl` (the
  run folder's records so far) and `/llm/report.html` (the report of the records so far, built by
  `harness.webui_report` in a child process), linked from the "Download Data" tab
  (`extended_csv_files`);
- **custom arguments** in the start form (`--llm-hosts`, `--llm-models`, `--llm-max-tokens`,
  `--llm-prompts-file`), defaulting to the scenario's choices and applied to the plan before users
  start: on `POST /swarm` (a bad choice is refused with one line in the form) and on `test_start`
  (for starts that bypass the form); workers receive the changed plan with the spawn message.

Importing this module only registers listeners on Locust's events.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from locust import events
from locust.env import Environment
from locust.runners import STATE_MISSING, STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner
from pydantic import ValidationError

from harness.errors import HarnessError, InputError
from harness.hosts import normalize_base_url
from harness.locust.users import PROCESS
from harness.plan import Plan, Target, host_label, prompt_dicts, resolve_target
from harness.rundir import RunDir
from harness.scenario import Scenario
from harness.webui_choices import Choices, format_max_tokens, format_models, models_by_host, parse_max_tokens
from harness.webui_figures import ALL, LiveFigures, table_rows, table_structure

__all__: list[str] = []

log = logging.getLogger("harness")

TAB_KEY = "llm"
#: How long a computed snapshot serves polls (the UI polls every 2 s, per open browser tab).
SNAPSHOT_TTL_S = 1.0
#: A master's view of a worker's in-flight count is dropped when older than this.
INFLIGHT_STALE_S = 10.0
#: Workers send records (and in-flight counts) with each stats report, this often (Locust's default).
WORKER_REPORT_INTERVAL_S = 3.0

OPTIONS = ("llm_hosts", "llm_models", "llm_max_tokens", "llm_prompts_file")
ASSETS = Path(__file__).parent.parent / "assets" / "webui"
#: Added to Locust's page: the LLM tab's live charts (`assets/webui/llm.js`).
CHARTS_TAG = b'<script src="./llm/llm.js" defer></script>'


# --- the scenario's choices ----------------------------------------------------------------
def _choices_of_plan(plan: Plan) -> Choices:
    mt = plan.scenario.get("request", {}).get("max_tokens", 128)
    pf = plan.scenario.get("prompts_file") or ""
    return Choices(
        hosts=tuple((t.url, tuple(t.asked)) for t in plan.targets),
        max_tokens=mt if isinstance(mt, int) else (int(mt[0]), int(mt[1])),
        prompts_file=str(Path(pf).resolve()) if pf else "",
    )


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid"))


# --- per-process state ---------------------------------------------------------------------
@dataclass
class _Web:
    figures: LiveFigures | None = None
    initial: Choices | None = None
    """The scenario's choices (the plan at init)."""
    applied: Choices | None = None
    initial_targets: list[Target] = field(default_factory=list)
    initial_prompts: list[dict[str, Any]] = field(default_factory=list)
    initial_prompt_fields: tuple[Any, Any] = (None, None)
    form_defaults: dict[str, str] = field(default_factory=dict)
    worker_inflight: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    synced_plan_json: str = ""
    form_applied: bool = False
    """POST /swarm applied the form's choices for the start that follows."""
    snapshot: dict[str, Any] | None = None
    snapshot_at: float = 0.0


_web = _Web()


def _observe(record: dict[str, Any]) -> None:
    if _web.figures is not None:
        _web.figures.observe(record)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    # The parser is built again for every page of the web UI (`ui_extra_args_dict`), so these
    # defaults show the choices in effect; before the plan exists they are empty (= the scenario's).
    d = _web.form_defaults
    parser.add_argument(
        "--llm-hosts",
        default=d.get("llm_hosts", ""),
        help="base URLs, comma-separated (Locust's Host field is not used); empty: the scenario's",
    )
    parser.add_argument(
        "--llm-models",
        default=d.get("llm_models", ""),
        help="models for every host (a, b) or per host (LABEL=a, b; LABEL2=c); empty: the scenario's",
    )
    parser.add_argument(
        "--llm-max-tokens",
        default=d.get("llm_max_tokens", ""),
        help="output tokens per request: N, or LO-HI drawn per request; empty: the scenario's",
    )
    parser.add_argument(
        "--llm-prompts-file",
        default=d.get("llm_prompts_file", ""),
        help="JSON prompt set (workshop prompts.json); empty: the scenario's prompts",
    )


def _option_values(environment: Environment) -> dict[str, str]:
    opts = environment.parsed_options
    got = vars(opts) if opts is not None else {}
    return {k: str(got.get(k) or "") for k in OPTIONS}


def _desired(plan: Plan, values: Mapping[str, str]) -> Choices:
    """The choices the form's texts ask for; an empty text means "as the scenario says"."""
    assert _web.initial is not None and _web.applied is not None
    initial, applied = _web.initial, _web.applied
    hosts_text = values.get("llm_hosts", "").strip()
    urls = [normalize_base_url(u) for u in hosts_text.replace(";", ",").split(",") if u.strip()]
    if not urls:
        urls = [u for u, _ in initial.hosts]
    urls = list(dict.fromkeys(urls))
    scenario_models = tuple(plan.scenario.get("models") or ())
    as_scenario = {u: dict(initial.hosts).get(u, scenario_models) for u in urls}
    models_text = values.get("llm_models", "").strip()
    if models_text:
        labels = {t.url: t.label for t in [*_web.initial_targets, *plan.targets]}
        current = as_scenario | {u: m for u, m in applied.hosts if u in as_scenario}
        per_host = models_by_host(models_text, [(u, labels.get(u, host_label(u))) for u in urls], current)
    else:
        per_host = as_scenario
    mt_text = values.get("llm_max_tokens", "").strip()
    pf = values.get("llm_prompts_file", "").strip()
    return Choices(
        hosts=tuple((u, per_host[u]) for u in urls),
        max_tokens=parse_max_tokens(mt_text) if mt_text else initial.max_tokens,
        prompts_file=str(Path(pf).expanduser().resolve()) if pf else initial.prompts_file,
    )


def _apply(environment: Environment, values: Mapping[str, str]) -> bool:
    """Bring the plan to the choices in `values`; True if it changed. Raises HarnessError (one line)
    and leaves the plan as it was when a choice is bad (unknown model, unreachable host, ...)."""
    plan = PROCESS.plan_of(environment)
    desired = _desired(plan, values)
    if desired == _web.applied:
        return False
    runner = environment.runner
    if runner is not None and runner.state in (STATE_RUNNING, STATE_SPAWNING):
        raise InputError("stop the test before changing hosts, models, max tokens or prompts")
    scenario = copy.deepcopy(plan.scenario)
    scenario.setdefault("request", {})["max_tokens"] = (
        desired.max_tokens if isinstance(desired.max_tokens, int) else list(desired.max_tokens)
    )
    if desired.prompts_file:
        scenario["prompts"], scenario["prompts_file"] = None, desired.prompts_file
    else:
        scenario["prompts"], scenario["prompts_file"] = _web.initial_prompt_fields
    try:
        sc = Scenario.model_validate(scenario)
    except ValidationError as exc:
        raise InputError(f"scenario: {_one_line(exc)}") from None
    prompts = prompt_dicts(sc) if desired.prompts_file else copy.deepcopy(_web.initial_prompts)
    targets = _targets(plan, desired)
    # In place: users, the per-process state and the spawn message all hold this plan object.
    plan.targets[:] = targets
    plan.prompts[:] = prompts
    plan.scenario.clear()
    plan.scenario.update(sc.model_dump(mode="json"))
    PROCESS.refresh(plan)
    opts = environment.parsed_options
    if opts is not None:
        opts.harness_plan_json = plan.to_json().decode()
    _web.applied = desired = Choices(
        hosts=tuple((t.url, tuple(t.asked)) for t in targets),
        max_tokens=desired.max_tokens,
        prompts_file=desired.prompts_file,
    )
    _show_hosts(environment, plan)
    _set_form_defaults(plan, desired)
    if _web.figures is not None:
        _web.figures.labels = {t.url: t.label for t in plan.targets}
    _log_change(plan, desired)
    return True


def _targets(plan: Plan, desired: Choices) -> list[Target]:
    known = {t.url: t for t in [*_web.initial_targets, *plan.targets]}
    out: list[Target] = []
    for url, asked in desired.hosts:
        old = known.get(url)
        if old is not None and (tuple(old.asked) == asked or (not asked and old.asked)):
            out.append(old)
            continue
        out.append(
            resolve_target(
                url,
                list(asked),
                label=old.label if old else None,
                weight=old.weight if old else 1.0,
                embedded=old.embedded if old else None,
                pid=old.pid if old else None,
                api_key_env=old.api_key_env if old else None,
                api_key_file=old.api_key_file if old else None,
            )
        )
    labels = [t.label for t in out]
    for i, t in enumerate(out):
        if labels.count(t.label) > 1 and "#" not in t.label:
            t.label = f"{t.label}#{i + 1}"
    return out


def _show_hosts(environment: Environment, plan: Plan) -> None:
    """Locust's own host (its header, its Host field) shows the plan's hosts. The users never read
    it: hosts come from the plan, and the start form changes them with `llm_hosts`."""
    environment.host = ", ".join(t.url for t in plan.targets)


def _set_form_defaults(plan: Plan, applied: Choices) -> None:
    labels = {t.url: t.label for t in plan.targets}
    _web.form_defaults = {
        "llm_hosts": ", ".join(u for u, _ in applied.hosts),
        "llm_models": format_models(applied.hosts, labels),
        "llm_max_tokens": format_max_tokens(applied.max_tokens),
        "llm_prompts_file": applied.prompts_file,
    }


def _log_change(plan: Plan, applied: Choices) -> None:
    change = {
        "t_unix_ns": time.time_ns(),
        "hosts": [{"url": t.url, "label": t.label, "models": t.asked} for t in plan.targets],
        "max_tokens": applied.max_tokens,
        "prompts_file": applied.prompts_file or None,
        "prompts": [p["id"] for p in plan.prompts],
    }
    log.warning(
        "harness: web UI choices applied: %s; max_tokens %s; %d prompts%s",
        "; ".join(f"{t.label}: {', '.join(t.models)}" for t in plan.targets),
        format_max_tokens(applied.max_tokens),
        len(plan.prompts),
        f" from {applied.prompts_file}" if applied.prompts_file else "",
    )
    with contextlib.suppress(OSError), open(RunDir(Path(plan.run_dir)).webui_changes, "ab") as fh:
        fh.write(orjson.dumps(change) + b"\n")


def _sync_worker_plan(environment: Environment) -> None:
    """A worker that already built its plan takes the master's changed plan from the spawn message."""
    opts = environment.parsed_options
    text = str(getattr(opts, "harness_plan_json", "") or "") if opts is not None else ""
    if not text or text == _web.synced_plan_json:
        return
    _web.synced_plan_json = text
    plan = PROCESS.plan
    if plan is None:
        return  # built lazily from this very text
    new = Plan.from_json(text)
    plan.targets[:] = new.targets
    plan.prompts[:] = new.prompts
    plan.scenario.clear()
    plan.scenario.update(new.scenario)
    PROCESS.refresh(plan)


# --- requests in flight --------------------------------------------------------------------
def _local_inflight(environment: Environment) -> Counter[tuple[str, str]]:
    """Requests in flight in this process, per (host, model) from the users' own counter; the
    total under ALL."""
    total, counts = PROCESS.inflight()
    counts[ALL] = total
    return counts


def _report_inflight(environment: Environment, data: dict[str, Any]) -> None:
    counts = _local_inflight(environment)
    data["harness_llm_inflight"] = {
        "total": counts.pop(ALL, 0),
        "groups": [[h, m, n] for (h, m), n in counts.items() if n],
    }


def _inflight(environment: Environment) -> Mapping[tuple[str, str], int]:
    runner = environment.runner
    if not isinstance(runner, MasterRunner):
        return _local_inflight(environment)
    counts: Counter[tuple[str, str]] = Counter()
    counts[ALL] = 0
    now = time.monotonic()
    live = {w.id for w in runner.clients.values() if w.state != STATE_MISSING}
    for client_id, (at, payload) in list(_web.worker_inflight.items()):
        if client_id not in live or now - at > INFLIGHT_STALE_S:
            continue
        counts[ALL] += int(payload.get("total") or 0)
        for host, model, n in payload.get("groups") or []:
            counts[(str(host), str(model))] += int(n)
    return counts


# --- Locust events -------------------------------------------------------------------------
@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):

        @environment.events.report_to_master.add_listener
        def _report(client_id: str, data: dict[str, Any]) -> None:
            _report_inflight(environment, data)

        return
    # harness.locust.users' own init listener (registered before this one) has built the plan or exited.
    plan = PROCESS.plan_of(environment)
    _web.initial = _web.applied = _choices_of_plan(plan)
    _web.initial_targets = copy.deepcopy(plan.targets)
    _web.initial_prompts = copy.deepcopy(plan.prompts)
    _web.initial_prompt_fields = (plan.scenario.get("prompts"), plan.scenario.get("prompts_file"))
    try:
        _apply(environment, _option_values(environment))
    except HarnessError as exc:
        sys.stderr.write(f"harness: {exc}\n")
        sys.exit(exc.exit_code)
    _set_form_defaults(plan, _web.applied)
    _show_hosts(environment, plan)
    opts = environment.parsed_options
    if opts is not None:
        # What the form shows is what is in effect; the swarm handler keeps these as strings.
        for k, v in _web.form_defaults.items():
            setattr(opts, k, v)
    if isinstance(runner, MasterRunner):

        @environment.events.worker_report.add_listener
        def _collect(client_id: str, data: dict[str, Any]) -> None:
            payload = data.get("harness_llm_inflight")
            if isinstance(payload, dict):
                _web.worker_inflight[client_id] = (time.monotonic(), payload)

    if environment.web_ui is None:
        return
    _web.figures = LiveFigures(lag_s=WORKER_REPORT_INTERVAL_S if isinstance(runner, MasterRunner) else 0.0)
    _web.figures.labels = {t.url: t.label for t in plan.targets}
    if _observe not in PROCESS.observers:
        PROCESS.observers.append(_observe)

    @environment.events.reset_stats.add_listener
    def _on_reset() -> None:
        if _web.figures is not None:
            _web.figures.reset(reason="reset")
            _web.snapshot = None

    _install_web_ui(environment, plan)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        _sync_worker_plan(environment)
        return
    if _web.applied is None:
        return
    opts = environment.parsed_options
    if _web.form_applied:
        # POST /swarm applied the form's choices already; Locust has since copied the form's texts
        # (and its Host field) into the options: put back what is in effect.
        _web.form_applied = False
        if opts is not None:
            for k, v in _web.form_defaults.items():
                setattr(opts, k, v)
        _show_hosts(environment, PROCESS.plan_of(environment))
    else:
        try:
            _apply(environment, _option_values(environment))
        except HarnessError as exc:
            log.error("harness: %s (the test runs with the choices in effect before)", exc)
    if _web.figures is not None:
        _web.figures.reset()
        _web.snapshot = None


# --- the web UI ----------------------------------------------------------------------------
def _snapshot(environment: Environment) -> dict[str, Any]:
    figures = _web.figures
    assert figures is not None
    now = time.monotonic()
    if _web.snapshot is None or now - _web.snapshot_at >= SNAPSHOT_TTL_S:
        _web.snapshot = figures.snapshot(_inflight(environment))
        _web.snapshot_at = now
    return _web.snapshot


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _install_web_ui(environment: Environment, plan: Plan) -> None:
    from flask import Response, make_response, request

    web_ui = environment.web_ui
    assert web_ui is not None and web_ui.app is not None
    app = web_ui.app
    opts = environment.parsed_options
    prefix = str(getattr(opts, "web_base_path", "") or "").rstrip("/")
    args = web_ui.template_args
    args["extended_tabs"] = [
        *[t for t in args.get("extended_tabs", []) if t.get("key") != TAB_KEY],
        {"title": "LLM", "key": TAB_KEY},
    ]
    args["extended_tables"] = [
        *[t for t in args.get("extended_tables", []) if t.get("key") != TAB_KEY],
        {"key": TAB_KEY, "structure": table_structure()},
    ]
    args["extended_csv_files"] = [
        *[f for f in args.get("extended_csv_files", []) if not str(f.get("href", "")).startswith("./llm")],
        {"href": "./llm", "title": "LLM figures with charts (live page)"},
        {"href": "./llm/records.jsonl", "title": "Download this run's records so far (records.jsonl)"},
        {
            "href": "./llm/report.html?download=1",
            "title": "Download the report of the records so far (report.html)",
        },
        {"href": "./llm/stats.json", "title": "LLM figures (JSON)"},
    ]
    guard = web_ui.auth_required_if_enabled

    @app.after_request
    def _extend_stats(response: Response) -> Response:
        if request.path != f"{prefix}/stats/requests" or response.status_code != 200:
            return response
        data = response.get_json(silent=True)
        if not isinstance(data, dict) or _web.figures is None:
            return response
        rows = table_rows(_snapshot(environment), clock_format=_clock)
        extended = [e for e in data.get("extended_stats") or [] if e.get("key") != TAB_KEY]
        data["extended_stats"] = [*extended, {"key": TAB_KEY, "data": rows}]
        # Locust memoizes this response object; replacing our entry keeps it fresh every poll.
        response.set_data(json.dumps(data))
        return response

    @app.after_request
    def _add_charts(response: Response) -> Response:
        # Locust's LLM tab can only hold a table (`extended_tables`); this script draws the live
        # charts under it. Its page is the one route that serves `index.html`.
        if (
            request.path != f"{prefix}/"
            or response.status_code != 200
            or response.mimetype != "text/html"
            or response.direct_passthrough
        ):
            return response
        page = response.get_data()
        if CHARTS_TAG not in page and b"</body>" in page:
            response.set_data(page.replace(b"</body>", CHARTS_TAG + b"\n</body>", 1))
        return response

    @app.before_request
    def _apply_form() -> Response | None:
        if request.path != f"{prefix}/swarm" or request.method != "POST":
            return None
        values = _option_values(environment)
        values.update({k: request.form[k] for k in OPTIONS if k in request.form})
        starting = environment.runner is None or environment.runner.state not in (
            STATE_RUNNING,
            STATE_SPAWNING,
        )
        try:
            _apply(environment, values)
        except HarnessError as exc:
            message = f"harness: {exc}"
            log.error(message)
            return make_response({"success": False, "message": message, "host": environment.host})
        _web.form_applied = starting
        return None

    def route(path: str) -> Any:
        def wrap(view: Any) -> Any:
            app.add_url_rule(f"{prefix}{path}", f"harness_webui_{view.__name__}", guard(view))
            return view

        return wrap

    @route("/llm")
    def llm_page() -> Response:
        resp = make_response((ASSETS / "llm.html").read_bytes())
        resp.headers["Content-Type"] = "text/html; charset=utf-8"
        return resp

    @route("/llm/llm.js")
    def llm_charts_js() -> Response:
        resp = make_response((ASSETS / "llm.js").read_bytes())
        resp.headers["Content-Type"] = "text/javascript; charset=utf-8"
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    @route("/llm/stats.json")
    def llm_stats() -> Response:
        snap = dict(_snapshot(environment))
        snap["run_id"], snap["run_dir"] = plan.run_id, plan.run_dir
        snap["choices"] = dict(_web.form_defaults)
        resp = make_response(orjson.dumps(snap))
        resp.headers["Content-Type"] = "application/json"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @route("/llm/records.jsonl")
    def llm_records() -> Response:
        path = RunDir(Path(plan.run_dir)).records
        if not path.is_file():
            return make_response("no records yet: records.jsonl appears when the first request ends\n", 404)
        resp = Response(_complete_lines(path, path.stat().st_size), mimetype="application/x-ndjson")
        resp.headers["Content-Disposition"] = f"attachment; filename={plan.run_id}-records.jsonl"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @route("/llm/report.html")
    def llm_report() -> Response:
        html = _report_html(environment, plan)
        resp = make_response(html)
        resp.headers["Content-Type"] = "text/html; charset=utf-8"
        resp.headers["Cache-Control"] = "no-store"
        if request.args.get("download"):
            resp.headers["Content-Disposition"] = f"attachment; filename={plan.run_id}-report.html"
        return resp


def _complete_lines(path: Path, size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The file's first `size` bytes, without a last line still being written."""
    left = size
    carry = b""
    with open(path, "rb") as fh:
        while left > 0:
            data = fh.read(min(chunk, left))
            if not data:
                break
            left -= len(data)
            data = carry + data
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                yield data[:cut]


def _report_html(environment: Environment, plan: Plan) -> bytes:
    """The report of the records so far, from `harness.report.build` run in a child process (it is
    CPU-heavy, and a busy event loop here would delay every socket read of the test); the live
    figures as a small page when the report cannot be built."""
    run_dir = Path(plan.run_dir)
    problem = ""
    if not RunDir(run_dir).records.is_file():
        problem = "no records yet"
    elif importlib.util.find_spec("harness.report.builder") is None:
        problem = "harness.report is not installed here"
    else:
        out = Path(tempfile.mkdtemp(prefix="harness-webui-report-"))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "harness.webui_report", str(run_dir), str(out)],
                capture_output=True,
                timeout=300,
                check=False,
            )
            page = out / "report.html"
            if proc.returncode == 0 and page.is_file():
                return page.read_bytes()
            lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            problem = lines[-1] if lines else f"report builder exited with code {proc.returncode}"
        except subprocess.TimeoutExpired:
            problem = "the report took longer than 300 s"
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return _fallback_page(environment, plan, problem)


def _fallback_page(environment: Environment, plan: Plan, problem: str) -> bytes:
    from html import escape

    rows = table_rows(_snapshot(environment), clock_format=_clock) if _web.figures is not None else []
    structure = table_structure()
    head = "".join(f"<th>{escape(c['title'])}</th>" for c in structure)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{escape('' if r.get(c['key']) is None else str(r[c['key']]))}</td>" for c in structure
        )
        + "</tr>"
        for r in rows
    )
    return (
        f"<!doctype html><meta charset=utf-8><title>{escape(plan.run_id)}: live figures</title>"
        f"<h1>Run {escape(plan.run_id)}: live figures</h1>"
        f"<p>The full report could not be built ({escape(problem)}); these are the web UI's live figures "
        "from the raw records (exact percentiles).</p>"
        f"<table border=1 cellpadding=4><tr>{head}</tr>{body}</table>"
    ).encode()
