"""The post-processor: run folders in, tables and reports out.

Layers, in the order data moves:
- `jsonl`: `records.jsonl` -> Arrow table, fast and tolerant of a cut line;
- `load`: run folders (records with a Parquet cache, manifest, host samples) -> one `Dataset`;
- `measured`: warm-up exclusion, steady-state trimming, per-record context (concurrency, SLOs);
- `aggregate`: grouping (`--by`) and every metric of `harness.metrics` per group and overall;
- `tables`, `plots` + `svg`, `writers/`: what is shown, and the Markdown, CSV, HTML and JSON files;
- `workload` + `workload_figures`: what the requests asked for against what the host did (lengths,
  turns, shared prefixes), only for records that carry workload keys;
- `builder`: `build()`, the order of those steps and the shape of `summary.json`;
- `compare`: two runs side by side with bootstrap confidence intervals.

This package imports its heavy parts (pandas) only when `build` or `Report` is first used, so the
child processes that parse records start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.report.builder import Report, build

__all__ = ["Report", "build"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from harness.report import builder

        return getattr(builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
