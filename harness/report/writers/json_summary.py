"""`summary.json`: the summary dict as it is (its shape: `harness.report.builder._summary`)."""

from __future__ import annotations

from pathlib import Path

import orjson

from harness.report.builder import ReportContext

__all__ = ["write"]

NAME = "summary.json"


def write(ctx: ReportContext, out_dir: Path) -> list[Path]:
    path = out_dir / NAME
    path.write_bytes(
        orjson.dumps(ctx.summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    )
    return [path]
