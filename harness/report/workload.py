"""The report's workload figures: what the requests asked for against what the host did with them.

Owns `summary["workload"]` (present only when some record carries a workload key, so reports of
older run folders are unchanged), its tables, its console lines and its warnings:
- latency by length: TTFT against input tokens (prefill cost), E2E and TPOT against output tokens,
  per report group (`--by`) and length bucket (`bucket_edges`: powers of two, split finer when
  the data fill too few);
- TTFT by conversation turn (the history grows with every turn, so prefill grows);
- the shared-prefix share and TTFT with and without the prefix;
- requested against received: short outputs (finish_reason `stop` below `requested_output_tokens`,
  they lower output tokens/s against what was asked) and prompts whose usage count is not the
  requested length plus the template offset (the manifest's `workload.template_offset`, else the
  most common difference, said which).

Every figure is over measured records (warm-up and trimmed edges excluded), latencies over
successful ones, percentiles numpy's (`metrics.dist`) as everywhere in the report. The figures
drawn from these rows are `workload_figures`'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from harness import metrics
from harness.report.aggregate import OVERALL, Row, Summarizer
from harness.report.load import Dataset
from harness.report.tables import Column, Table, format_value

__all__ = [
    "STEPS_PER_DOUBLING",
    "bucket_edges",
    "bucket_label",
    "console_lines",
    "has_workload",
    "summarize",
    "tables",
    "warnings",
]

#: Record keys only a workload sets: a report shows the workload section when one is not null.
WORKLOAD_COLUMNS = ("session_id", "turn", "requested_input_tokens", "requested_output_tokens")
#: Bucket resolutions tried, coarsest first: edges at 2^(j/s) tokens for s steps per doubling.
STEPS_PER_DOUBLING = (1, 2, 4, 8)
#: A resolution is fine enough when it fills this many buckets (or one per distinct length).
MIN_BUCKETS = 4
BUCKET_METHOD = (
    "log2 buckets [lo, hi) of tokens: edges at 2^(j/s) rounded to the nearest integer, with s the "
    "fewest steps per doubling of 1, 2, 4, 8 that fills at least min(4, distinct lengths) buckets"
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# --- buckets ------------------------------------------------------------------------------------


def _edges(top: int, steps: int) -> IntArray:
    """0, then round(2^(j/steps)) for j = 0.. up to the first power of two above `top` (deduplicated)."""
    doublings = max(int(top), 0).bit_length()  # 2**doublings > top
    found = {0} | {math.floor(2 ** (j / steps) + 0.5) for j in range(doublings * steps + 1)}
    return np.array(sorted(found), dtype=np.int64)


def bucket_edges(values: npt.ArrayLike) -> tuple[IntArray, int]:
    """(edges, steps per doubling) for non-negative token counts: bucket i is [edges[i], edges[i+1]),
    the last edge above the largest value. See `BUCKET_METHOD`."""
    v = np.asarray(values, dtype=np.int64)
    v = v[v >= 0]
    if v.size == 0:
        return np.array([0, 1], dtype=np.int64), STEPS_PER_DOUBLING[0]
    want = min(MIN_BUCKETS, int(np.unique(v).size))
    top = int(v.max())
    for steps in STEPS_PER_DOUBLING:
        edges = _edges(top, steps)
        if np.unique(np.searchsorted(edges, v, side="right")).size >= want:
            break
    return edges, steps


def bucket_of(values: npt.ArrayLike, edges: IntArray) -> IntArray:
    """Index i of the bucket [edges[i], edges[i+1]) holding each value."""
    return np.searchsorted(edges, np.asarray(values, dtype=np.int64), side="right") - 1


def bucket_label(lo: int, hi: int) -> str:
    """`128–255` (both ends included), or `100` for a bucket of one length."""
    return f"{lo}" if hi - lo <= 1 else f"{lo}–{hi - 1}"


# --- the summary section ----------------------------------------------------------------------


def has_workload(ds: Dataset) -> bool:
    """Whether any record carries a workload key (a session, a turn, a requested length, a prefix)."""
    checks = " OR ".join(f'"{c}" IS NOT NULL' for c in WORKLOAD_COLUMNS)
    (n,) = ds.engine.one(f"SELECT count(*) FROM rec WHERE {checks} OR shared_prefix_tokens > 0")
    return bool(n)


def summarize(ds: Dataset, summarizer: Summarizer, by: Sequence[str]) -> dict[str, Any] | None:
    """`summary["workload"]` over the measured records, per group of `by`; None without workload keys."""
    if not has_workload(ds):
        return None
    grouping = summarizer.grouping(by)
    got = ds.engine.numpy(
        f"""SELECT {grouping.table}.gid AS gid, r.run_index, r.ok, r.ttft_ms, r.e2e_ms, r.tpot_ms,
                   r.input_tokens, r.output_tokens, r.requested_input_tokens, r.requested_output_tokens,
                   r.turn, coalesce(r.shared_prefix_tokens, 0) AS prefix,
                   coalesce(r.finish_reason = 'stop', false) AS stopped
            FROM r {grouping.join()} WHERE r.measured ORDER BY r.row_id"""
    )
    c = _Columns(got)
    keys = grouping.keys
    in_edges, in_steps = bucket_edges(c.input_tokens[c.ok & c.has("input_tokens")])
    out_edges, out_steps = bucket_edges(c.output_tokens[c.ok & c.has("output_tokens")])
    offsets = _input_offsets(ds, c)
    return {
        "by": list(by),
        "input_buckets": {
            "method": BUCKET_METHOD,
            "steps_per_doubling": in_steps,
            "edges": in_edges.tolist(),
        },
        "output_buckets": {
            "method": BUCKET_METHOD,
            "steps_per_doubling": out_steps,
            "edges": out_edges.tolist(),
        },
        "by_input_tokens": _bucket_rows(c, keys, "input_tokens", in_edges, ("ttft_ms",)),
        "by_output_tokens": _bucket_rows(c, keys, "output_tokens", out_edges, ("e2e_ms", "tpot_ms")),
        "by_turn": _turn_rows(c, keys),
        "shared_prefix": _prefix_section(c, keys),
        "requested_vs_received": _requested_rows(c, keys, offsets),
        "input_offsets": [o for o in offsets.values() if o["records"]],
    }


class _Columns:
    """The measured records' columns as numpy arrays (NULL: NaN for floats, -1 for counts)."""

    def __init__(self, got: dict[str, Any]) -> None:
        def floats(name: str) -> FloatArray:
            return np.asarray(np.ma.filled(np.ma.asarray(got[name], dtype=np.float64), np.nan))

        def ints(name: str) -> IntArray:
            return np.asarray(np.ma.filled(np.ma.asarray(got[name], dtype=np.float64), -1), dtype=np.int64)

        self.gid = ints("gid")
        self.run_index = ints("run_index")
        self.ok = np.asarray(got["ok"], dtype=bool)
        self.ttft_ms, self.e2e_ms, self.tpot_ms = floats("ttft_ms"), floats("e2e_ms"), floats("tpot_ms")
        self.input_tokens, self.output_tokens = ints("input_tokens"), ints("output_tokens")
        self.requested_input_tokens = ints("requested_input_tokens")
        self.requested_output_tokens = ints("requested_output_tokens")
        self.turn = ints("turn")
        self.prefix = ints("prefix")
        self.stopped = np.asarray(got["stopped"], dtype=bool)

    def has(self, name: str) -> npt.NDArray[np.bool_]:
        values: IntArray = getattr(self, name)
        return values >= 0 if name != "turn" else values >= 1


def _cells(codes: IntArray, mask: npt.NDArray[np.bool_]) -> list[tuple[int, IntArray]]:
    """(code, indices of the records holding it) for each code among the masked records, codes
    ascending, indices in record order: one sort, so a report grouped by thousands of sessions
    costs no more than one grouped by host."""
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return []
    order = idx[np.argsort(codes[idx], kind="stable")]
    found, starts = np.unique(codes[order], return_index=True)
    ends = np.r_[starts[1:], order.size]
    return [(int(k), order[a:b]) for k, a, b in zip(found.tolist(), starts, ends, strict=True)]


def _dist_cells(values: dict[str, FloatArray], idx: IntArray) -> Row:
    out: Row = {}
    for name, v in values.items():
        d = metrics.dist(v[idx])
        out |= {f"{name}_{s}": d[s] for s in ("count", "p50", "p95", "mean")}
    return out


def _mean(v: IntArray, idx: IntArray) -> float | None:
    picked = v[idx]
    picked = picked[picked >= 0]
    return float(picked.mean(dtype=np.float64)) if picked.size else None


def _bucket_rows(
    c: _Columns, keys: list[dict[str, str | None]], length: str, edges: IntArray, latencies: Sequence[str]
) -> list[Row]:
    """Per group, per non-empty length bucket of the successful requests: latency statistics."""
    lengths: IntArray = getattr(c, length)
    known = c.ok & (lengths >= 0)
    n_buckets = edges.size - 1
    code = c.gid * n_buckets + bucket_of(np.maximum(lengths, 0), edges)
    values = {name: getattr(c, name) for name in latencies}
    rows = []
    for k, idx in _cells(code, known):
        g, b = divmod(k, n_buckets)
        lo, hi = int(edges[b]), int(edges[b + 1])
        rows.append(
            {
                "key": {**keys[g], length: bucket_label(lo, hi)},
                "bucket_lo": lo,
                "bucket_hi": hi,
                "requests": int(idx.size),
                f"{length}_mean": _mean(lengths, idx),
                **_dist_cells(values, idx),
            }
        )
    return rows


def _turn_rows(c: _Columns, keys: list[dict[str, str | None]]) -> list[Row]:
    """Per group, per conversation turn of the successful requests: TTFT and input tokens."""
    with_turn = c.ok & c.has("turn")
    top = int(c.turn.max(initial=0)) + 1
    rows = []
    for k, idx in _cells(c.gid * top + np.maximum(c.turn, 0), with_turn):
        g, t = divmod(k, top)
        rows.append(
            {
                "key": {**keys[g], "turn": str(t)},
                "turn": t,
                "requests": int(idx.size),
                "input_tokens_mean": _mean(c.input_tokens, idx),
                **_dist_cells({"ttft_ms": c.ttft_ms}, idx),
            }
        )
    return rows


def _prefix_section(c: _Columns, keys: list[dict[str, str | None]]) -> dict[str, Any] | None:
    """Share of requests starting with the shared prefix, and TTFT with and without it."""
    with_prefix = c.prefix > 0
    if not with_prefix.any():
        return None
    per_group = np.bincount(c.gid, minlength=len(keys))
    rows = []
    # Code 2g: with the prefix, 2g + 1: without (so "with" comes first in each group).
    for k, idx in _cells(c.gid * 2 + (~with_prefix), np.ones(c.gid.size, dtype=bool)):
        g, without = divmod(k, 2)
        ok = idx[c.ok[idx]]
        rows.append(
            {
                "key": {**keys[g], "prefix": "without" if without else "with"},
                "requests": int(idx.size),
                "share": float(idx.size) / int(per_group[g]),
                "prefix_tokens_mean": 0.0 if without else _mean(c.prefix, idx),
                "input_tokens_mean": _mean(c.input_tokens, ok),
                **_dist_cells({"ttft_ms": c.ttft_ms}, ok),
            }
        )
    total = int(c.gid.size)
    return {
        "requests": total,
        "with_prefix": int(with_prefix.sum()),
        "share": float(with_prefix.sum()) / total if total else None,
        "rows": rows,
    }


def _input_offsets(ds: Dataset, c: _Columns) -> dict[tuple[int, bool], dict[str, Any]]:
    """Per (run, with prefix): the constant the host's prompt count should exceed the requested
    length plus the prefix by, from the run manifest's `workload` section when it states one, else
    the most common difference among the run's checked records."""
    checked = _input_checked(c)
    delta = c.input_tokens - c.requested_input_tokens - c.prefix
    out = {}
    for i, run in enumerate(ds.runs):
        work = run.manifest.get("workload")
        work = work if isinstance(work, dict) else {}
        user, system = (
            _int_or_none(work.get("template_offset")),
            _int_or_none(work.get("template_offset_with_prefix")),
        )
        counted = work.get("count_template") is True
        for prefixed in (False, True):
            stated: int | None = None
            if user is not None and not prefixed:
                stated = 0 if counted else user
            elif user is not None and system is not None and prefixed:
                # With count_template the requested length already holds the user template's tokens.
                stated = system - (user if counted else 0)
            mask = checked & (c.run_index == i) & ((c.prefix > 0) == prefixed)
            offset, source = stated, "manifest"
            if stated is None:
                source = "inferred: the most common difference"
                values, counts = np.unique(delta[mask], return_counts=True)
                offset = int(values[np.argmax(counts)]) if values.size else None
            out[(i, prefixed)] = {
                "run": run.run_id,
                "prefix": prefixed,
                "offset": offset,
                "source": source,
                "records": int(mask.sum()),
            }
    return out


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _input_checked(c: _Columns) -> npt.NDArray[np.bool_]:
    """Successful first requests (no history) with a requested length and a usage prompt count."""
    first = (c.turn < 0) | (c.turn == 1)
    return c.ok & first & c.has("requested_input_tokens") & c.has("input_tokens")


def _requested_rows(
    c: _Columns, keys: list[dict[str, str | None]], offsets: dict[tuple[int, bool], dict[str, Any]]
) -> list[Row]:
    """Per group and overall: requested and received lengths, short outputs, input mismatches."""
    asked = c.ok & c.has("requested_output_tokens")
    short = asked & c.stopped & c.has("output_tokens") & (c.output_tokens < c.requested_output_tokens)
    checked = _input_checked(c)
    expected = np.full(c.gid.size, np.iinfo(np.int64).min, dtype=np.int64)
    for (i, prefixed), o in offsets.items():
        if o["offset"] is not None:
            sel = (c.run_index == i) & ((c.prefix > 0) == prefixed)
            expected[sel] = c.requested_input_tokens[sel] + c.prefix[sel] + int(o["offset"])
    mismatch = checked & (c.input_tokens != expected)
    asked_in = c.ok & c.has("requested_input_tokens")

    def row(key: Any, idx: IntArray) -> Row:
        def of(flags: npt.NDArray[np.bool_]) -> IntArray:
            return idx[flags[idx]]

        n_asked, n_short = int(of(asked).size), of(short)
        return {
            "key": key,
            "requests": int(idx.size),
            "requested_input_tokens_mean": _mean(c.requested_input_tokens, of(asked_in)),
            "input_tokens_mean": _mean(c.input_tokens, of(asked_in)),
            "input_checked": int(of(checked).size),
            "input_mismatch": int(of(mismatch).size),
            "requested_output_tokens_mean": _mean(c.requested_output_tokens, of(asked)),
            "output_tokens_mean": _mean(c.output_tokens, of(asked)),
            "output_requested": n_asked,
            "short_outputs": int(n_short.size),
            "short_output_share": float(n_short.size) / n_asked if n_asked else None,
            "short_output_tokens_missing": int(
                (c.requested_output_tokens[n_short] - c.output_tokens[n_short]).sum()
            ),
        }

    everything = np.ones(c.gid.size, dtype=bool)
    rows = [row(keys[g], idx) for g, idx in _cells(c.gid, everything)]
    rows.append(row(OVERALL, np.arange(c.gid.size)))
    return rows


# --- what the writers show --------------------------------------------------------------------


def _dist_columns(name: str, label: str, *, count: bool = True) -> tuple[Column, ...]:
    cols = (
        Column(f"{name}_p50", f"{label} p50", "ms", f"median {label} of successful requests"),
        Column(f"{name}_p95", f"{label} p95", "ms", f"95th percentile of {label}"),
        Column(f"{name}_mean", f"{label} mean", "ms", f"mean {label}"),
    )
    return cols if not count else (Column(f"{name}_count", "OK", "", "successful requests", "int"), *cols)


def tables(summary: dict[str, Any]) -> list[Table]:
    """The workload section's tables (none for a report without workload keys)."""
    work = summary.get("workload")
    if not work:
        return []
    by = tuple(work["by"])
    out = [
        Table(
            "ttft_by_input_tokens",
            "TTFT against input tokens (prefill cost)",
            "Successful measured requests by prompt length from usage (`input_tokens`), "
            f"in {_bucket_doc(work['input_buckets'])}.",
            (*by, "input_tokens"),
            (
                Column("input_tokens_mean", "Input tokens", "mean", "prompt tokens (usage) in the bucket"),
                *_dist_columns("ttft_ms", "TTFT"),
            ),
            work["by_input_tokens"],
        ),
        Table(
            "latency_by_output_tokens",
            "E2E and TPOT against output tokens",
            f"Successful measured requests by answer length (`output_tokens`), in {_bucket_doc(work['output_buckets'])}.",
            (*by, "output_tokens"),
            (
                Column("output_tokens_mean", "Output tokens", "mean", "completion tokens in the bucket"),
                *_dist_columns("e2e_ms", "E2E"),
                *_dist_columns("tpot_ms", "TPOT", count=False),
            ),
            work["by_output_tokens"],
        ),
    ]
    if work["by_turn"]:
        out.append(
            Table(
                "ttft_by_turn",
                "TTFT by conversation turn",
                "Successful measured requests by turn: each turn carries every earlier turn and the host's "
                "replies, so the prompt, and its prefill, grows.",
                (*by, "turn"),
                (
                    Column("input_tokens_mean", "Input tokens", "mean", "prompt tokens (usage) at this turn"),
                    *_dist_columns("ttft_ms", "TTFT"),
                ),
                work["by_turn"],
            )
        )
    prefix = work["shared_prefix"]
    if prefix:
        out.append(
            Table(
                "shared_prefix",
                "Shared prefix",
                f"{prefix['with_prefix']:,} of {prefix['requests']:,} measured requests "
                f"({format_value(prefix['share'], 'pct')} %) start with a shared system prompt; TTFT with "
                "and without it (a host that caches prefixes answers those sooner).",
                (*by, "prefix"),
                (
                    Column("requests", "Requests", "", "measured requests", "int"),
                    Column("share", "Share", "%", "of the group's measured requests", "pct"),
                    Column("prefix_tokens_mean", "Prefix tokens", "mean", "shared prefix length"),
                    Column("input_tokens_mean", "Input tokens", "mean", "prompt tokens (usage)"),
                    *_dist_columns("ttft_ms", "TTFT"),
                ),
                prefix["rows"],
            )
        )
    out.append(
        Table(
            "requested_vs_received",
            "Requested against received tokens",
            "What the workload asked for against what the host's usage reported, over successful measured "
            "requests. Short outputs (finish_reason `stop` before the requested length) make output tokens/s "
            "lower than the asked lengths would give. Input mismatch: first requests (no history) whose prompt "
            "tokens ≠ requested + shared prefix + the template offset ("
            + "; ".join(_offset_doc(o) for o in work["input_offsets"])
            + ").",
            by,
            (
                Column("requested_input_tokens_mean", "Requested input", "mean", "requested prompt tokens"),
                Column("input_tokens_mean", "Input tokens", "mean", "prompt tokens (usage) of the same"),
                Column("input_checked", "Input checked", "", "first requests with both counts", "int"),
                Column(
                    "input_mismatch", "Input mismatch", "", "of those, prompt tokens not as expected", "int"
                ),
                Column("requested_output_tokens_mean", "Requested output", "mean", "requested max_tokens"),
                Column("output_tokens_mean", "Output tokens", "mean", "completion tokens of the same"),
                Column("short_outputs", "Short outputs", "", "stopped before the requested length", "int"),
                Column(
                    "short_output_share",
                    "Short share",
                    "%",
                    "short outputs / successful requests with a requested length",
                    "pct",
                ),
            ),
            work["requested_vs_received"],
        )
    )
    return out


def _bucket_doc(b: dict[str, Any]) -> str:
    steps = b["steps_per_doubling"]
    return (
        "log2 buckets of tokens ("
        + ("powers of two" if steps == 1 else f"{steps} steps per doubling")
        + ", the "
        "coarsest of 1, 2, 4, 8 steps that fills at least 4 buckets or one per distinct length)"
    )


def _offset_doc(o: dict[str, Any]) -> str:
    value = "none" if o["offset"] is None else f"{o['offset']:+d}"
    return f"run {o['run']}{' with prefix' if o['prefix'] else ''}: {value}, {o['source']}"


def _overall(work: dict[str, Any]) -> Row:
    rows: list[Row] = work["requested_vs_received"]
    return next(r for r in rows if r["key"] == OVERALL)


def warnings(work: dict[str, Any] | None) -> list[str]:
    """Report warnings about the workload: short outputs change throughput figures."""
    if not work:
        return []
    o = _overall(work)
    out = []
    if o["short_outputs"]:
        out.append(
            f"{o['short_outputs']:,} of {o['output_requested']:,} successful requests "
            f"({format_value(o['short_output_share'], 'pct')} %) stopped short of the requested output length "
            f"(finish_reason stop; {o['short_output_tokens_missing']:,} tokens fewer than asked): output tokens/s "
            "and TPOT describe shorter answers than the workload asked for"
        )
    if o["input_mismatch"]:
        out.append(
            f"{o['input_mismatch']:,} of {o['input_checked']:,} first requests had a prompt token count (usage) "
            "other than requested + shared prefix + template offset"
        )
    return out


def console_lines(summary: dict[str, Any]) -> list[str]:
    """A line for the terminal: requested against received, and TTFT by turn when there are turns."""
    work = summary.get("workload")
    if not work:
        return []
    o = _overall(work)
    share = format_value(o["short_output_share"], "pct")
    out = [
        f"workload: {o['short_outputs']:,} short output(s) of {o['output_requested']:,} with a requested "
        f"length ({share} %); input mismatch {o['input_mismatch']:,} of {o['input_checked']:,} checked"
    ]
    turns: dict[int, list[Row]] = {}
    for r in work["by_turn"]:
        turns.setdefault(r["turn"], []).append(r)
    if turns and len(work["by_turn"]) == len(turns):  # one group: a line of TTFT p50 by turn
        out.append(
            "TTFT p50 by turn (ms): "
            + ", ".join(f"{t}: {format_value(rows[0]['ttft_ms_p50'])}" for t, rows in sorted(turns.items()))
        )
    return out
