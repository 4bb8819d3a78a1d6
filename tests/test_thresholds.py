"""`harness.thresholds`, the pure logic: the expression parser, metric names derived from summary keys,
and judging checks on summary rows (given here as dicts, as `Report.summary` holds them)."""

from __future__ import annotations

from typing import Any

import pytest

from harness import thresholds
from harness.thresholds import Threshold, evaluate, metric_keys, parse, parse_all, summary_key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ttft_p95_ms<500", Threshold("ttft_p95_ms", "<", 500.0)),
        ("tpot_p50_ms <= 50", Threshold("tpot_p50_ms", "<=", 50.0)),
        (" output_tokens_per_s>1000 ", Threshold("output_tokens_per_s", ">", 1000.0)),
        ("goodput_ratio>=0.95", Threshold("goodput_ratio", ">=", 0.95)),
        ("error_rate<1e-2", Threshold("error_rate", "<", 0.01)),
    ],
)
def test_parse(text: str, expected: Threshold) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("ttft_p95_ms=500", "expected METRIC OP NUMBER"),
        ("ttft_p95_ms<", "expected METRIC OP NUMBER"),
        ("<500", "expected METRIC OP NUMBER"),
        ("ttft_p95_ms<<500", "is not a number"),
        ("ttft_p95_ms<fast", "is not a number"),
        ("ttft_p95_ms<nan", "not a finite number"),
        ("ttft p95<5", "expected METRIC OP NUMBER"),
    ],
)
def test_bad_syntax_says_what_was_expected(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse(text)


def test_parse_all_names_the_flag_and_the_unknown_metric() -> None:
    names = ["ttft_p95_ms", "error_rate"]
    assert parse_all([("--threshold", "error_rate<0.1")], names) == [Threshold("error_rate", "<", 0.1)]
    with pytest.raises(ValueError) as exc:
        parse_all([("--threshold", "error_rate<0.1"), ("--threshold", "ttft_p95<500")], names)
    msg = str(exc.value)
    assert msg.startswith("--threshold 'ttft_p95<500': unknown metric 'ttft_p95' (did you mean ttft_p95_ms?)")
    assert "expected one of ttft_p95_ms, error_rate" in msg and "\n" not in msg


ROW: dict[str, Any] = {
    "key": {"run": "r1", "host": "http://h:1/v1", "model": "m", "stage": "c=2"},
    "requests": 10,
    "ok": 9,
    "failed": 1,
    "error_rate": 0.1,
    "errors": {"timeout": 1},
    "output_tokens_per_s": 123.4,
    "slo_met": 6,
    "ttft_ms_p95": 80.0,
    "ttft_ms_count": 9,
    "tpot_ms_p50": None,
    "stream_tokens_per_s_p50": 40.0,
}


def test_metric_names_come_from_the_summary_keys() -> None:
    keys = metric_keys(ROW)
    assert keys["ttft_p95_ms"] == "ttft_ms_p95" and keys["ttft_count"] == "ttft_ms_count"
    assert keys["error_rate"] == "error_rate" and keys["stream_tokens_per_s_p50"] == "stream_tokens_per_s_p50"
    assert "goodput_ratio" in keys
    assert "key" not in keys and "errors" not in keys and "ttft_ms_p95" not in keys
    assert summary_key("ttft_p95_ms") == "ttft_ms_p95" and summary_key("error_rate") == "error_rate"


def test_known_metrics_are_the_report_summary_keys() -> None:
    """Every numeric key of a real summary row has a name, and the issue's examples are among them."""
    names = thresholds.known_metrics()
    for name in (
        "ttft_p95_ms",
        "tpot_p50_ms",
        "e2e_p99_ms",
        "error_rate",
        "output_tokens_per_s",
        "goodput_ratio",
    ):
        assert name in names
    row = thresholds._empty_row()
    assert {summary_key(n) for n in names if n.endswith("_ms")} <= set(row)


def test_evaluate_per_group_with_the_groups_own_values() -> None:
    other = ROW | {"key": ROW["key"] | {"stage": "c=4"}, "ttft_ms_p95": 120.0}
    results = evaluate([parse("ttft_p95_ms<100")], [ROW, other])
    assert [(r.group["stage"], r.value, r.passed) for r in results] == [
        ("c=2", 80.0, True),
        ("c=4", 120.0, False),
    ]
    assert results[1].line() == "FAIL ttft_p95_ms < 100: 120 (host http://h:1/v1, model m, stage c=4)"
    assert thresholds.failure_lines(results) == [
        "threshold failed: ttft_p95_ms < 100: 120 (host http://h:1/v1, model m, stage c=4)"
    ]


@pytest.mark.parametrize(
    ("expr", "value", "passed"),
    [
        ("error_rate<0.1", 0.1, False),
        ("error_rate<=0.1", 0.1, True),
        ("output_tokens_per_s>123.4", 123.4, False),
        ("output_tokens_per_s>=123.4", 123.4, True),
        ("goodput_ratio>0.5", 0.6, True),
        ("goodput_ratio>0.7", 0.6, False),
    ],
)
def test_ops_at_the_boundary(expr: str, value: float, passed: bool) -> None:
    (r,) = evaluate([parse(expr)], [ROW])
    assert r.value == pytest.approx(value) and r.passed is passed and r.reason is None


@pytest.mark.parametrize(
    ("row", "expr", "reason"),
    [
        (ROW, "tpot_p50_ms<50", "not measured in this group"),
        (ROW | {"ok": 0, "ttft_ms_p95": None}, "ttft_p95_ms<500", "no successful requests"),
        (ROW | {"slo_met": None}, "goodput_ratio>0", "no `slo` in the scenario"),
    ],
)
def test_a_metric_without_a_value_fails_saying_why(row: dict[str, Any], expr: str, reason: str) -> None:
    (r,) = evaluate([parse(expr)], [row])
    assert r.passed is False and r.value is None and reason in (r.reason or "")
    assert reason in r.line()


def test_no_measured_group_fails_every_check() -> None:
    results = evaluate([parse("error_rate<0.5"), parse("ttft_p95_ms<1")], [])
    assert [(r.metric, r.passed, r.reason) for r in results] == [
        ("error_rate", False, "no measured requests"),
        ("ttft_p95_ms", False, "no measured requests"),
    ]
