"""Grouping and per-group metrics: the numbers of `summary.json`.

Owns the group keys (`--by`) and the per-group row: every metric of `harness.metrics` computed once
per group over the group's merged raw records (and once over all measured records for the overall
row), named flat as in summary.json: `ttft_ms_p50`, `e2e_ms_p95`, `output_tokens_per_s`, `errors`...

Where the work happens: the engine groups, filters and counts (`GROUP BY` over the view `r` of
`measured`); each distribution's values come back one column at a time, in record order, and its
percentiles are numpy's (`metrics.dist`), so they are exactly numpy's linear interpolation (DuckDB's
`quantile_cont` differs from it in the last bit when the fraction is ≥ 0.5: numpy then interpolates
from the upper neighbour). Pooled ITL gaps: one streamed pass over the event offsets
(`Engine.offsets`) into `metrics.PooledIntDist` per group, exact, memory flat.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from harness import metrics
from harness.errors import InputError
from harness.report.engine import COLUMN_TYPES, REPORT_FIELDS
from harness.report.load import Dataset

__all__ = [
    "BY_COLUMNS",
    "DEFAULT_BY",
    "OVERALL",
    "Grouping",
    "Summarizer",
    "add_grouped",
    "batch_gaps",
    "check_by",
]

#: `--by` key -> record field. Any other scalar record field (not a float) is a key of its own name.
BY_COLUMNS = {
    "run": "run_id",
    "host": "host",
    "model": "model",
    "stage": "stage",
    "prompt_id": "prompt_id",
    "worker": "worker",
    "connection": "connection",
}
DEFAULT_BY = ("run", "host", "model", "stage")
#: Key value of the overall row.
OVERALL = "all"
Row = dict[str, Any]


def by_field(key: str) -> str:
    return BY_COLUMNS.get(key, key)


def groupable_keys() -> list[str]:
    """Every `--by` key: the named ones, then record fields that hold a label or an integer."""
    extra = [
        n
        for n in REPORT_FIELDS
        if n not in BY_COLUMNS.values()
        and COLUMN_TYPES[n][0] in ("VARCHAR", "BIGINT", "BOOLEAN")
        and not n.endswith(("_ns", "_tokens", "reads", "events"))
        and n not in ("seq", "users", "http_status", "max_tokens")
    ]
    return [*BY_COLUMNS, *extra]


def check_by(by: Sequence[str] | None) -> tuple[str, ...]:
    """Validate group keys; None -> the default (run, host, model, stage)."""
    if by is None:
        return DEFAULT_BY
    keys = tuple(k.strip() for k in by if k.strip())
    allowed = groupable_keys()
    unknown = [k for k in keys if k not in allowed]
    if unknown or not keys:
        raise InputError(
            f"--by: unknown key {', '.join(unknown) or '(none given)'}; expected a comma-separated list of "
            + ", ".join(allowed)
        )
    return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class Grouping:
    """Groups of `by` over the records `where` selects, numbered 0.. in the report's order."""

    by: tuple[str, ...]
    table: str
    """Engine table (key fields..., gid)."""
    keys: list[dict[str, str | None]]
    """Each group's key values, by gid."""
    where: str

    def join(self, alias: str = "r") -> str:
        """`JOIN` clause giving rows of `alias` their `gid` (NULL keys match NULL keys)."""
        on = " AND ".join(
            f'{alias}."{by_field(k)}" IS NOT DISTINCT FROM {self.table}."{by_field(k)}"' for k in self.by
        )
        return f"JOIN {self.table} ON {on}"


#: Distributions of every row: name -> (SQL value over `r`, SQL filter).
DISTS: dict[str, tuple[str, str]] = {
    "ttft_ms": ("ttft_ms", "ok"),
    "ttfb_ms": ("ttfb_ms", "ok"),
    "tpot_ms": ("tpot_ms", "ok"),
    "itl_ms": ("", ""),  # pooled gaps: see `_itl`
    "e2e_ms": ("e2e_ms", "ok"),
    "dispatch_delay_ms": ("dispatch_delay_ms", "true"),
    "sched_ttft_ms": ("dispatch_delay_ms + ttft_ms", "ok"),
    "sched_e2e_ms": ("dispatch_delay_ms + e2e_ms", "ok"),
    "queue_time_ms": ("ttft_ms - ttft_c1_ms", "ok"),
    "events_per_read": ("events::DOUBLE / content_reads::DOUBLE", "content_reads > 0"),
}
STREAM_SPEED = ("1000.0 / tpot_ms", "ok AND tpot_ms > 0")


class Summarizer:
    """Computes rows over one dataset's measured records (after `measured.select`)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.e = ds.engine
        self._firsts: dict[str, dict[Any, int]] = {}
        self._groupings: dict[tuple[tuple[str, ...], str], Grouping] = {}
        self._maps: dict[tuple[tuple[str, ...], str], npt.NDArray[Any]] = {}

    # --- groups ---------------------------------------------------------------------------------

    def first_rows(self, field: str) -> dict[Any, int]:
        """Each value of a field -> the row where it first appears (over every record)."""
        if field not in self._firsts:
            self._firsts[field] = dict(self.e.rows(f'SELECT "{field}", min(row_id) FROM rec GROUP BY 1'))
        return self._firsts[field]

    def values_in_order(self, field: str) -> list[Any]:
        """A field's values in order of first appearance (NULL left out)."""
        firsts = self.first_rows(field)
        return sorted((v for v in firsts if v is not None), key=firsts.__getitem__)

    def grouping(self, by: Sequence[str], where: str = "measured") -> Grouping:
        """Groups ordered by each key's order of first appearance in the records, missing values last."""
        by = tuple(by)
        cache_key = (by, where)
        if cache_key in self._groupings:
            return self._groupings[cache_key]
        fields_ = [by_field(k) for k in by]
        cols = ", ".join(f'"{f}"' for f in fields_)
        found = self.e.rows(f"SELECT DISTINCT {cols} FROM r WHERE {where}")
        firsts = [self.first_rows(f) for f in fields_]
        last = math.inf

        def order(key: tuple[Any, ...]) -> tuple[float, ...]:
            return tuple(last if v is None else first[v] for v, first in zip(key, firsts, strict=True))

        found.sort(key=order)
        table = f"gk_{len(self._groupings)}"
        frame = pd.DataFrame(found, columns=fields_)
        for f in fields_:
            frame[f] = frame[f].astype(cast(Any, _pandas_dtype(COLUMN_TYPES[f][0])))
        frame["gid"] = np.arange(len(found), dtype=np.int32)
        self.e.con.register("gk_frame", frame)
        self.e.run(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM gk_frame")
        self.e.con.unregister("gk_frame")
        keys = [{k: _key_value(v) for k, v in zip(by, key, strict=True)} for key in found]
        grouping = Grouping(by, table, keys, where)
        self._groupings[cache_key] = grouping
        return grouping

    # --- rows -----------------------------------------------------------------------------------

    def groups(self, by: Sequence[str], *, itl: bool = True) -> list[Row]:
        """One row per group of measured records."""
        return self.rows([self.grouping(by)], itl={0} if itl else set())[0]

    def groups_and_overall(self, by: Sequence[str]) -> tuple[list[Row], Row]:
        rows = self.rows([self.grouping(by)], itl={0}, overall=True)
        return rows[0], rows[1][0]

    def rows(
        self,
        groupings: list[Grouping],
        *,
        itl: set[int],
        overall: bool = False,
        pooled_itl: dict[int, list[metrics.PooledIntDist]] | None = None,
    ) -> list[list[Row]]:
        """Rows of each grouping (and, when `overall`, a last list holding the overall row); each
        distribution is read once for all of them. `itl`: the groupings whose rows get pooled ITL
        (the overall row gets it when grouping 0 does), from `pooled_itl` when already gathered."""
        joins = " ".join(g.join() for g in groupings)
        gid_cols = "".join(f"{g.table}.gid AS gid{i}, " for i, g in enumerate(groupings))
        self.e.run(f"CREATE OR REPLACE TEMP VIEW m AS SELECT {gid_cols}r.* FROM r {joins} WHERE r.measured")
        sizes = [len(g.keys) for g in groupings]
        scalars = self._scalars(sizes, overall)
        out: list[list[Row]] = [
            [{"key": key} | s for key, s in zip(g.keys, scalars[i], strict=True)]
            for i, g in enumerate(groupings)
        ]
        if overall:
            out.append([{"key": OVERALL} | scalars[-1][0]])
        dists = self._dists(groupings, overall)
        given = pooled_itl or {}
        pooled = {i: given[i] if i in given else self._itl(groupings[i]) for i in itl}
        if overall and 0 in pooled:
            parts = pooled[0]
            pooled[len(groupings)] = [metrics.PooledIntDist.merge(parts)]
        for i, rows in enumerate(out):
            for j, row in enumerate(rows):
                d = dists[i][j]
                if i in pooled:
                    d["itl_ms"] = pooled[i][j].dist(scale=1e-3)
                row["stream_tokens_per_s_p50"] = d.pop("stream_tokens_per_s")["p50"]
                _order_row(row)
                for name in DISTS:
                    row |= {f"{name}_{stat}": value for stat, value in d.get(name, metrics.dist([])).items()}
        return out

    def _scalars(self, sizes: list[int], overall: bool) -> list[list[Row]]:
        """Counts, window, throughput, goodput, errors, means and host memory per group of each
        grouping of view `m` (then overall): each query one scan for every grouping at once
        (`GROUPING SETS`; a result row belongs to the grouping whose gid it carries, to the overall
        row when it carries none)."""
        e = self.e
        n_sets = len(sizes) + (1 if overall else 0)
        rows: list[list[Row]] = [
            [_empty_scalars() for _ in range(n)] for n in [*sizes, *([1] if overall else [])]
        ]
        gids = [f"gid{i}" for i in range(len(sizes))]
        gid_list = ", ".join(gids)

        def by(*more: str) -> str:
            extra = "".join(f", {m}" for m in more)
            sets = [f"({g}{extra})" for g in gids] + ([f"({', '.join(more)})"] if overall else [])
            return f"GROUPING SETS ({', '.join(sets)})"

        def where(found: tuple[Any, ...]) -> tuple[int, int]:
            """(grouping, group) of a result row from its gid columns."""
            for i, g in enumerate(found):
                if g is not None:
                    return i, int(g)
            return n_sets - 1, 0

        met = (
            "ok AND (slo_ttft_ms IS NULL OR coalesce(ttft_ms <= slo_ttft_ms, false))"
            " AND (slo_tpot_ms IS NULL OR tpot_ms IS NULL OR tpot_ms <= slo_tpot_ms)"
            " AND (slo_e2e_ms IS NULL OR coalesce(e2e_ms <= slo_e2e_ms, false))"
        )
        k = len(gids)
        for found in e.rows(
            f"""SELECT {gid_list}, count(*), count(*) FILTER (WHERE ok), sum(output_tokens) FILTER (WHERE ok),
                       count(*) FILTER (WHERE {met}), bool_and(has_slo),
                       count(*) FILTER (WHERE tokens_source = 'usage' AND events IS DISTINCT FROM output_tokens),
                       CAST(sum(input_tokens) FILTER (WHERE ok) AS DOUBLE)
                           / nullif(count(input_tokens) FILTER (WHERE ok), 0),
                       CAST(sum(output_tokens) FILTER (WHERE ok) AS DOUBLE)
                           / nullif(count(output_tokens) FILTER (WHERE ok), 0)
                FROM m GROUP BY {by()}"""
        ):
            i, g = where(found[:k])
            requests, ok, tokens, slo_met, has_slo, mismatch, in_mean, out_mean = found[k:]
            if not requests:  # the overall set of no records at all (a global aggregate has a row)
                continue
            row = rows[i][g]
            row["requests"], row["ok"], row["failed"] = int(requests), int(ok), int(requests - ok)
            row["error_rate"] = float(requests - ok) / requests
            row["output_tokens"] = int(tokens or 0)
            row["_tokens"] = float(tokens or 0)
            row["_met"] = int(slo_met) if has_slo else None
            row["token_mismatch"] = int(mismatch)
            row["input_tokens_mean"] = in_mean
            row["output_tokens_mean"] = out_mean
        # Errors by category, in order of first appearance; a failure without one is `unknown`.
        order = {v: i for i, v in enumerate(self.values_in_order("error"))}
        errors: list[list[list[tuple[str | None, int]]]] = [[[] for _ in r] for r in rows]
        for found in e.rows(f"SELECT {gid_list}, error, count(*) FROM m WHERE NOT ok GROUP BY {by('error')}"):
            i, g = where(found[:k])
            error, count = found[k:]
            errors[i][g].append((error, int(count)))
        # Concurrency: the median over records of their stage's concurrency.
        conc: list[list[list[tuple[float, int]]]] = [[[] for _ in r] for r in rows]
        for found in e.rows(f"SELECT {gid_list}, concurrency, count(*) FROM m GROUP BY {by('concurrency')}"):
            i, g = where(found[:k])
            c, count = found[k:]
            conc[i][g].append((np.nan if c is None else float(c), int(count)))
        # Window: union of the group's per-(run, stage) [first send, last end].
        spans: list[list[list[tuple[int, int]]]] = [[[] for _ in r] for r in rows]
        for found in e.rows(
            f"SELECT {gid_list}, min(sent_unix_ns), max(end_unix_ns) FROM m GROUP BY {by('segment')}"
        ):
            i, g = where(found[:k])
            first, last = found[k:]
            spans[i][g].append((int(first), int(last)))
        # Host memory: highest RSS sampled while the group's requests ran, per (run, host).
        peaks: list[tuple[int, int, float]] = []
        for found in e.rows(
            f"""SELECT s.*, (SELECT max(h.rss_bytes) FROM host_samples h
                             WHERE h.run_index = s.run_index AND h.host = s.host
                                   AND h.t_unix_ns BETWEEN s.first AND s.last) AS peak
                FROM (SELECT {gid_list}, run_index, host, min(sent_unix_ns) AS first, max(end_unix_ns) AS last
                      FROM m GROUP BY {by("run_index", "host")}) s"""
        ):
            i, g = where(found[:k])
            if found[-1] is not None:
                peaks.append((i, g, float(found[-1])))
        best: dict[tuple[int, int], float] = {}
        for i, g, peak in peaks:
            best[(i, g)] = max(best.get((i, g), peak), peak)
        for i, group_rows in enumerate(rows):
            for g, row in enumerate(group_rows):
                found_errors = errors[i][g]
                found_errors.sort(key=lambda x: math.inf if x[0] is None else order[x[0]])
                row["errors"] = {("unknown" if key is None else str(key)): c for key, c in found_errors}
                pairs = conc[i][g]
                values = np.repeat([p[0] for p in pairs], [p[1] for p in pairs]).astype(np.float64)
                row["concurrency"] = float(np.nanmedian(values)) if np.isfinite(values).any() else None
                s = spans[i][g]
                window = (
                    metrics.window_s(
                        np.array([a for a, _ in s], np.int64), np.array([b for _, b in s], np.int64)
                    )
                    if s
                    else None
                )
                met_n, tokens = row.pop("_met"), row.pop("_tokens")
                row["window_s"] = window
                # As `metrics.output_tokens_per_s`, `requests_per_s` and `goodput_per_s`: count / window.
                row["output_tokens_per_s"] = None if window is None else tokens / window
                row["requests_per_s"] = None if window is None else float(row["ok"]) / window
                row["goodput_per_s"] = None if met_n is None or window is None else float(met_n) / window
                row["slo_met"] = met_n
                if (i, g) in best:
                    row["host_peak_rss_mb"] = best[(i, g)] / 1e6
        return rows

    def _dists(self, groupings: list[Grouping], overall: bool) -> list[list[dict[str, Any]]]:
        """Per grouping (then overall), per group: name -> `metrics.dist` of its values. Each
        distribution is one query over `r` (no joins with the group tables: each value's group comes
        from `group_map`, by row id)."""
        sizes = [len(g.keys) for g in groupings]
        out: list[list[dict[str, Any]]] = [[{} for _ in range(s)] for s in sizes]
        if overall:
            out.append([{}])
        maps = [self.group_map(g) for g in groupings]
        specs = {name: spec for name, spec in DISTS.items() if spec[0]}
        specs["stream_tokens_per_s"] = STREAM_SPEED
        for name, (value, where) in specs.items():
            got = _in_record_order(
                self.e.numpy(
                    f"SELECT row_id, x FROM (SELECT *, {value} AS x FROM r) "
                    f"WHERE measured AND {where} AND x IS NOT NULL AND NOT isnan(x)"
                )
            )
            x = np.asarray(got["x"], dtype=np.float64)
            row_id = np.asarray(got["row_id"], dtype=np.int64)
            for i, size in enumerate(sizes):
                gid = maps[i][row_id]
                order = np.argsort(gid, kind="stable")
                bounds = np.searchsorted(gid[order], np.arange(size + 1))
                sorted_x = x[order]
                for j in range(size):
                    out[i][j][name] = metrics.dist(sorted_x[bounds[j] : bounds[j + 1]])
            if overall:
                out[-1][0][name] = metrics.dist(x)
        return out

    def group_map(self, g: Grouping) -> npt.NDArray[np.int16 | np.int32]:
        """Per row id, its group in `g` (-1: none), 16 bits where they suffice (numpy sorts them by
        radix)."""
        key = (g.by, g.where)
        if key not in self._maps:
            got = self.e.numpy(f"SELECT r.row_id, {g.table}.gid FROM r {g.join()} WHERE {g.where}")
            dtype = np.int16 if len(g.keys) < 1 << 15 else np.int32
            group_of = np.full(self.e.max_rowid() + 1, -1, dtype)
            group_of[np.asarray(got["row_id"], dtype=np.int64)] = np.asarray(got["gid"], dtype=dtype)
            self._maps[key] = group_of
        return self._maps[key]

    def itl_gaps(self, g: Grouping) -> ItlGaps:
        """A consumer of the event offsets (`Engine.stream`) pooling the ITL gaps of `g`'s groups."""
        got = self.e.numpy(f"SELECT r.row_id, {g.table}.gid FROM r {g.join()} WHERE ({g.where}) AND r.ok")
        group_of = np.full(self.e.max_rowid() + 1, -1, np.int32)
        group_of[np.asarray(got["row_id"], dtype=np.int64)] = np.asarray(got["gid"], dtype=np.int32)
        return ItlGaps(group_of, [metrics.PooledIntDist() for _ in g.keys])

    def _itl(self, g: Grouping) -> list[metrics.PooledIntDist]:
        gaps = self.itl_gaps(g)
        self.e.stream([gaps])
        return gaps.pooled


@dataclass
class ItlGaps:
    """Pooled gaps between consecutive content events of each group's successful requests, exact
    (`metrics.PooledIntDist`), fed batch by batch from the streamed event offsets."""

    group_of: npt.NDArray[np.int32]
    """Per rowid, its group (-1: not counted)."""
    pooled: list[metrics.PooledIntDist]

    def feed(
        self, rowids: npt.NDArray[np.int64], offsets: npt.NDArray[np.int64], values: npt.NDArray[Any]
    ) -> None:
        groups = self.group_of[rowids]
        if not (groups >= 0).any():
            return
        gaps, gap_group = batch_gaps(offsets, values, groups)
        add_grouped(self.pooled, gaps, gap_group)


def batch_gaps(
    offsets: npt.NDArray[np.int64], values: npt.NDArray[Any], groups: npt.NDArray[np.integer[Any]]
) -> tuple[npt.NDArray[np.signedinteger[Any]], npt.NDArray[np.int32]]:
    """Gaps between consecutive event offsets of a batch, and each gap's group: its record's group
    from `groups` (-1: not counted), -1 for the pair that spans two records (`metrics.itl_gaps_us`:
    never across two records). The gaps keep the offsets' 32 bits when no difference can
    overflow them (8 times less work than widening first)."""
    lo, hi = int(offsets[0]), int(offsets[-1])
    if hi - lo < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    v = values[lo:hi]
    if int(v.max()) - int(v.min()) < 2**31:
        gaps = np.subtract(v[1:], v[:-1])
    else:
        gaps = np.subtract(v[1:], v[:-1], dtype=np.int64)
    gap_group = np.repeat(groups.astype(np.int32, copy=False), np.diff(offsets))[1:]
    starts = offsets[1:-1] - lo
    gap_group[starts[(starts > 0) & (starts < v.size)] - 1] = -1
    return gaps, gap_group


#: Cells of one counting pass in `add_grouped` (groups × gap values): 32 MB of counts.
_CELLS = 1 << 22


def add_grouped(
    targets: Sequence[Any], values: npt.NDArray[np.signedinteger[Any]], group: npt.NDArray[np.int32]
) -> None:
    """Add each value to the counts of its group's target (`metrics.PooledIntDist`, or anything with
    its `add`, `add_counts` and `dense_limit`); group -1: not counted. One `bincount` over (group,
    value) cells for as many groups at a time as `_CELLS` allows: no sort, no pass per group."""
    valid = group >= 0
    n_valid = int(np.count_nonzero(valid))
    if n_valid == 0:
        return
    limit = min(t.dense_limit for t in targets)
    dense = valid & (values >= 0) & (values < limit)
    if int(np.count_nonzero(dense)) != n_valid:  # beyond the dense range: kept as they are, per group
        odd = valid & ~dense
        og, ov = group[odd], values[odd]
        for k in np.unique(og):
            targets[int(k)].add(ov[og == k])
    width = int(values.max(where=dense, initial=-1)) + 1
    if width == 0:
        return
    n_groups = len(targets)
    per = max(1, _CELLS // width)
    if n_groups <= per:
        # Every group in one pass; uncounted values go to a spare last cell.
        cells = n_groups * width
        key = np.where(dense, group * width + values, cells)
        counts = np.bincount(key, minlength=cells + 1)[:-1].reshape(n_groups, width)
        for k in np.flatnonzero(counts.any(axis=1)):
            targets[int(k)].add_counts(counts[k])
        return
    # Too many groups for one counting pass (`--by session_id`): each group's values go to it as
    # they are, after one sort; its accumulator keeps them raw while that is the smaller form.
    g, x = group[dense], values[dense]
    order = np.argsort(g, kind="stable")
    g, x = g[order], x[order]
    present, starts = np.unique(g, return_index=True)
    ends = np.r_[starts[1:], g.size]
    for k, a, b in zip(present, starts, ends, strict=True):
        targets[int(k)].add(x[a:b])


def _in_record_order(cols: dict[str, Any]) -> dict[str, Any]:
    """Columns sorted by `row_id` (a mean sums in record order, as before; DuckDB keeps scan
    order through these joins, so this is a check more than a sort)."""
    row_id = np.asarray(cols["row_id"], dtype=np.int64)
    if row_id.size < 2 or bool((row_id[1:] > row_id[:-1]).all()):
        return cols
    order = np.argsort(row_id, kind="stable")
    return {k: v[order] for k, v in cols.items()}


def _pandas_dtype(sql_type: str) -> str:
    return {"BIGINT": "Int64", "BOOLEAN": "boolean", "INTEGER": "Int32"}.get(sql_type, "object")


def _key_value(value: Any) -> str | None:
    return None if value is None else str(value)


def _empty_scalars() -> Row:
    return {
        "requests": 0,
        "ok": 0,
        "failed": 0,
        "error_rate": None,
        "errors": {},
        "concurrency": None,
        "window_s": None,
        "output_tokens": 0,
        "_tokens": 0.0,
        "_met": None,
        "token_mismatch": 0,
        "input_tokens_mean": None,
        "output_tokens_mean": None,
        "host_peak_rss_mb": None,
    }


_ROW_ORDER = (
    "key",
    "requests",
    "ok",
    "failed",
    "error_rate",
    "errors",
    "concurrency",
    "window_s",
    "output_tokens",
    "output_tokens_per_s",
    "requests_per_s",
    "goodput_per_s",
    "slo_met",
    "stream_tokens_per_s_p50",
    "input_tokens_mean",
    "output_tokens_mean",
    "token_mismatch",
    "host_peak_rss_mb",
)


def _order_row(row: Row) -> None:
    """Put the keys in summary.json's order (scalars, then each distribution's statistics)."""
    head = {k: row.pop(k) for k in _ROW_ORDER if k in row}
    rest = dict(row)
    row.clear()
    row.update(head)
    row.update(rest)
