"""Two runs side by side: per group and headline metric, the change and its uncertainty.

Owns the comparison's method. Groups are matched by key (default host, model). For each metric the
point values are those `harness report` shows for each run; the 95% confidence interval of the
change comes from a bootstrap: the requests of each run are resampled with replacement (seeded,
`resamples` times), the metric recomputed on each resample, and the 2.5th and 97.5th percentiles of
(new − base) taken, shown as % of the base value. Each resample's metric is drawn from its exact
distribution without drawing n indices where the metric allows (percentiles: the two order
statistics it needs; rates and token sums: multinomial counts of the distinct values), so that
millions of requests take milliseconds.

Verdict per metric: `worse` when the whole interval lies on the bad side of zero AND the change is
beyond the threshold (a regression: `harness compare` exits 1); `better` likewise on the good side;
otherwise `no clear change`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from harness import metrics as m
from harness.errors import InputError
from harness.report.aggregate import Grouping, Summarizer, check_by
from harness.report.load import load_runs
from harness.report.measured import select
from harness.report.tables import fixed_width, format_value, host_label

__all__ = ["DEFAULT_METRICS", "Change", "Comparison", "compare", "metric_names"]

DEFAULT_METRICS = (
    "ttft_ms_p50",
    "ttft_ms_p95",
    "tpot_ms_p50",
    "e2e_ms_p95",
    "output_tokens_per_s",
    "error_rate",
)
_DIST = re.compile(r"^(ttft_ms|ttfb_ms|tpot_ms|e2e_ms|dispatch_delay_ms)_(p50|p90|p95|p99|mean)$")
_RATES = ("output_tokens_per_s", "requests_per_s", "error_rate")
#: Values per bootstrap batch (resamples x requests), to bound memory.
_BATCH_VALUES = 10_000_000
#: Distinct values up to which a mean or sum is resampled through multinomial counts.
_MAX_DISTINCT = 4096

FloatArray = npt.NDArray[np.float64]
Statistic = Callable[[FloatArray], FloatArray]
"""Metric over the last axis of resampled values (shape: resamples x requests)."""


def metric_names() -> str:
    return "ttft_ms|ttfb_ms|tpot_ms|e2e_ms|dispatch_delay_ms with _p50|_p90|_p95|_p99|_mean, " + ", ".join(
        _RATES
    )


@dataclass(frozen=True)
class Change:
    """One metric of one group, base against new."""

    key: dict[str, str | None]
    metric: str
    base: float | None
    new: float | None
    change_pct: float | None
    ci_low_pct: float | None
    ci_high_pct: float | None
    verdict: str
    """`better`, `worse`, `no clear change`, or `not comparable` (missing in one run, or no data)."""


@dataclass
class Comparison:
    base_run: str
    new_run: str
    by: tuple[str, ...]
    threshold_pct: float
    resamples: int
    seed: int
    changes: list[Change] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "worse"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"regressions": len(self.regressions), "method": __doc__}

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """(header, cells) of the comparison table, for people."""
        header = [*self.by, "metric", "base", "new", "change %", "95% CI of change %", "verdict"]
        cells = []
        for c in self.changes:
            key = [host_label(v or "") if k == "host" else (v or "-") for k, v in c.key.items()]
            ci = f"{_pct(c.ci_low_pct)} … {_pct(c.ci_high_pct)}" if c.ci_low_pct is not None else "-"
            kind = "pct" if c.metric == "error_rate" else "float"
            cells.append(
                [
                    *key,
                    c.metric,
                    format_value(c.base, kind),
                    format_value(c.new, kind),
                    _pct(c.change_pct),
                    ci,
                    c.verdict,
                ]
            )
        return header, cells

    def console_table(self) -> str:
        header, cells = self.rows()
        return fixed_width(header, cells, left=len(self.by) + 1)

    def markdown(self) -> str:
        header, cells = self.rows()
        lines = [
            f"# Comparison: {self.base_run} → {self.new_run}",
            "",
            f"Threshold {self.threshold_pct:g}%; bootstrap with {self.resamples} resamples (seed {self.seed}); "
            f"{len(self.regressions)} regression(s). Error rate in %, latencies in ms, throughput per second.",
            "",
            "| " + " | ".join(header) + " |",
            "| " + " | ".join(["---"] * len(self.by) + ["---"] + ["--:"] * 4 + ["---"]) + " |",
            *("| " + " | ".join(r) + " |" for r in cells),
            "",
            "## Method",
            "",
            (__doc__ or "").strip(),
            "",
        ]
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


@dataclass(frozen=True)
class _Side:
    """One run's groups, and the engine that answers for them."""

    summarizer: Summarizer
    grouping: Grouping

    def values(self, gid: int, value: str, where: str) -> FloatArray:
        """Per measured request of group `gid` that `where` selects, in record order: `value`."""
        got = self.summarizer.e.numpy(
            f"""SELECT {value} AS x FROM r {self.grouping.join()}
                WHERE r.measured AND {self.grouping.table}.gid = {int(gid)} AND ({where}) ORDER BY r.row_id"""
        )
        return np.asarray(got["x"], dtype=np.float64)

    def window_s(self, gid: int) -> float | None:
        spans = self.summarizer.e.rows(
            f"""SELECT min(r.sent_unix_ns), max(r.end_unix_ns) FROM r {self.grouping.join()}
                WHERE r.measured AND {self.grouping.table}.gid = {int(gid)} GROUP BY r.segment"""
        )
        if not spans:
            return None
        return m.window_s(
            np.array([a for a, _ in spans], np.int64), np.array([b for _, b in spans], np.int64)
        )


@dataclass(frozen=True)
class _Metric:
    name: str
    higher_is_better: bool
    samples: Callable[[_Side, int], FloatArray]
    """Per request of a group: the values the statistic is computed over (and resampled)."""
    statistic: Callable[[float | None], Statistic]
    """Given the group's window (s), the statistic over the last axis of (resampled) samples."""
    kind: str = "mean"
    """`mean`, `sum` (per second of the window) or `quantile` (percentile `q`): how `_resampled`
    draws the statistic of a resample without drawing every index."""
    q: float = 50.0


def _latencies(column: str) -> Callable[[_Side, int], FloatArray]:
    def samples(side: _Side, gid: int) -> FloatArray:
        return side.values(gid, column, f"r.ok AND r.{column} IS NOT NULL AND NOT isnan(r.{column})")

    return samples


def _failed(side: _Side, gid: int) -> FloatArray:
    return side.values(gid, "(NOT r.ok)::DOUBLE", "true")


def _succeeded(side: _Side, gid: int) -> FloatArray:
    return side.values(gid, "r.ok::DOUBLE", "true")


def _output_tokens(side: _Side, gid: int) -> FloatArray:
    """Output tokens of each request, 0 for a failed one (throughput counts successes only)."""
    return side.values(gid, "CASE WHEN r.ok THEN coalesce(r.output_tokens, 0) ELSE 0 END::DOUBLE", "true")


def _mean(_window: float | None) -> Statistic:
    return lambda a: a.mean(axis=-1)


def _percentile(q: float) -> Callable[[float | None], Statistic]:
    return lambda _window: lambda a: np.percentile(a, q, axis=-1)


def _per_second(window: float | None) -> Statistic:
    return lambda a: a.sum(axis=-1) / window if window else np.full(a.shape[:-1], np.nan)


def _parse_metric(name: str) -> _Metric:
    if m := _DIST.match(name):
        column, stat = m.groups()
        if stat == "mean":
            return _Metric(name, False, _latencies(column), _mean)
        q = float(stat[1:])
        return _Metric(name, False, _latencies(column), _percentile(q), "quantile", q)
    rates = {
        "error_rate": _Metric(name, False, _failed, _mean),
        "requests_per_s": _Metric(name, True, _succeeded, _per_second, "sum"),
        "output_tokens_per_s": _Metric(name, True, _output_tokens, _per_second, "sum"),
    }
    if name in rates:
        return rates[name]
    raise InputError(f"--metrics: unknown metric {name!r}; expected {metric_names()}")


def compare(
    base_dir: Path,
    new_dir: Path,
    *,
    by: Sequence[str] | None = ("host", "model"),
    metrics: Sequence[str] = DEFAULT_METRICS,
    threshold_pct: float = 5.0,
    resamples: int = 1000,
    seed: int = 0,
    trim_s: float | None = None,
) -> Comparison:
    """Compare two run folders; see the module's docstring for the method."""
    keys = check_by(by)
    specs = [_parse_metric(m.strip()) for m in metrics if m.strip()]
    if not specs:
        raise InputError(f"--metrics: none given; expected {metric_names()}")
    if resamples < 100:
        raise InputError(f"--resamples: {resamples} is too few for a 95% interval; expected at least 100")
    datasets = []
    try:
        sides = []
        for run_dir in (base_dir, new_dir):
            ds = load_runs([run_dir])
            datasets.append(ds)
            select(ds, trim_s)
            summarizer = Summarizer(ds)
            grouping = summarizer.grouping(keys)
            side = _Side(summarizer, grouping)
            groups = {tuple(key.values()): gid for gid, key in enumerate(grouping.keys)}
            sides.append((side, groups, ds.runs[0].run_id))
        (base, base_groups, base_id), (new, new_groups, new_id) = sides
        out = Comparison(base_id, new_id, keys, threshold_pct, resamples, seed)
        all_keys = list(base_groups) + [k for k in new_groups if k not in base_groups]
        for gi, key in enumerate(all_keys):
            key_dict = dict(zip(keys, key, strict=True))
            if key not in base_groups or key not in new_groups:
                for spec in specs:
                    out.changes.append(
                        Change(key_dict, spec.name, None, None, None, None, None, "not comparable")
                    )
                continue
            for mi, spec in enumerate(specs):
                rng = [np.random.default_rng([seed, gi, mi, side]) for side in (0, 1)]
                out.changes.append(
                    _change(
                        key_dict,
                        spec,
                        (base, base_groups[key]),
                        (new, new_groups[key]),
                        rng,
                        resamples,
                        threshold_pct,
                    )
                )
    finally:
        for ds in datasets:
            ds.close()
    return out


def _change(
    key: dict[str, str | None],
    spec: _Metric,
    base: tuple[_Side, int],
    new: tuple[_Side, int],
    rngs: list[np.random.Generator],
    resamples: int,
    threshold_pct: float,
) -> Change:
    points, boots = [], []
    for (side, gid), rng in zip((base, new), rngs, strict=True):
        samples = spec.samples(side, gid)
        if samples.size == 0:
            return Change(key, spec.name, None, None, None, None, None, "not comparable")
        window = side.window_s(gid)
        statistic = spec.statistic(window)
        points.append(float(statistic(samples[np.newaxis, :])[0]))
        boots.append(_resampled(samples, spec, window, resamples, rng))
    b, n = points
    if not (np.isfinite(b) and np.isfinite(n)):
        return Change(key, spec.name, _finite(b), _finite(n), None, None, None, "not comparable")
    lo, hi = np.percentile(boots[1] - boots[0], [2.5, 97.5])
    change_pct = (n - b) / abs(b) * 100 if b != 0 else (0.0 if n == 0 else None)
    bad_side = hi < 0 if spec.higher_is_better else lo > 0
    good_side = lo > 0 if spec.higher_is_better else hi < 0
    beyond = change_pct is None or abs(change_pct) > threshold_pct
    verdict = "worse" if bad_side and beyond else "better" if good_side and beyond else "no clear change"
    scale = 100 / abs(b) if b != 0 else None
    return Change(
        key,
        spec.name,
        b,
        n,
        change_pct,
        float(lo * scale) if scale else None,
        float(hi * scale) if scale else None,
        verdict,
    )


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


def _resampled(
    samples: FloatArray, spec: _Metric, window: float | None, resamples: int, rng: np.random.Generator
) -> FloatArray:
    """The metric over `resamples` resamples with replacement of `samples`, drawn exactly (each has
    the distribution the statistic of a resample of n indices has) and fast on millions of samples:

    - a percentile needs only the resample's two order statistics around rank h = (n − 1)·q/100:
      with U₍ₖ₎ the (k+1)-th smallest of n uniforms, ~ Beta(k + 1, n − k), and the next one
      U₍ₖ₎ + (1 − U₍ₖ₎)·Beta(1, n − k − 1), the resample's sorted values there are the sorted
      samples at ⌊n·U⌋, interpolated as numpy does: O(1) per resample after one sort;
    - a mean or a sum over few distinct values (success flags, token counts): the resample's count
      of each value is multinomial: O(distinct values) per resample;
    - otherwise (the mean of a continuous latency): indices drawn in batches (`_bootstrap`).
    """
    n = samples.size
    if spec.kind == "quantile":
        return _resampled_percentile(np.sort(samples), spec.q, resamples, rng)
    values, counts = np.unique(samples, return_counts=True)
    if values.size > _MAX_DISTINCT:
        return _bootstrap(samples, spec.statistic(window), resamples, rng)
    sums = rng.multinomial(n, counts / n, size=resamples) @ values
    if spec.kind == "mean":
        return np.asarray(sums / n, dtype=np.float64)
    return np.asarray(sums / window, dtype=np.float64) if window else np.full(resamples, np.nan)


def _resampled_percentile(
    sorted_samples: FloatArray, q: float, resamples: int, rng: np.random.Generator
) -> FloatArray:
    n = sorted_samples.size
    h = (n - 1) * (q / 100)
    k = math.floor(h)
    t = h - k
    u = rng.beta(k + 1, n - k, size=resamples)
    low = sorted_samples[np.minimum((u * n).astype(np.int64), n - 1)]
    if t == 0 or k >= n - 1:
        return low
    u_next = u + (1 - u) * rng.beta(1, n - k - 1, size=resamples)
    high = sorted_samples[np.minimum((u_next * n).astype(np.int64), n - 1)]
    return _lerp(low, high, t)


def _lerp(a: FloatArray, b: FloatArray, t: float) -> FloatArray:
    """numpy's linear interpolation (from the upper neighbour when t ≥ 0.5), so that a resample's
    percentile is the one `np.percentile` gives."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _bootstrap(
    samples: FloatArray, statistic: Statistic, resamples: int, rng: np.random.Generator
) -> FloatArray:
    """The statistic over `resamples` resamples with replacement, computed in batches."""
    n = samples.size
    batch = max(1, min(resamples, _BATCH_VALUES // n))
    out = []
    for start in range(0, resamples, batch):
        idx = rng.integers(0, n, size=(min(batch, resamples - start), n))
        out.append(statistic(samples[idx]))
    return np.concatenate(out)
