"""`harness serve sim|foundry`: start a host the harness can test against.

Both print one JSON ready line to stdout when they take requests (`harness.servers.ready`) and stop
cleanly on SIGTERM and SIGINT. The server modules own their options.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from harness.flavours import FLAVOURS

__all__ = ["add_parser"]

#: Embedded flavours (harness.flavours): name -> (server module, help).
SERVERS = {f.name: (f.server, f.description) for f in FLAVOURS.values() if f.server}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="start a host to test against (sim or foundry)")
    kinds = p.add_subparsers(dest="server", metavar="KIND", parser_class=type(p))
    for name, (module_name, help_text) in SERVERS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        sp = kinds.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        sp.add_argument("--port", type=int, default=0, help="port to bind (0 = any free port)")
        module.add_arguments(sp)
        sp.set_defaults(func=_runner(module))


def _runner(module: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        return int(module.serve(args) or 0)

    return run
