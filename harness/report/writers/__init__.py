"""Report writers, chosen by name: each renders a `ReportContext` into files under an output folder
and returns the paths it wrote."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.report.builder import ReportContext
from harness.report.writers import bench, csv_tables, html_page, json_summary, markdown

__all__ = ["WRITERS", "Writer"]

Writer = Callable[[ReportContext, Path], list[Path]]

#: Format name (`--format`) -> writer.
WRITERS: dict[str, Writer] = {
    "md": markdown.write,
    "csv": csv_tables.write,
    "html": html_page.write,
    "json": json_summary.write,
    "bench": bench.write,
}
