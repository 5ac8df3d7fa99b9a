"""The admin site in headless Chromium against the real service on 127.0.0.1, with the test's
clock: log in, watch a request go unattended, assign it; filter intakes and download the CSV;
invite a mechanic."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web
from playwright.async_api import Browser, Page, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import create_app
from core.clock import ManualClock
from core.config import Config
from core.models import SessionRequest
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.admin_web.conftest import EMAIL, PASSWORD, make_admin, paid_request
from tests.billing.helpers import awaiting_payment
from tests.factories import linked_mechanic

SCREENSHOT = Path("/tmp/admin-dashboard.png")


@asynccontextmanager
async def serve(config: Config, engine: AsyncEngine, clock: ManualClock) -> AsyncIterator[str]:
    """The whole app on a free port, on the test's clock, with no scheduler (the test runs
    the sweeps when it has moved the clock)."""
    runner = web.AppRunner(create_app(config, engine=engine, clock=clock, background=False))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def _page(browser: Browser) -> tuple[Page, list[str]]:
    context = await browser.new_context(viewport={"width": 1320, "height": 900},
                                        accept_downloads=True)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


async def _log_in(page: Page, base: str) -> None:
    await page.goto(base + "/admin/unattended")
    await expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    await page.get_by_label("Email").fill(EMAIL)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(re.compile(r"/admin/unattended$"))


async def test_an_admin_sees_a_request_go_unattended_and_assigns_it(
        config: Config, engine: AsyncEngine, clock: ManualClock, runtime: Runtime,
        browser: Browser) -> None:
    await make_admin(runtime)
    sam = await linked_mechanic(runtime, "Sam Lee", channel="console", address="sam")
    await linked_mechanic(runtime, "Ann Ray", channel="console", address="ann")
    request = await paid_request(runtime, "video15", channel="console", address="dana")
    page, errors = await _page(browser)
    async with serve(config, engine, clock) as base:
        await _log_in(page, base)
        await expect(page.locator("#queue-empty")).to_be_visible()
        # Five minutes pass with nobody accepting: the page shows it by itself.
        clock.advance(301)
        assert (await run_sweeps(runtime)).unattended == 1
        row = page.locator(f'tr[data-ref="{request.ref}"]')
        await expect(row).to_be_visible(timeout=15_000)
        await expect(row).to_contain_text("Standard Video")
        await expect(row).to_contain_text("Grinding noise from the front wheel")
        await expect(row).to_contain_text("5 min")
        await row.locator("select").select_option(label="Sam Lee")
        await row.get_by_role("button", name="Assign").click()
        await expect(page.locator(".notice")).to_have_text(
            f"{request.ref} is now Sam Lee's: both have been told.")
        await expect(page.locator("#queue-empty")).to_be_visible()
        # Accepted: the sessions page has it, waiting for the customer.
        await page.get_by_role("link", name="Sessions").click()
        session_row = page.locator("#sessions tr", has_text=request.ref)
        await expect(session_row).to_contain_text("Sam Lee")
        await expect(session_row).to_contain_text("waiting")
        await page.get_by_role("link", name="Dashboard").click()
        await expect(page.locator("#unattended-now")).to_have_text("0")
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
    async with runtime.sessions() as s:
        found = await s.scalar(select(SessionRequest).where(SessionRequest.id == request.id))
    assert found is not None and (found.status, found.mechanic_id) == ("accepted",
                                                                      sam.mechanic_id)
    assert errors == []


async def test_an_admin_filters_intakes_downloads_the_csv_and_invites_a_mechanic(
        config: Config, engine: AsyncEngine, clock: ManualClock, runtime: Runtime,
        browser: Browser) -> None:
    await make_admin(runtime)
    for make, plan, address in (("Honda", "chat10", "a"), ("Toyota", "video15", "b"),
                                ("Subaru", "video15", "c")):
        await awaiting_payment(runtime, plan, make=make, address=address)
    page, errors = await _page(browser)
    async with serve(config, engine, clock) as base:
        await _log_in(page, base)
        await page.get_by_role("link", name="Intakes").click()
        await expect(page.locator("#intakes tbody tr")).to_have_count(3)
        await page.get_by_label("Tier").select_option(label="Standard Video")
        await page.get_by_label("Search").fill("subaru")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("#intakes tbody tr")).to_have_count(1)
        await expect(page.locator("#intakes")).to_contain_text("Subaru")
        async with page.expect_download() as info:
            await page.locator("#intakes-csv").click()
        download = await info.value
        assert download.suggested_filename.startswith("intakes-")
        text = await asyncio.to_thread(Path(await download.path()).read_text)
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["make"], r["tier"]) for r in rows] == [("Subaru", "video15")]

        await page.get_by_role("link", name="Mechanics").click()
        await page.get_by_label("Name").fill("Ann Ray")
        await page.get_by_label("senior").check()
        await page.get_by_role("button", name="Invite").click()
        await expect(page.locator(".notice")).to_contain_text("Invite made")
        await expect(page.locator("h1")).to_contain_text("Ann Ray")
        invite = page.locator("#invites .invite")
        await expect(invite).to_have_count(1)
        await expect(invite.locator(".qr svg")).to_be_visible()
        await expect(invite).to_contain_text("https://t.me/AutoDoctorBot?start=m_")
        await expect(invite).to_contain_text("JOIN ")
        code = re.search(r"start=m_([A-Z0-9]+)", await invite.inner_text())
        assert code is not None
        # The web link opens that mechanic's console.
        await expect(invite.locator(f'a[href$="/m/{code.group(1)}"]')).to_have_count(1)
    assert errors == []
