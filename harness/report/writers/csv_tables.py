"""One CSV per table (`requests.csv`, `ttft.csv`, ...): machine-friendly headers (the summary keys,
units in their names) and raw values; empty cells where a metric does not apply."""

from __future__ import annotations

import csv
from pathlib import Path

from harness.report.builder import ReportContext

__all__ = ["write"]


def write(ctx: ReportContext, out_dir: Path) -> list[Path]:
    paths = []
    for table in ctx.tables:
        path = out_dir / f"{table.name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow([*table.keys, *(c.key for c in table.columns)])
            for row in table.rows:
                values = [c.value(row) for c in table.columns]
                writer.writerow([*table.key_values(row), *("" if v is None else v for v in values)])
        paths.append(path)
    return paths
