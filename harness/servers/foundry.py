"""The embedded Foundry Local host: `harness serve foundry`, and `start_foundry_host` for tests.

Owns running a REAL Foundry Local web service (foundry-local-sdk 2.x, native library, ONNX Runtime
GenAI) inside this process: registering ONNX Runtime GenAI model folders in the LOCAL catalog
(bring your own model; default: the tiny model shipped in `harness/models/tiny-chat`), or loading
catalog models by alias, starting the web service, printing the ready line and stopping cleanly on
SIGTERM/SIGINT. Download and load are reported as they go (`_progress`, `_load`): on stderr for
a person, and as progress lines for a waiting parent (`harness.servers.ready`), which extends its
ready wait while they move.

Where the models are served:
  local-catalog models (`--model-dir`)  base_url `http://HOST:PORT/catalogs/local/v1`
  catalog models (`--alias`)            base_url `http://HOST:PORT/v1`
One host serves one kind; start two hosts to serve both.

No outbound network unless `--allow-download`: the native library would otherwise look models up in
Microsoft's catalog (a miss costs ~4 s of DNS retries) and upload a telemetry event. So the host
points `catalog_urls` at a catalog stand-in on 127.0.0.1 that answers every query with an empty
page, and sets `CI=true` before the native library loads (it then logs "CI environment detected;
1DS upload disabled"), beside `disable_nonessential_telemetry`. `tests/test_foundry_host.py` checks
this with strace.

Never stop the host with `POST /shutdown`: that deadlocks the process (the listener closes, the
process never exits). SIGTERM is the way, which `ChildHost.stop()` sends.

The host must run in a process of its own (`start_foundry_host`), never inside a gevent load
generator: its native threads would share the GIL with the measuring code.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, HostError, InputError
from harness.flavours import SHIPPED_MODEL, model_id_for, shipped_model_dir
from harness.servers.ready import (
    SHOW_AFTER_S,
    SHOW_EVERY_S,
    ChildHost,
    describe_progress,
    install_stop_handlers,
    print_progress,
    print_ready,
    start_child_host,
)

__all__ = [
    "CATALOG_PATH",
    "DEFAULT_MODEL_DIR",
    "add_arguments",
    "default_model_dir",
    "model_id_for",
    "serve",
    "start_foundry_host",
]

#: The catalog URL path the native library insists on (`/asset-gallery/v1.0/models`).
CATALOG_PATH = "/asset-gallery/v1.0/models"
#: What the stand-in answers to every catalog query: an empty page, read as "no such model".
CATALOG_EMPTY = b'{"value": [], "continuationToken": null}'
LOCAL_PREFIX = "/catalogs/local/v1"
PUBLIC_PREFIX = "/v1"
DEFAULT_MODEL_DIR = SHIPPED_MODEL
default_model_dir = shipped_model_dir
#: Where catalog models are cached when `--alias` is used (the Foundry Local CLI's cache).
DEFAULT_ALIAS_CACHE = Path.home() / ".foundry" / "cache" / "models"
APP_NAME = "llm-load-harness"

log = logging.getLogger("harness.servers.foundry")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `harness serve foundry` (the CLI adds `--host` and `--port`)."""
    parser.add_argument(
        "--model-dir",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="ONNX Runtime GenAI model folder (has genai_config.json) to register in the local catalog; "
        f"repeatable (default: the shipped {DEFAULT_MODEL_DIR} model, unless --alias is given)",
    )
    parser.add_argument(
        "--model-id",
        action="append",
        default=[],
        metavar="ID",
        help="model id for the --model-dir at the same position, as name:version "
        "(default: from the folder name, e.g. tiny-chat-generic-cpu:1)",
    )
    parser.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="ALIAS",
        help="Foundry catalog model (alias like qwen2.5-0.5b, or name:version) to load from the model "
        "cache; repeatable. Served under /v1, so not together with --model-dir",
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let --alias models be looked up in Microsoft's catalog and downloaded (network!); "
        "without it the host never connects anywhere but loopback",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help=f"model cache for --alias models (default {DEFAULT_ALIAS_CACHE}; "
        "unused for --model-dir models, which are served in place)",
    )
    parser.add_argument(
        "--app-dir",
        type=Path,
        metavar="DIR",
        help="Foundry Local app data, logs and registrations (default: a fresh temporary folder, "
        "removed at exit); local models an earlier run registered there are unregistered at start",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="native library log level (logs go to stderr and APP_DIR/logs; default warning)",
    )


# ---------------------------------------------------------------------------------------------
# Catalog stand-in
# ---------------------------------------------------------------------------------------------


class _CatalogHandler(BaseHTTPRequestHandler):
    """Answers every catalog query with an empty page at once, so lookups miss in under 1 ms."""

    protocol_version = "HTTP/1.1"

    def _empty(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(CATALOG_EMPTY)))
        self.end_headers()
        self.wfile.write(CATALOG_EMPTY)

    do_GET = _empty
    do_POST = _empty

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("catalog stand-in: " + format, *args)


@contextlib.contextmanager
def catalog_stand_in() -> Iterator[str]:
    """Serve an empty model catalog on 127.0.0.1 in a thread; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CatalogHandler)
    server.daemon_threads = True
    # A short poll interval so stopping the host does not wait half a second for this thread.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="catalog-stand-in", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{CATALOG_PATH}"
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# The host
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LocalModel:
    path: Path
    model_id: str


def _local_models(args: argparse.Namespace) -> list[_LocalModel]:
    dirs: list[Path] = list(args.model_dir)
    ids: list[str] = list(args.model_id)
    if not dirs and not args.alias:
        dirs = [default_model_dir()]
    if len(ids) > len(dirs):
        raise InputError(
            f"--model-id given {len(ids)} times but --model-dir only {len(dirs)}: they pair up by position"
        )
    out: list[_LocalModel] = []
    for i, d in enumerate(dirs):
        path = d.expanduser().resolve()
        if not (path / "genai_config.json").is_file():
            raise InputError(
                f"--model-dir {d}: not an ONNX Runtime GenAI model folder (no genai_config.json)"
            )
        mid = ids[i] if i < len(ids) else model_id_for(path)
        if not re.fullmatch(r"[^:\s]+:\d+", mid):
            raise InputError(f"--model-id {mid!r}: expected name:version, e.g. tiny-chat-generic-cpu:1")
        out.append(_LocalModel(path, mid))
    seen = [m.model_id for m in out]
    dupes = sorted({m for m in seen if seen.count(m) > 1})
    if dupes:
        raise InputError(f"model id {dupes[0]} given twice; pass --model-id to tell the folders apart")
    return out


def _bind_url(host: str, port: int) -> str:
    """The URL to bind, as the native web server parses it: IPv6 hosts without brackets."""
    return f"http://{host.strip('[]')}:{port}"


def _client_url(url: str) -> str:
    """A bound URL as a client on this machine reaches it: wildcard binds become loopback, and
    IPv6 hosts get the brackets a URL needs (the service reports `http://::1:PORT`)."""
    m = re.fullmatch(r"(https?://)(.+):(\d+)(/.*)?", url.rstrip("/"))
    if not m:
        return url.rstrip("/")
    scheme, host, port, _ = m.groups()
    host = host.strip("[]")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}{host}:{port}"


def _quiet_sdk_logging() -> None:
    """The SDK's Python logger writes to stdout; move it to stderr, which is the log channel here."""
    for handler in logging.getLogger("foundry_local_sdk").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def _progress(alias: str) -> Any:
    last = [-1]

    def cb(pct: float) -> None:
        whole = int(pct)
        if whole != last[0]:
            last[0] = whole
            print_progress("download", alias, percent=round(pct, 1))
            bar = "#" * (whole // 5)
            sys.stderr.write(f"\rdownloading {alias}: [{bar:<20}] {pct:5.1f}%")
            if whole >= 100:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return cb


def _load(model: Any, model_id: str) -> None:
    """`model.load()`, reported: the SDK says nothing while it loads, so this process's memory and
    bytes read are reported each second meanwhile (a waiting parent extends its wait while they
    grow, `harness.servers.ready.StartWatch`), and a load that takes a while is shown on stderr."""
    import psutil

    me = psutil.Process()
    started = time.monotonic()

    def figures() -> dict[str, Any]:
        out: dict[str, Any] = {"elapsed_s": round(time.monotonic() - started, 2)}
        with contextlib.suppress(psutil.Error):
            out["rss_bytes"] = me.memory_info().rss
            # Bytes read through read(2) (Linux `read_chars`): a model read from disk or page cache.
            out["read_bytes"] = getattr(me.io_counters(), "read_chars", None)
        return out

    print_progress("load", model_id, state="start", **figures())
    done = threading.Event()

    def beat() -> None:
        said = started
        while not done.wait(1.0):
            f = figures()
            print_progress("load", model_id, state="running", **f)
            if time.monotonic() - said >= SHOW_EVERY_S:
                said = time.monotonic()
                sys.stderr.write(f"foundry: {describe_progress({'model': model_id, **f})}\n")
                sys.stderr.flush()

    thread = threading.Thread(target=beat, name="load-progress", daemon=True)
    thread.start()
    try:
        model.load()
    finally:
        done.set()
        thread.join(2)
    f = figures()
    print_progress("load", model_id, state="done", **f)
    if f["elapsed_s"] >= SHOW_AFTER_S:
        sys.stderr.write(f"foundry: {describe_progress({'model': model_id, 'state': 'done', **f})}\n")


def serve(args: argparse.Namespace) -> int:
    """Run the Foundry Local host until SIGTERM/SIGINT; 0 on a clean stop."""
    started = time.monotonic()
    local = _local_models(args)
    aliases: list[str] = list(args.alias)
    if local and aliases:
        raise InputError(
            "--model-dir and --alias models are served under different base URLs "
            f"({LOCAL_PREFIX} and {PUBLIC_PREFIX}); start one host for each"
        )
    stop = threading.Event()
    install_stop_handlers(stop.set)

    # Before the native library loads: it reads CI to switch its telemetry upload off.
    os.environ["CI"] = "true"
    try:
        import foundry_local_sdk as fl
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise HarnessError(
            f"foundry-local-sdk is not installed ({exc}); pip install foundry-local-sdk"
        ) from exc
    _quiet_sdk_logging()

    owns_app_dir = args.app_dir is None
    app_dir = Path(tempfile.mkdtemp(prefix="harness-foundry-")) if owns_app_dir else args.app_dir.resolve()
    app_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = (args.cache_dir or DEFAULT_ALIAS_CACHE) if aliases else app_dir / "cache"
    offline = not args.allow_download
    mgr: Any = None
    try:
        with contextlib.ExitStack() as stack:
            catalog_urls: list[tuple[str, str | None]] | None = None
            if offline:
                catalog_urls = [(stack.enter_context(catalog_stand_in()), None)]
            cfg = fl.Configuration(
                app_name=APP_NAME,
                app_data_dir=str(app_dir / "data"),
                model_cache_dir=str(cache_dir.expanduser()),
                logs_dir=str(app_dir / "logs"),
                log_level=getattr(
                    fl.LogLevel, {"info": "INFORMATION"}.get(args.log_level, args.log_level.upper())
                ),
                web=fl.Configuration.WebService(urls=_bind_url(args.host, args.port)),
                disable_nonessential_telemetry=True,
                catalog_urls=catalog_urls,
            )
            try:
                fl.FoundryLocalManager.initialize(cfg)
                mgr = fl.FoundryLocalManager.instance
                if local:
                    ids = _register_local(fl, mgr, local)
                    prefix = LOCAL_PREFIX
                else:
                    ids = _load_aliases(mgr, aliases, offline=offline, stop=stop)
                    prefix = PUBLIC_PREFIX
                if stop.is_set():
                    return 0
                mgr.start_web_service()
            except fl.FoundryLocalException as exc:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if "in use" in msg:
                    raise HostError(
                        f"foundry host: port {args.port} on {args.host} is in use ({msg})"
                    ) from exc
                # A temporary app dir is gone at exit; the native log also went to stderr.
                where = "" if owns_app_dir else f" (logs: {app_dir / 'logs'})"
                raise HarnessError(f"foundry host failed to start: {msg}{where}") from exc
            urls = [_client_url(u) for u in mgr.urls or []]
            if not urls:
                raise HarnessError("foundry host started but reports no URL")
            base_url = urls[0] + prefix
            print_ready(
                base_url,
                ids,
                flavour="foundry",
                sdk_version=getattr(fl, "__version__", None),
                urls=urls,
                app_dir=str(app_dir),
                startup_s=round(time.monotonic() - started, 3),
            )
            while not stop.wait(0.5):
                pass
            return 0
    finally:
        if mgr is not None:
            with contextlib.suppress(Exception):
                if mgr.urls:
                    mgr.stop_web_service()
            with contextlib.suppress(Exception):
                mgr.close()
        if owns_app_dir:
            shutil.rmtree(app_dir, ignore_errors=True)


def _register_local(fl: Any, mgr: Any, models: Sequence[_LocalModel]) -> list[str]:
    catalog = mgr.get_catalog(fl.CatalogType.LOCAL)
    # Registrations persist in the app folder (cache/foundry.local.modelinfo.json): with a reused
    # --app-dir an earlier run's entries would collide with ours, or be listed under /models
    # beside them. This host serves exactly what it was asked to, so it clears them all.
    for listed in catalog.list_models():
        for variant in listed.variants or [listed]:
            with contextlib.suppress(Exception):
                catalog.unregister_model(variant.id)
    ids: list[str] = []
    for m in models:
        with fl.ModelInfoBuilder() as info:
            info.set_string_property("task", "chat-completion")
            info.set_string_property("display_name", m.path.name)
            try:
                model = catalog.register_model(model_path=str(m.path), model_id=m.model_id, metadata=info)
            except fl.FoundryLocalException as exc:
                raise HostError(f"--model-dir {m.path}: Foundry Local refused it: {exc}") from exc
        try:
            _load(model, m.model_id)
        except fl.FoundryLocalException as exc:
            raise HostError(f"--model-dir {m.path}: Foundry Local could not load it: {exc}") from exc
        ids.append(model.id)
    return ids


def _load_aliases(mgr: Any, aliases: Sequence[str], *, offline: bool, stop: threading.Event) -> list[str]:
    catalog = mgr.get_catalog()
    ids: list[str] = []
    for alias in aliases:
        model = catalog.get_model_variant(alias) if ":" in alias else catalog.get_model(alias)
        if model is None or (not model.is_cached and offline):
            if offline:
                raise HostError(
                    f"--alias {alias}: not available offline (no cached model by that name); pass "
                    "--allow-download to look it up in Microsoft's catalog and download it (uses the network)"
                )
            raise HostError(f"--alias {alias}: not found in the Foundry catalog")
        if not model.is_cached:
            # The SDK cancels a download when its event is set: SIGTERM sets `stop`, so pass it.
            model.download(progress_callback=_progress(alias), cancel_event=stop)
            if stop.is_set():
                return ids
        _load(model, model.id)
        ids.append(model.id)
    return ids


# ---------------------------------------------------------------------------------------------
# For tests and benchmarks: the host as a child process
# ---------------------------------------------------------------------------------------------


def start_foundry_host(
    model_dirs: Sequence[Path | str] | None = None,
    port: int = 0,
    log_path: Path | None = None,
    *,
    model_ids: Sequence[str] | None = None,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    timeout_s: float = 60.0,
) -> ChildHost:
    """Start `python -m harness serve foundry` as a child process and wait for its ready line.

    `model_dirs` None serves the shipped tiny model. The returned `ChildHost` has `base_url`
    (`http://127.0.0.1:PORT/catalogs/local/v1`), `models` (the variant ids) and `stop()` (SIGTERM).
    stderr (the native library's log) goes to `log_path`, or is discarded.
    """
    args = ["--host", host, "--port", str(port)]
    for d in model_dirs or ():
        args += ["--model-dir", str(d)]
    for mid in model_ids or ():
        args += ["--model-id", mid]
    args += list(extra_args)
    return start_child_host("foundry", args, log_path=log_path, timeout_s=timeout_s)
