"""Connection policies against real hosts: Foundry Local's Nagle artefact, and a host without one.

These compare medians of the same requests over the three policies, side by side in one process;
the figures are ratios and differences of tens of ms (Foundry) or a bound of 1 ms (the sim,
whose timing is exact), so a noisy machine moves them little. A comparison that a burst of load
on the machine upsets is tried again, at most three times.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from harness_helpers import sim_host

from harness.probe import PolicyFigures, format_probe, probe_policies

pytestmark = pytest.mark.slow


def by_policy(figures: list[PolicyFigures]) -> dict[str, PolicyFigures]:
    return {f.policy: f for f in figures}


def settle(check: Callable[[], str | None], tries: int = 3) -> None:
    why = None
    for _ in range(tries):
        why = check()
        if why is None:
            return
    pytest.fail(why or "")


@pytest.mark.foundry
def test_foundry_reuse_pays_nagle_and_quickack_does_not() -> None:
    from harness.servers.foundry import start_foundry_host

    host = start_foundry_host()
    try:

        def check() -> str | None:
            figs = probe_policies(host.base_url, host.models[0], requests=12, max_tokens=64)
            p = by_policy(figs)
            reuse, new, quick = p["reuse"].ttft_ms_p50, p["new"].ttft_ms_p50, p["reuse-quickack"].ttft_ms_p50
            assert reuse is not None and new is not None and quick is not None
            text = format_probe(figs)
            if not (30 < reuse - new < 50 and 30 < reuse - quick < 50):
                return f"expected reuse ~40 ms above new and quickack:\n{text}"
            if (p["reuse"].tokens_per_read_p50 or 0) < 16:
                return f"expected the reused connection's tokens in bursts:\n{text}"
            if "Nagle" not in text:
                return f"probe did not name the pattern:\n{text}"
            return None

        settle(check)
    finally:
        host.stop()


def test_sim_sets_nodelay_so_policies_agree() -> None:
    with sim_host("--ttft-ms", "30", "--itl-ms", "2") as sim:

        def check() -> str | None:
            figs = probe_policies(sim.base_url, sim.models[0], requests=15, max_tokens=16)
            ttft = [f.ttft_ms_p50 for f in figs]
            tpot = [f.tpot_ms_p50 for f in figs]
            assert None not in ttft and None not in tpot
            if max(ttft) - min(ttft) >= 1.0 or max(tpot) - min(tpot) >= 1.0:  # type: ignore[operator,type-var]
                return f"policies disagree by 1 ms or more:\n{format_probe(figs)}"
            return None

        settle(check)
