"""`harness hosts URL...`: what answers at each URL, before a run.

For each host: its flavour (Foundry Local current or legacy service, the simulated host, another
OpenAI-compatible server), the models it lists, and a one-token chat round trip. With no URL, it
looks where Foundry Local says it is (`FOUNDRY_LOCAL_ENDPOINT`, `foundry service status`).
"""

from __future__ import annotations

import argparse
from typing import Any

from harness.errors import HarnessError, InputError

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("hosts", help="probe hosts: flavour, models, a one-token chat", description=__doc__)
    p.add_argument("urls", nargs="*", metavar="URL", help="base URLs (default: discover Foundry Local)")
    p.add_argument("--model", help="model (id or alias) for the chat check (default: the host's first)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per step (default 10)")
    p.add_argument(
        "--probe",
        action="store_true",
        help="also compare connection policies (reuse, new, reuse-quickack) with a few streams each",
    )
    p.add_argument("--requests", type=int, default=8, help="streams per policy for --probe (default 8)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per stream for --probe (default 64)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.client import Connection, Timeouts, chat_body
    from harness.discovery import discover_foundry_endpoints, loaded_models
    from harness.hosts import probe_host, resolve_model

    urls = list(args.urls) or discover_foundry_endpoints()
    if not urls:
        raise InputError(
            "no URL given and no Foundry Local host found (set FOUNDRY_LOCAL_ENDPOINT, or start one: "
            "`harness serve foundry`)"
        )
    failures = 0
    for url in urls:
        try:
            info = probe_host(url, timeout_s=args.timeout)
        except HarnessError as exc:
            print(f"{url}\n  unusable: {exc}")
            failures += 1
            continue
        print(
            f"{info.url}\n  flavour: {info.flavour}\n  models ({len(info.models)}): {', '.join(info.models[:10])}"
        )
        loaded = loaded_models(info)
        if loaded is not None:
            print(f"  loaded: {', '.join(loaded) or 'none'}")
        model = (
            resolve_model(args.model, info.models)
            if args.model
            else (info.models[0] if info.models else None)
        )
        if model is None:
            print(f"  chat: no model {'matches ' + args.model if args.model else 'listed'}")
            failures += 1
            continue
        t = Timeouts(args.timeout, args.timeout, args.timeout, args.timeout * 3)
        conn = Connection(info.url, policy="new", timeouts=t)
        body = chat_body(model, [{"role": "user", "content": "Say OK."}], max_tokens=1, temperature=0)
        res = conn.chat(body)
        if res.ok:
            ttft = (res.first_token_ns or res.end_ns or res.sent_ns) - res.sent_ns
            total = (res.end_ns or res.sent_ns) - res.sent_ns
            connect = (res.connect_ns or 0) / 1e6
            print(
                f"  chat ({model}): ok, connect {connect:.1f} ms, first token {ttft / 1e6:.1f} ms, total {total / 1e6:.1f} ms"
            )
        else:
            print(f"  chat ({model}): {res.error}: {res.error_detail}")
            failures += 1
            continue
        if args.probe:
            from harness.probe import format_probe, probe_policies

            print(f"  connection policies ({args.requests} streams of {args.max_tokens} tokens each):")
            print(
                format_probe(
                    probe_policies(
                        info.url, model, requests=args.requests, max_tokens=args.max_tokens, timeouts=t
                    )
                )
            )
    return 2 if failures == len(urls) else 0
