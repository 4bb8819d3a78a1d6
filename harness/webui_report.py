"""The web UI's "report of the records so far": `python -m harness.webui_report RUN_DIR OUT_DIR`.

Run as a child process by `harness.locust.webui` (`/llm/report.html`), so the report's CPU work never
stalls the Locust process that is measuring. It copies a consistent snapshot of the live run folder
(only the complete lines of `records.jsonl` and the other JSONL files, the manifest or, in a plain
locust run without one, a manifest made from `plan.json`) and builds `OUT_DIR/report.html` from it
with `harness.report.build`; the live run folder is only read. Errors: one line on stderr, exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from harness.rundir import CLIENT_METRICS, HOST_METRICS, RECORDS, RunDir

__all__ = ["main", "snapshot"]

_JSONL = (RECORDS, HOST_METRICS, CLIENT_METRICS)


def _copy_complete_lines(src: Path, dst: Path) -> None:
    size = src.stat().st_size  # what exists now; lines written meanwhile wait for the next report
    with open(src, "rb") as fh, open(dst, "wb") as out:
        left, carry = size, b""
        while left > 0:
            data = fh.read(min(1 << 20, left))
            if not data:
                break
            left -= len(data)
            data = carry + data
            cut = data.rfind(b"\n") + 1
            out.write(data[:cut])
            carry = data[cut:]


def snapshot(run_dir: Path, into: Path) -> Path:
    """Copy what a report needs from the live `run_dir` into `into/<run folder name>`."""
    snap = into / run_dir.name
    snap.mkdir(parents=True, exist_ok=True)
    for name in _JSONL:
        if (run_dir / name).is_file():
            _copy_complete_lines(run_dir / name, snap / name)
    live, copy = RunDir(run_dir), RunDir(snap)
    if live.manifest.is_file():
        copy.manifest.write_bytes(live.manifest.read_bytes())
    elif live.plan.is_file():
        plan = orjson.loads(live.plan.read_bytes())
        made = {
            "run_id": plan.get("run_id"),
            "scenario": plan.get("scenario"),
            "hosts": [
                {
                    "url": t.get("url"),
                    "label": t.get("label"),
                    "flavour": t.get("flavour"),
                    "models": t.get("asked"),
                }
                for t in plan.get("targets", [])
            ],
            "state": "running",
        }
        copy.manifest.write_bytes(orjson.dumps(made))
    return snap


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m harness.webui_report RUN_DIR OUT_DIR\n")
        return 2
    run_dir, out = Path(argv[0]), Path(argv[1])
    from harness.errors import HarnessError
    from harness.report import build

    try:
        snap = snapshot(run_dir, out / "snapshot")
        build([snap], out, formats=["html"])
    except (HarnessError, OSError) as exc:
        sys.stderr.write(f"harness: report of the records so far: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
