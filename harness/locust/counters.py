"""Locust's own counters, kept truthful: one Locust request per LLM request.

A record is shown to Locust as
- one `E2E` request, through Locust's request event: it counts in `stats.total` (the Aggregated row
  of the console, `--csv` and `--html`; requests/s and failures in the web UI header), so Locust's
  totals, RPS and failures count LLM requests, and `E2E` counts exactly the records;
- its `TTFT` and `TPOT` as entries of their own, logged straight into `environment.stats.entries`
  and never into `stats.total` (Locust's `RequestStats.log_request` adds every event to the total:
  three "requests" per request). Workers send their entries and their `stats_total` to the master
  separately (`locust.stats.setup_distributed_stats_event_listeners`), so the master's total stays
  one per request as well.

Streams cut by the end of the run are recorded `stopped` and fired as `E2E` failures
(`StreamStopped`), so Locust's failures equal the failed records. They are no error of the host:
when they are the only failures, the process exits 0 (a plain `locust -t 10s` ends while streams
are running) instead of Locust's `--exit-code-on-error`.

Locust writes `--csv` files on a 1 s timer and never after the run has stopped, so the requests of
the last second (and every `stopped` record) were missing from them; the final counts are written
once more when Locust quits.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from locust import events
from locust import log as locust_log
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV, StatsError

from harness.records import Record

__all__ = ["RequestFailed", "StreamStopped", "show_record"]


class RequestFailed(Exception):
    """A failed record, as Locust shows it: `category: detail`."""


class StreamStopped(RequestFailed):
    """A stream cut by the end of the run (or a stop): recorded `stopped`, no error of the host."""


def show_record(environment: Environment, rec: Record, name: str) -> None:
    """Show one record to Locust: one `E2E` request, plus `TTFT`/`TPOT` entries outside the total.

    Never one event per token: these are all Locust sees of a request."""
    tokens = rec.output_tokens or 0
    # `StatsEntry.log` is typed `int`, but takes the float milliseconds Locust's request event
    # hands it for every other request; rounding here would differ from the `E2E` entry.
    entries: Any = environment.stats.entries
    if rec.ttft_ms is not None:
        entries[(name, "TTFT")].log(rec.ttft_ms, tokens)
    if rec.ok and rec.tpot_ms is not None:
        entries[(name, "TPOT")].log(rec.tpot_ms, tokens)
    failure: RequestFailed | None = None
    if not rec.ok:
        kind = StreamStopped if rec.error == "stopped" else RequestFailed
        failure = kind(f"{rec.error}: {rec.error_detail}")
    environment.events.request.fire(
        request_type="E2E",
        name=name,
        response_time=rec.e2e_ms or 0.0,
        response_length=tokens,
        exception=failure,
        context={},
    )


def _is_stopped(error: StatsError) -> bool:
    # Locally the error is the exception; on a master it arrives from workers as its repr.
    return StatsError.parse_error(error.error).startswith(f"{StreamStopped.__name__}(")


@events.quitting.add_listener
def _stopped_streams_are_no_error(environment: Environment, **_: Any) -> None:
    """Exit 0 when the only failures are `stopped` streams (Locust decides its exit code right after
    `quitting`, from its errors). Any other failure, a user's exception or an unhandled greenlet
    exception keeps Locust's own rule."""
    runner = environment.runner
    if runner is None or environment.process_exit_code is not None:
        return
    errors = list(runner.errors.values())
    only_stopped = bool(errors) and all(map(_is_stopped, errors))
    if only_stopped and not runner.exceptions and not locust_log.unhandled_greenlet_exception:
        environment.process_exit_code = 0


_ENV: list[Environment] = []


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    _ENV[:] = [environment]


@events.quit.add_listener
def _final_csv(**_: Any) -> None:
    """Write Locust's `--csv` request and failure tables once more with the final counts."""
    env = _ENV[0] if _ENV else None
    if (
        env is None
        or env.runner is None
        or isinstance(env.runner, WorkerRunner)
        or env.parsed_options is None
    ):
        return
    prefix = getattr(env.parsed_options, "csv_prefix", None)
    if not prefix:
        return
    tables = StatsCSV(env, PERCENTILES_TO_REPORT)
    for suffix, write in (("_stats.csv", tables.requests_csv), ("_failures.csv", tables.failures_csv)):
        path = Path(f"{prefix}{suffix}")
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            write(csv.writer(fh))
        # A new file in place of the old: Locust's writer still holds the old one open, and what it
        # flushes when it closes goes there, not over these counts.
        os.replace(tmp, path)
