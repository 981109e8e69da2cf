"""The Sync Logs page in a real headless Chromium: log in, filter, retry, at desktop and phone widths."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog.testing

from reconciler.store import Store
from tests.support.admin import TOKEN, RunningAdmin, running_admin

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() and os.environ.get("CI") != "true",
        reason="needs Debian chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

playwright_api = pytest.importorskip("playwright.async_api")


@pytest.fixture
async def admin(mongo_uri: str, database_name: str) -> AsyncIterator[RunningAdmin]:
    store = await Store.connect(mongo_uri, database_name)
    await store.ensure_indexes()
    with structlog.testing.capture_logs():
        async with running_admin(store) as running:
            yield running
    await store.close()


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def test_log_in_filter_and_retry(admin: RunningAdmin, browser: object, tmp_path: Path) -> None:
    """An admin logs in, filters by status and by record, retries a failure and sees it succeed."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = await context.new_page()

    await page.goto(admin.url + "/logs")
    await page.fill("#token", TOKEN)
    await page.click("button:has-text('Log in')")
    rows = page.locator("table.logs tbody tr")
    assert await rows.count() == 6
    assert await page.locator(".strip").inner_text() != ""

    await page.select_option("select[name=status]", "failed")
    await page.click("button:has-text('Filter')")
    assert await rows.count() == 2
    assert await page.locator("tr.row-success").count() == 0

    # the funnel next to a record id shows every action on that record
    lead_row = page.locator("tr", has_text="INVALID_EMAIL_ADDRESS")
    await lead_row.locator("a.filter").first.click()
    assert page.url.endswith("/logs?record=00Q000000000001AAA")
    assert await rows.count() == 2
    link = page.locator("a", has_text="00Q000000000001AAA").first
    assert await link.get_attribute("href") == (
        "https://example.my.salesforce.com/lightning/r/Lead/00Q000000000001AAA/view")

    await page.locator("tr.row-failed button:has-text('Retry')").click()
    assert "notice=retried" in page.url
    assert await page.locator(".notice.ok").is_visible()
    newest = rows.first
    assert "merge" in await newest.inner_text()
    assert await newest.get_attribute("class") == "row-success"
    assert "retried" in await page.locator("tr.row-failed").inner_text()
    assert admin.jobs.calls == [("retry", admin.log_ids[1])]

    await page.goto(admin.url + "/logs")
    await page.screenshot(path=str(tmp_path / "sync-logs-1280.png"), full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.screenshot(path=str(tmp_path / "sync-logs-390.png"), full_page=True)
    # on a phone the table is stacked cards: no header row, no sideways scrolling
    assert not await page.locator("table.logs thead").is_visible()
    scroll_width = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= 390
    await context.close()


async def test_wrong_token_stays_on_the_login_form(admin: RunningAdmin, browser: object) -> None:
    """A wrong token shows an error and no sync logs."""
    page = await browser.new_page()  # type: ignore[attr-defined]
    await page.goto(admin.url + "/logs")
    await page.fill("#token", "not-the-token")
    await page.click("button:has-text('Log in')")
    assert "not right" in await page.locator(".notice.error").inner_text()
    assert await page.locator("table.logs").count() == 0
