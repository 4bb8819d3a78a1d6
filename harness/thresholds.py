"""Thresholds: `METRIC OP NUMBER` checks over the report's summary rows (`harness run --threshold`,
the scenario's `thresholds:`, `harness compare --threshold`).

Owns the expression syntax, the metric names and how a check is judged. Pure logic: no Locust, no
report internals. Metric names are derived from the keys of a summary row (`Report.summary`), not
listed here: a distribution key `<name>_ms_<stat>` is the metric `<name>_<stat>_ms` (e.g. summary
key `ttft_ms_p95` -> `ttft_p95_ms`), `<name>_ms_count` is `<name>_count`, and every other numeric
key keeps its name (`error_rate`, `output_tokens_per_s`, `requests_per_s`, `goodput_per_s`, ...).
One metric is derived: `goodput_ratio` = `slo_met` / `requests` (the share of requests that
succeeded and met every SLO of the scenario's `slo`).

A check is judged per summary group (per host, model and stage of a run) on the group's value; a
metric without a value in a group (no successful request, no `slo` for goodput) fails the check,
saying why, as does a run with no measured group at all.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

__all__ = [
    "OPS",
    "Result",
    "Threshold",
    "evaluate",
    "failure_lines",
    "known_metrics",
    "metric_keys",
    "parse",
    "parse_all",
    "summary_key",
]

OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*(\S+)\s*$")
_DIST_KEY = re.compile(r"^(.+)_ms_(p\d+|max|mean|count)$")
#: Summary keys that are not metrics (labels, nested dicts).
_DIST_NAME = re.compile(r"^(.+)_(p\d+|max|mean)_ms$")
_NOT_METRICS = frozenset({"key", "errors"})
GOODPUT_RATIO = "goodput_ratio"


@dataclass(frozen=True)
class Threshold:
    """One check: `metric op limit`."""

    metric: str
    op: str
    limit: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.limit:g}"


@dataclass(frozen=True)
class Result:
    """One check judged on one summary group."""

    group: dict[str, Any]
    metric: str
    value: float | None
    op: str
    limit: float
    passed: bool
    reason: str | None = None
    """Why a check without a value failed (None when it had one)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def where(self) -> str:
        # The run id adds nothing on a run's own console; the JSON keeps the whole key.
        return ", ".join(f"{k} {v}" for k, v in self.group.items() if v is not None and k != "run") or "all"

    def line(self) -> str:
        """`FAIL ttft_p50_ms < 40: 51.3 (host ..., model ...)` - one line per check."""
        verdict = "pass" if self.passed else "FAIL"
        value = f"{self.value:.6g}" if self.value is not None else f"no value ({self.reason})"
        return f"{verdict} {self.metric} {self.op} {self.limit:g}: {value} ({self.where()})"


def metric_name(key: str) -> str:
    """Summary key -> metric name (`ttft_ms_p95` -> `ttft_p95_ms`, `ttft_ms_count` -> `ttft_count`)."""
    if m := _DIST_KEY.match(key):
        base, stat = m.groups()
        return f"{base}_count" if stat == "count" else f"{base}_{stat}_ms"
    return key


def metric_keys(row: Mapping[str, Any]) -> dict[str, str]:
    """Metric name -> summary key, for every metric a summary row holds (plus `goodput_ratio`)."""
    out = {
        metric_name(k): k
        for k, v in row.items()
        if k not in _NOT_METRICS and (v is None or isinstance(v, int | float)) and not isinstance(v, bool)
    }
    if "slo_met" in row and "requests" in row:
        out[GOODPUT_RATIO] = GOODPUT_RATIO
    return out


def summary_key(name: str) -> str:
    """The summary key of a distribution's metric name (`ttft_p95_ms` -> `ttft_ms_p95`); any other
    name is returned as it is (it is its own key)."""
    if m := _DIST_NAME.match(name):
        base, stat = m.groups()
        return f"{base}_ms_{stat}"
    return name


@cache
def _empty_row() -> dict[str, Any]:
    """A summary row of the report as `harness.report.build` makes it, for its keys: the overall row
    of an empty run folder. Built once per process (imports the report, ~1 s)."""
    import tempfile
    from pathlib import Path

    from harness.report import build

    with tempfile.TemporaryDirectory(prefix="harness-keys-") as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        (run / "records.jsonl").write_bytes(b"")
        (run / "manifest.json").write_bytes(b'{"run_id": "keys"}\n')
        overall: dict[str, Any] = build([run], Path(tmp) / "out", formats=["json"]).summary["overall"]
    return overall


def known_metrics() -> list[str]:
    """Every metric a threshold may name, in the summary row's order."""
    return list(metric_keys(_empty_row()))


def parse(text: str) -> Threshold:
    """`ttft_p95_ms<500` -> Threshold; ValueError (one line, what was expected) on bad syntax."""
    m = _EXPR.match(str(text))
    if not m:
        raise ValueError(f"expected METRIC OP NUMBER with OP one of {' '.join(OPS)}, e.g. ttft_p95_ms<500")
    metric, op, number = m.groups()
    try:
        limit = float(number)
    except ValueError:
        raise ValueError(f"limit {number!r} is not a number") from None
    if not math.isfinite(limit):
        raise ValueError(f"limit {number!r} is not a finite number")
    return Threshold(metric, op, limit)


def check_metric(t: Threshold, names: Sequence[str]) -> None:
    if t.metric not in names:
        close = difflib.get_close_matches(t.metric, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown metric {t.metric!r}{hint}; expected one of {', '.join(names)}")


def parse_all(items: Iterable[tuple[str, str]], names: Sequence[str] | None = None) -> list[Threshold]:
    """Parse (where, text) pairs, `where` naming the flag or field; ValueError `where 'text': why`.
    With `names`, metrics must be among them."""
    out = []
    for where, text in items:
        try:
            t = parse(text)
            if names is not None:
                check_metric(t, names)
        except ValueError as exc:
            raise ValueError(f"{where} {text!r}: {exc}") from None
        out.append(t)
    return out


def _value(row: Mapping[str, Any], metric: str) -> tuple[float | None, str | None]:
    """(value, why there is none) of a metric in a summary row."""
    if metric == GOODPUT_RATIO:
        met, n = row.get("slo_met"), row.get("requests")
        if met is None:
            return None, "no `slo` in the scenario to judge goodput by"
        if not n:
            return None, "no requests"
        return met / n, None
    key = metric_keys(row).get(metric)
    if key is None:
        return None, "the summary has no such metric"
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if not row.get("ok"):
            return None, "no successful requests"
        return None, "not measured in this group"
    return float(value), None


def evaluate(thresholds: Sequence[Threshold], groups: Sequence[Mapping[str, Any]]) -> list[Result]:
    """Judge every threshold on every summary group (`summary["groups"]`); with no group at all,
    each threshold fails once (nothing was measured)."""
    out = []
    for t in thresholds:
        if not groups:
            out.append(Result({}, t.metric, None, t.op, t.limit, False, "no measured requests"))
        for row in groups:
            value, why = _value(row, t.metric)
            passed = value is not None and OPS[t.op](value, t.limit)
            key = row.get("key")
            group = dict(key) if isinstance(key, Mapping) else {"group": key}
            out.append(Result(group, t.metric, value, t.op, t.limit, passed, why))
    return out


def failure_lines(results: Sequence[Result]) -> list[str]:
    """One line per failed check."""
    return [f"threshold failed: {r.line().removeprefix('FAIL ')}" for r in results if not r.passed]
