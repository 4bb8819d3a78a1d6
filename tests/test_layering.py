"""Layering: only `harness/locust/` imports Locust or gevent.

The rest of the harness (scenario, plan, client, records, run folder, report, servers) must import
without gevent's monkey-patching: the post-processor and the servers run in plain processes, and a
gevent import there would change how their sockets and threads behave.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from harness_helpers import REPO

PACKAGE = REPO / "harness"
ALLOWED = PACKAGE / "locust"
FORBIDDEN = ("locust", "gevent")


def _imported_roots(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import statement in a file, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def violations(root: Path = PACKAGE, allowed: Path = ALLOWED) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.is_relative_to(allowed):
            continue
        for line, name in _imported_roots(path):
            if name in FORBIDDEN:
                found.append(f"{path.relative_to(root.parent)}:{line} imports {name}")
    return found


def test_only_the_locust_package_imports_locust_or_gevent() -> None:
    assert violations() == []


def test_the_check_sees_an_import_anywhere_in_a_file(tmp_path: Path) -> None:
    pkg = tmp_path / "harness"
    (pkg / "locust").mkdir(parents=True)
    (pkg / "locust" / "users.py").write_text("import gevent\nfrom locust import User\n")
    (pkg / "ok.py").write_text("import json\nfrom harness.locust import users\n")
    (pkg / "bad.py").write_text("def f():\n    from gevent.lock import Semaphore\n    import locust.env\n")
    assert violations(pkg, pkg / "locust") == [
        "harness/bad.py:2 imports gevent",
        "harness/bad.py:3 imports locust",
    ]


def test_measuring_and_report_modules_import_without_gevent() -> None:
    modules = [
        p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
        for p in sorted(PACKAGE.rglob("*.py"))
        if not p.is_relative_to(ALLOWED) and p.name != "__main__.py"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m.removesuffix('.__init__'))\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('gevent', 'locust')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
