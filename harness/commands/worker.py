"""`harness worker --master-host H`: a Locust worker for a master started with `harness run --master`.

The worker receives the plan (hosts, models, prompts) from the master when the test starts, sends
load, keeps its own spool under `results/<run_id>/spool/`, and sends its records to the master.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("worker", help="run a Locust worker for a `harness run --master`", description=__doc__)
    p.add_argument("--master-host", required=True, help="address of the master")
    p.add_argument("--master-port", type=int, default=5557, help="master port (default 5557)")
    p.add_argument("--processes", type=int, default=1, help="worker processes on this machine (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.runner import LOCUSTFILE

    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker"]
    cmd += [
        "--master-host",
        args.master_host,
        "--master-port",
        str(args.master_port),
        "--loglevel",
        "WARNING",
    ]
    if args.processes > 1:
        cmd += ["--processes", str(args.processes)]
    env = dict(os.environ, GEVENT_RESOLVER="block")
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
