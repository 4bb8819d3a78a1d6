"""The `harness` console script: one module per verb under `harness.commands`.

Each command module exposes `add_parser(subparsers)`; the parser's `func` returns an exit code.
`HarnessError` is caught here, once, and printed as one line (`harness: ...`) with its exit code;
user mistakes never show a traceback. Heavy imports (Locust, gevent, pandas) happen inside the
commands, so `harness --help` and the servers start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from harness import __version__
from harness.errors import HarnessError

__all__ = ["build_parser", "main"]

#: verb -> module; order is the order `harness --help` lists them.
COMMANDS = {
    "run": "harness.commands.run",
    "worker": "harness.commands.worker",
    "serve": "harness.commands.serve",
    "report": "harness.commands.report",
    "compare": "harness.commands.compare",
    "capacity": "harness.commands.capacity",
    "query": "harness.commands.query",
    "hosts": "harness.commands.hosts",
    "bench": "harness.commands.bench",
}


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line naming the bad option (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"harness {self.prog.split(' ', 1)[-1]}: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command whose module is not there yet
            if exc.name != module_name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except HarnessError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"harness: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("harness: interrupted\n")
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
