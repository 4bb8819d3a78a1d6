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

__all__ = ["BY_COLUMNS", "DEFAULT_BY", "OVERALL", "Grouping", "Summarizer", "check_by", "record_gaps"]

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

    # --- groups ---------------------------------------------------------------------------------

    def first_rows(self, field: str) -> dict[Any, int]:
        """Each value of a field -> the row where it first appears (over every record)."""
        if field not in self._firsts:
            self._firsts[field] = dict(self.e.rows(f'SELECT "{field}", min(rowid) FROM rec GROUP BY 1'))
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
        self.e.run(
            f"CREATE OR REPLACE TEMP TABLE m AS SELECT {gid_cols}r.* FROM r {joins} WHERE r.measured ORDER BY r.row_id"
        )
        sizes = [len(g.keys) for g in groupings]
        out: list[list[Row]] = [
            [{"key": key} | s for key, s in zip(g.keys, self._scalars(f"gid{i}", len(g.keys)), strict=True)]
            for i, g in enumerate(groupings)
        ]
        if overall:
            out.append([{"key": OVERALL} | self._scalars("0", 1)[0]])
        dists = self._dists(len(groupings), sizes, overall)
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

    def _scalars(self, gid: str, n: int) -> list[Row]:
        """Counts, window, throughput, goodput, errors, means and host memory per group."""
        e = self.e
        rows: list[Row] = [_empty_scalars() for _ in range(n)]
        met = (
            "ok AND (slo_ttft_ms IS NULL OR coalesce(ttft_ms <= slo_ttft_ms, false))"
            " AND (slo_tpot_ms IS NULL OR tpot_ms IS NULL OR tpot_ms <= slo_tpot_ms)"
            " AND (slo_e2e_ms IS NULL OR coalesce(e2e_ms <= slo_e2e_ms, false))"
        )
        for g, requests, ok, tokens, slo_met, has_slo, mismatch, in_mean, out_mean in e.rows(
            f"""SELECT {gid}, count(*), count(*) FILTER (WHERE ok), sum(output_tokens) FILTER (WHERE ok),
                       count(*) FILTER (WHERE {met}), bool_and(has_slo),
                       count(*) FILTER (WHERE tokens_source = 'usage' AND events IS DISTINCT FROM output_tokens),
                       CAST(sum(input_tokens) FILTER (WHERE ok) AS DOUBLE)
                           / nullif(count(input_tokens) FILTER (WHERE ok), 0),
                       CAST(sum(output_tokens) FILTER (WHERE ok) AS DOUBLE)
                           / nullif(count(output_tokens) FILTER (WHERE ok), 0)
                FROM m GROUP BY 1"""
        ):
            row = rows[g]
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
        errors: list[list[tuple[str | None, int]]] = [[] for _ in range(n)]
        for g, error, count in e.rows(f"SELECT {gid}, error, count(*) FROM m WHERE NOT ok GROUP BY 1, 2"):
            errors[g].append((error, int(count)))
        for g, found in enumerate(errors):
            found.sort(key=lambda x: math.inf if x[0] is None else order[x[0]])
            rows[g]["errors"] = {("unknown" if k is None else str(k)): c for k, c in found}
        # Concurrency: the median over records of their stage's concurrency.
        conc: list[list[tuple[float, int]]] = [[] for _ in range(n)]
        for g, c, count in e.rows(f"SELECT {gid}, concurrency, count(*) FROM m GROUP BY 1, 2"):
            conc[g].append((np.nan if c is None else float(c), int(count)))
        for g, pairs in enumerate(conc):
            values = np.repeat([p[0] for p in pairs], [p[1] for p in pairs]).astype(np.float64)
            rows[g]["concurrency"] = float(np.nanmedian(values)) if np.isfinite(values).any() else None
        # Window: union of the group's per-(run, stage) [first send, last end].
        spans: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for g, first, last in e.rows(
            f"SELECT {gid}, min(sent_unix_ns), max(end_unix_ns) FROM m GROUP BY 1, segment"
        ):
            spans[g].append((int(first), int(last)))
        for g, s in enumerate(spans):
            window = (
                metrics.window_s(np.array([a for a, _ in s], np.int64), np.array([b for _, b in s], np.int64))
                if s
                else None
            )
            row = rows[g]
            met, tokens = row.pop("_met"), row.pop("_tokens")
            row["window_s"] = window
            # As `metrics.output_tokens_per_s`, `requests_per_s` and `goodput_per_s`: count / window.
            row["output_tokens_per_s"] = None if window is None else tokens / window
            row["requests_per_s"] = None if window is None else float(row["ok"]) / window
            row["goodput_per_s"] = None if met is None or window is None else float(met) / window
            row["slo_met"] = met
        # Host memory: highest RSS sampled while the group's requests ran, per (run, host).
        for g, peak in e.rows(
            f"""SELECT s.g, max(h.rss_bytes) FROM (
                    SELECT {gid} AS g, run_index, host, min(sent_unix_ns) AS first, max(end_unix_ns) AS last
                    FROM m GROUP BY 1, 2, 3) s
                JOIN host_samples h ON h.run_index = s.run_index AND h.host = s.host
                     AND h.t_unix_ns BETWEEN s.first AND s.last
                GROUP BY 1"""
        ):
            if peak is not None:
                rows[g]["host_peak_rss_mb"] = float(peak) / 1e6
        return rows

    def _dists(self, n_groupings: int, sizes: list[int], overall: bool) -> list[list[dict[str, Any]]]:
        """Per grouping (then overall), per group: name -> `metrics.dist` of its values."""
        out: list[list[dict[str, Any]]] = [[{} for _ in range(s)] for s in sizes]
        if overall:
            out.append([{}])
        gid_cols = ", ".join(f"gid{i}" for i in range(n_groupings))
        specs = {name: spec for name, spec in DISTS.items() if spec[0]}
        specs["stream_tokens_per_s"] = STREAM_SPEED
        for name, (value, where) in specs.items():
            got = self.e.numpy(
                f"SELECT {gid_cols}{', ' if gid_cols else ''}x FROM (SELECT *, {value} AS x FROM m) "
                f"WHERE {where} AND x IS NOT NULL AND NOT isnan(x)"
            )
            x = np.asarray(got["x"], dtype=np.float64)
            for i in range(n_groupings):
                gid = np.asarray(got[f"gid{i}"], dtype=np.int64)
                order = np.argsort(gid, kind="stable")
                bounds = np.searchsorted(gid[order], np.arange(sizes[i] + 1))
                sorted_x = x[order]
                for j in range(sizes[i]):
                    out[i][j][name] = metrics.dist(sorted_x[bounds[j] : bounds[j + 1]])
            if overall:
                out[-1][0][name] = metrics.dist(x)
        return out

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
        gaps, owner = record_gaps(offsets, values)
        gap_group = groups[owner]
        counted = gap_group >= 0
        gaps, gap_group = gaps[counted], gap_group[counted]
        if gap_group.size == 0:  # a batch whose counted records have fewer than two events each
            return
        if len(self.pooled) < 1 << 15:
            gap_group = gap_group.astype(np.int16)  # numpy sorts 16-bit keys by radix: linear time
        order = np.argsort(gap_group, kind="stable")
        gaps, gap_group = gaps[order], gap_group[order]
        present, starts = np.unique(gap_group, return_index=True)
        ends = np.r_[starts[1:], gap_group.size]
        for k, a, b in zip(present, starts, ends, strict=True):
            self.pooled[int(k)].add(gaps[a:b])


def record_gaps(
    offsets: npt.NDArray[np.int64], values: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Gaps between consecutive event offsets within each record of a batch, and each gap's record
    (`metrics.itl_gaps_us`, with owners): never across two records."""
    lengths = np.diff(offsets)
    v = np.asarray(values[offsets[0] : offsets[-1]], dtype=np.int64)
    owner = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    if v.size < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    same = owner[1:] == owner[:-1]
    return np.diff(v)[same], owner[1:][same]


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
