"""The web viewer in a real browser: Debian's headless Chromium driven by Playwright.

The browser opens the sign-in link of a report that is still being generated; the test
stores its components one by one (as the worker's activities do) and watches the
sections appear through server-sent events, then downloads the PDF. A screenshot of the
finished page is saved to ``test-artifacts/viewer.png``.

Chromium comes from the Debian package ``chromium``: the ``browser`` fixture installs it
with apt when it is missing (as the Node test installs its npm packages), so the README's
test command needs no extra step. Playwright never downloads a browser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from temporalio.testing import WorkflowEnvironment

from bench.report_components import demo_components
from tests.integration import report_data
from tests.integration.reporting_stack import K, Md, Stack, reporting_stack

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
async def stack(
    new_database: Callable[[str], Awaitable[str]],
    temporal_env: WorkflowEnvironment,
    token_for: Callable[..., Md],
) -> AsyncIterator[Stack]:
    async with reporting_stack(new_database, temporal_env.client, token_for, dev_mode=True) as s:
        yield s


def ensure_chromium() -> str:
    """Debian's chromium, installed from the distribution's registry if missing."""
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.fail(f"{CHROMIUM} is missing: install the Debian package 'chromium'")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            check=True,
            env=env,
            capture_output=True,
        )
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    ensure_chromium()
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield b
        await b.close()


async def new_page(browser: Browser, requests: list[str], problems: list[str]) -> Page:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    page = await context.new_page()
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    return page


async def test_sections_appear_live_and_the_pdf_downloads(stack: Stack, browser: Browser) -> None:
    org = "org-browser"
    components: dict[str, Any] = demo_components(600)
    report = await stack.generate(org, kind=K.REPORT_KIND_FULL)
    await report_data.start(stack.pool, report.id)
    base = f"http://127.0.0.1:{stack.reporting.handle.web_port}"  # type: ignore[attr-defined]
    token = dict(stack.token_for(org, role="viewer"))["authorization"].removeprefix("Bearer ")
    requests: list[str] = []
    problems: list[str] = []
    page = await new_page(browser, requests, problems)

    # The sign-in link sets the cookie and lands on the clean URL of the running report.
    await page.goto(f"{base}/reports/{report.id}?token={token}")
    assert page.url == f"{base}/reports/{report.id}"
    await expect(page.locator("#report")).to_have_attribute("data-running", "true")
    await expect(page.locator("#download-pdf")).to_have_class("button primary disabled")
    await expect(page.locator("#themes.section-pending")).to_be_visible()

    # Each component the worker stores shows up without a reload.
    await report_data.store_components(stack.pool, report.id, components, ["basic_stats"])
    await expect(page.locator("#overview .kpi").first).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#progress")).to_be_visible()
    await report_data.store_components(
        stack.pool, report.id, components, ["question_stats", "nps", "csat", "segments"]
    )
    await expect(page.locator("#questions .question")).to_have_count(
        len(components["question_stats"]["questions"]), timeout=WAIT_MS
    )
    await expect(page.locator("#nps .big")).to_be_visible()
    await report_data.store_components(stack.pool, report.id, components, ["sentiment"])
    await expect(page.locator("#sentiment blockquote.quote").first).to_be_visible(timeout=WAIT_MS)
    # The hostile quote is text on the page; no script ran (no dialog was opened).
    await expect(page.get_by_text('<script>alert("pwned")</script>', exact=False)).to_have_count(1)
    await report_data.store_components(stack.pool, report.id, components, ["themes"])
    await expect(page.locator("#themes .theme").first).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#themes.section-pending")).to_have_count(0)

    # Charts arrive with the visualizations and are drawn by the local vega-embed.
    await report_data.store_components(stack.pool, report.id, components, ["visualizations"])
    await expect(
        page.locator('#questions figure.chart[data-embedded="done"] svg').first
    ).to_be_visible(timeout=WAIT_MS)
    await report_data.store_components(stack.pool, report.id, components, ["summary"])
    await report_data.complete(stack.pool, report.id)
    await expect(page.locator("#report")).to_have_attribute(
        "data-state", "REPORT_STATE_COMPLETED", timeout=WAIT_MS
    )
    await expect(page.locator("#report-state")).to_have_text("Completed")
    await expect(page.locator("#progress")).to_be_hidden()
    charts = len(components["visualizations"]["charts"])
    try:
        await expect(page.locator('figure.chart[data-embedded="done"]')).to_have_count(
            charts, timeout=WAIT_MS
        )
    except AssertionError:
        # Name the charts that did not draw, and why, instead of only counting them.
        states = await page.eval_on_selector_all(
            "figure.chart",
            "fs => fs.map(f => [f.id || f.dataset.chart, f.getAttribute('data-embedded')])",
        )
        raise AssertionError(
            f"charts not drawn: {[s for s in states if s[1] != 'done']}; problems: {problems}"
        ) from None

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)

    async with page.expect_download(timeout=120_000) as info:
        await page.click("#download-pdf")
    download = await info.value
    assert download.suggested_filename == f"report-{report.id}.pdf"
    path = await download.path()
    assert path is not None and Path(path).read_bytes().startswith(b"%PDF-")

    assert problems == []
    # Everything came from the viewer itself: no CDN, no other origin.
    assert requests and all(url.startswith(base + "/") for url in requests), requests


async def test_a_completed_report_opens_without_a_stream(stack: Stack, browser: Browser) -> None:
    org = "org-browser-done"
    report = await stack.generate(org, kind=K.REPORT_KIND_FULL)
    await report_data.store_report(stack.pool, report.id, demo_components(600))
    base = f"http://127.0.0.1:{stack.reporting.handle.web_port}"  # type: ignore[attr-defined]
    token = dict(stack.token_for(org, role="viewer"))["authorization"].removeprefix("Bearer ")
    requests: list[str] = []
    problems: list[str] = []
    page = await new_page(browser, requests, problems)
    await page.goto(f"{base}/reports/{report.id}?token={token}")
    await expect(page.locator("#report-state")).to_have_text("Completed")
    await expect(page.locator("#download-pdf")).to_have_class("button primary")
    await expect(page.locator("figure.chart[data-embedded='done']").first).to_be_visible(
        timeout=WAIT_MS
    )
    assert not [u for u in requests if "/events" in u]
    assert problems == []
