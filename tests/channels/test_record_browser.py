"""A customer's session record (/s/...) in headless Chromium: its text, a file, and a clear
403 for a link that is not theirs."""

from __future__ import annotations

import socket

from playwright.async_api import Browser, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.flows import route
from core.config import Config, with_changes
from core.consultations import record_url
from core.engine import Engine
from core.files import store_upload
from core.models import Consultation, Identity
from core.runtime import Runtime
from tests.channels.test_widget_browser import browser, chromium, serve  # noqa: F401
from tests.core.test_dispatch import offer, tap_accept
from tests.factories import linked_mechanic, paid_request
from tests.helpers import Chat

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def _finished_session(runtime: Runtime) -> Consultation:
    sam = await linked_mechanic(runtime, "Sam Lee", channel="console", address="sam")
    request = await paid_request(runtime)
    await offer(runtime, request)
    engine = Engine(runtime, route)
    await tap_accept(engine, sam, request.ref)
    customer, mechanic = Chat(engine, "console", "cust"), Chat(engine, "console", "sam")
    async with runtime.transaction() as uow:
        me = await uow.session.scalar(select(Identity).where(Identity.address == "cust"))
        assert me is not None
        photo = await store_upload(uow.session, runtime.config, me.id, PNG, "dash.png",
                                   runtime.clock.now())
    await customer.send("The brake light <b>flickers</b>", attachments=(photo.public_id,))
    await mechanic.send("Check the brake fluid level first.")
    await mechanic.send("end")
    await mechanic.send("Low brake fluid; top up and inspect the pads.")
    async with runtime.sessions() as s:
        consultation = await s.scalar(select(Consultation))
    assert consultation is not None and consultation.mechanic_notes is not None
    return consultation


async def test_the_session_record_reads_on_a_phone_with_its_file_and_refuses_others(
        config: Config, engine: AsyncEngine, runtime: Runtime,
        browser: Browser) -> None:  # noqa: F811 - the fixture
    with socket.socket() as probe:  # a free port, so that links name the served address
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = with_changes(config, public_url=f"http://127.0.0.1:{port}")
    runtime.config = config
    async with serve(config, engine, port) as base:
        assert base == config.public_url
        consultation = await _finished_session(runtime)
        url = record_url(runtime.config, consultation, runtime.clock.now())
        context = await browser.new_context(viewport={"width": 390, "height": 844})
        page = await context.new_page()
        response = await page.goto(url)
        assert response is not None and response.status == 200
        await expect(page.locator("h1")).to_contain_text("Session R-")
        await expect(page.locator("body")).to_contain_text("Low brake fluid; top up")
        await expect(page.locator("body")).to_contain_text("Check the brake fluid level first.")
        # Escaped, shown as the customer wrote it.
        await expect(page.locator(".text", has_text="<b>flickers</b>")).to_have_count(1)
        await expect(page.locator("body")).to_contain_text("9.99 USD")  # the receipt
        file_link = page.locator("a", has_text="dash.png").first
        await expect(file_link).to_be_visible()
        href = await file_link.get_attribute("href")
        assert href is not None
        opened = await page.request.get(href)
        assert opened.status == 200 and await opened.body() == PNG
        bad = await page.goto(url[:-3] + "abc")
        assert bad is not None and bad.status == 403
        await expect(page.locator("h1")).to_have_text("This link can't be opened")
        await context.close()
