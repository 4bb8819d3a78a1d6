"""`report.html` in headless Chromium: the page needs no network, every plot renders with a size and
drawn marks, and a screenshot lands in `test-artifacts/` for people to look at.

Needs Debian's `chromium` (`apt-get install -y chromium`) and Playwright for Python driving it; the
browser Playwright would download is never used.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness_helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from recordgen import record, write_run

from harness.report import build

pytestmark = pytest.mark.browser

#: Figures the report draws: 2 CDFs, 2 latency-against-throughput, tokens and errors over time, events per read.
FIGURES = 7


def sweep(run_dir: Path) -> Path:
    """Two hosts, stages at concurrency 1, 4 and 16 (TTFT and throughput rising), a few errors."""
    recs = []
    for h, host in enumerate(("http://10.0.0.1:5273/v1", "http://10.0.0.2:5273/v1")):
        for s, users in enumerate((1, 4, 16)):
            n = 20 * users
            for i in range(n):
                t = s * 20 + i * 20 / n
                if i % 37 == 5:
                    recs.append(
                        record(
                            t_s=t,
                            host=host,
                            stage=f"c{users}",
                            users=users,
                            ok=False,
                            error="timeout",
                            ttft_ms=None,
                            tokens=0,
                            e2e_ms=3000.0,
                        )
                    )
                else:
                    ttft = 80.0 + 15 * users + (i % 7) * 4 + 10 * h
                    recs.append(
                        record(
                            t_s=t,
                            host=host,
                            stage=f"c{users}",
                            users=users,
                            ttft_ms=ttft,
                            tokens=20 + i % 30,
                            tpot_ms=8.0 + users / 4,
                            content_reads=10 + i % 10,
                        )
                    )
    return write_run(run_dir, recs, slo={"ttft_ms": 300.0})


def test_report_html_renders_every_plot(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs Playwright for Python (pip install playwright)"
    )
    run = sweep(tmp_path / "run")
    build([run], run, formats=["html"])
    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith("file:") else None)
            page.goto((run / "report.html").as_uri(), wait_until="load")
            charts = page.eval_on_selector_all(
                "svg.chart",
                """els => els.map(e => {
                    const box = e.getBoundingClientRect();
                    return {label: e.getAttribute('aria-label'), width: box.width, height: box.height,
                            marks: e.querySelectorAll('polyline, rect, circle').length};
                })""",
            )
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert outside == []
    assert len(charts) == FIGURES
    for chart in charts:
        assert chart["width"] > 100 and chart["height"] > 100, chart
        assert chart["marks"] > 0, chart
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
