"""The host flavour registry: every embedded flavour is a `harness serve` server, and only those."""

from __future__ import annotations

import importlib

import pytest

from harness.cli import build_parser
from harness.flavours import EMBEDDED_FLAVOURS, FLAVOURS, OPENAI, flavour


def test_each_embedded_flavour_is_a_server_with_the_server_interface() -> None:
    assert set(EMBEDDED_FLAVOURS) == {"sim", "foundry"}
    for name in EMBEDDED_FLAVOURS:
        module = importlib.import_module(str(FLAVOURS[name].server))
        assert callable(module.add_arguments) and callable(module.serve), name


def test_harness_serve_offers_exactly_the_embedded_flavours(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for name in EMBEDDED_FLAVOURS:
        assert parser.parse_args(["serve", name, "--port", "0"]).server == name
    for name in set(FLAVOURS) - set(EMBEDDED_FLAVOURS):  # remote flavours cannot be served
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", name])
        assert "invalid choice" in capsys.readouterr().err


def test_unknown_flavour_is_a_plain_openai_host_and_only_foundry_can_load() -> None:
    assert flavour("no-such-flavour").name == OPENAI
    assert {f.name for f in FLAVOURS.values() if f.can_load} == {"foundry", "foundry-legacy"}
    # The probe asks status paths in registry order and falls back to `openai`, which has none.
    assert list(FLAVOURS)[-1] == OPENAI and FLAVOURS[OPENAI].status_path is None
