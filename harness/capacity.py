"""Capacity search (`harness capacity`): the highest load at which every SLO holds.

Owns the search and how one step is judged; `harness.commands.capacity` runs the steps (each an
ordinary `harness run` through `harness.runner.execute_run`) and writes the capacity run folder.
No Locust here.

Search (`Search`), over users (closed loop, integers) or request rate (open loop):
  1. coarse: from `start`, multiply by `factor` (2) while steps pass; in rate mode a first failing
     step divides by `factor` until one passes (down to `start / 1024`);
  2. bisection between the highest passing level `lo` and the lowest failing one `hi`;
  3. done when users: `hi - lo == 1` (the boundary exactly); rate: `hi / lo - 1 <= resolution`;
     or when `max_level` passes, or when the time budget ends (the bracket so far is the answer).

Judging a step (`judge`): its records, trimmed at both ends of every segment (the report's own
steady-state selection, `harness.report.measured.select`), grouped by host and model. Each SLO is a
threshold expression (`harness.thresholds`); its metric's 95% interval comes from the report's
exact seeded bootstrap over requests (`harness.report.compare`). An SLO *holds* when the whole
interval is on the good side of the limit, *fails* when the whole interval is on the bad side, and is
*unclear* otherwise; a metric the bootstrap does not cover (e.g. `goodput_ratio`) is judged on its
value alone. A step fails when any SLO fails, passes when all hold, else is unclear: the caller then
extends it by another segment at the same level (pooled with the first), up to a cap; a step still
unclear at the cap is decided on its pooled values (`decide_on_values`), and says so
(`unclear_at_cap` in capacity.json): the extensions narrowed the interval as far as the cap allows.

Goodput of a step: requests per second that succeeded and met every per-request latency SLO (the
`ttft`/`ttfb`/`tpot`/`e2e` limits taken per request).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import thresholds
from harness.errors import InputError
from harness.thresholds import OPS, Threshold

__all__ = [
    "FAIL",
    "PASS",
    "UNCLEAR",
    "Search",
    "SloJudgement",
    "StepJudgement",
    "decide_on_values",
    "judge",
    "verdict_of",
]

PASS, FAIL, UNCLEAR = "pass", "fail", "unclear"
_PER_REQUEST = {"ttft_ms", "ttfb_ms", "tpot_ms", "e2e_ms"}


@dataclass
class Search:
    """Exponential then bisection search for the boundary; `next()` the level to try, `tell()` how
    it went. Levels are ints in users mode, floats in rate mode."""

    mode: str  # "users" or "rate"
    start: float
    resolution: float = 0.05
    factor: float = 2.0
    max_level: float = 4096.0
    lo: float = 0.0
    """Highest level that passed (0: none yet)."""
    hi: float | None = None
    """Lowest level that failed (None: none yet)."""
    tried: list[tuple[float, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("users", "rate"):
            raise ValueError(f"mode {self.mode!r}: expected users or rate")
        if self.mode == "users":
            self.start = max(1, int(self.start))

    def done(self) -> bool:
        if self.lo >= self.max_level:
            return True
        if self.hi is None:
            return False
        if self.mode == "users":
            return self.hi - self.lo <= 1
        if self.lo == 0:
            return self.hi <= self.start / 1024
        return self.hi / self.lo - 1 <= self.resolution

    def next(self) -> float | None:
        if self.done():
            return None
        if not self.tried:
            return self.start
        if self.hi is None:
            level = self.lo * self.factor
            return min(self.max_level, int(level) if self.mode == "users" else level)
        if self.lo == 0 and self.mode == "rate":
            return self.hi / self.factor
        if self.mode == "users":
            return int((self.lo + self.hi) // 2)
        return (self.lo + self.hi) / 2

    def tell(self, level: float, passed: bool) -> None:
        self.tried.append((level, passed))
        if passed:
            self.lo = max(self.lo, level)
        else:
            self.hi = level if self.hi is None else min(self.hi, level)

    def answer(self) -> dict[str, Any]:
        return {"mode": self.mode, "highest_passing": self.lo or None, "lowest_failing": self.hi}


@dataclass
class SloJudgement:
    """One SLO on one step (host and model)."""

    slo: str
    metric: str
    op: str
    limit: float
    value: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str
    reason: str | None = None


@dataclass
class StepJudgement:
    """One step's verdict for one host and model, with what it was judged on."""

    key: dict[str, Any]
    verdict: str
    slos: list[SloJudgement]
    requests: int
    ok: int
    window_s: float | None
    requests_per_s: float | None
    output_tokens_per_s: float | None
    goodput_per_s: float | None
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict_of(t: Threshold, value: float | None, low: float | None, high: float | None) -> str:
    """`pass` when the whole interval meets `t`, `fail` when the whole of it misses, else `unclear`;
    without an interval the value decides; without a value it fails."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return FAIL
    if low is None or high is None:
        return PASS if OPS[t.op](value, t.limit) else FAIL
    ok = OPS[t.op]
    if ok(low, t.limit) and ok(high, t.limit):
        return PASS
    if not ok(low, t.limit) and not ok(high, t.limit):
        return FAIL
    return UNCLEAR


def decide_on_values(step: StepJudgement) -> str:
    """A step still unclear after its last extension: each SLO judged on its pooled value alone."""
    return PASS if all(j.value is not None and OPS[j.op](j.value, j.limit) for j in step.slos) else FAIL


def step_verdict(verdicts: Sequence[str]) -> str:
    if FAIL in verdicts:
        return FAIL
    return PASS if all(v == PASS for v in verdicts) else UNCLEAR


def judge(
    run_dirs: list[Path],
    slos: Sequence[Threshold],
    *,
    trim_s: float,
    resamples: int = 1000,
    seed: int = 0,
) -> list[StepJudgement]:
    """Judge the records of a step's segments (`run_dirs`), per host and model; see the module's
    docstring."""
    import numpy as np

    from harness.report import compare as cmp
    from harness.report.aggregate import Summarizer
    from harness.report.load import load_runs
    from harness.report.measured import select

    ds = load_runs(run_dirs)
    try:
        select(ds, trim_s)
        summarizer = Summarizer(ds)
        keys = ("host", "model")
        grouping = summarizer.grouping(keys)
        rows = summarizer.rows([grouping], itl={0})[0]
        side = cmp._Side(summarizer, grouping)
        out = []
        for gid, row in enumerate(rows):
            window = side.window_s(gid)
            results = thresholds.evaluate(slos, [row])
            judged = []
            for i, (t, res) in enumerate(zip(slos, results, strict=True)):
                low = high = None
                value = res.value
                try:
                    spec = cmp._parse_metric(thresholds.summary_key(t.metric))
                except InputError:  # not a bootstrap metric: judged on its value alone
                    spec = None
                if spec is not None and value is not None:
                    samples = spec.samples(side, gid)
                    if samples.size:
                        rng = np.random.default_rng([seed, gid, i])
                        boot = cmp._resampled(samples, spec, window, resamples, rng)
                        boot = boot[np.isfinite(boot)]
                        if boot.size:
                            low, high = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
                verdict = verdict_of(t, value, low, high)
                judged.append(
                    SloJudgement(t.text, t.metric, t.op, t.limit, value, low, high, verdict, res.reason)
                )
            good = _goodput(side, gid, slos, window)
            out.append(
                StepJudgement(
                    key=dict(row["key"]),
                    verdict=step_verdict([j.verdict for j in judged]),
                    slos=judged,
                    requests=int(row.get("requests") or 0),
                    ok=int(row.get("ok") or 0),
                    window_s=window,
                    requests_per_s=_num(row.get("requests_per_s")),
                    output_tokens_per_s=_num(row.get("output_tokens_per_s")),
                    goodput_per_s=good,
                    summary={k: v for k, v in row.items() if k != "errors"},
                )
            )
        return out
    finally:
        ds.close()


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _goodput(side: Any, gid: int, slos: Sequence[Threshold], window: float | None) -> float | None:
    """Requests per second that succeeded and met every per-request latency limit."""
    if not window:
        return None
    conds = ["r.ok"]
    for t in slos:
        column = thresholds.summary_key(t.metric).rsplit("_", 1)[0]
        if column in _PER_REQUEST:
            conds.append(f"coalesce(r.{column} {t.op} {t.limit!r}, false)")
    met = side.values(gid, f"({' AND '.join(conds)})::DOUBLE", "true")
    return float(met.sum()) / window
