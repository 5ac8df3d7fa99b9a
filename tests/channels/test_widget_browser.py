"""The embeddable widget in headless Chromium against the real service on 127.0.0.1."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, Locator, Page, async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import create_app
from core.config import Config, with_changes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = Path("/tmp/widget.png")
VIN = "1HGCM82633A004352"
PROBLEM = "Grinding noise from the front left wheel when braking"
TIMEOUT_MS = 15_000

expect.set_options(timeout=TIMEOUT_MS)


@asynccontextmanager
async def serve(config: Config, engine: AsyncEngine, port: int = 0) -> AsyncIterator[str]:
    """Run the whole app on 127.0.0.1 (a free port unless one is given) with that address as
    its public URL, as `serve` has it; yield its base URL."""
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    config = with_changes(config, public_url=f"http://127.0.0.1:{port}")
    runner = web.AppRunner(create_app(config, engine=engine))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium; its absence skips these tests, except under CI=true."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 820})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        await context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


class WidgetUI:
    """What a person sees and does in the widget panel."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.panel = page.locator("#autodoctor-widget")
        self.bot = self.panel.locator(".ad-msg.ad-bot")
        self.me = self.panel.locator(".ad-msg.ad-me")

    async def bot_says(self, text: str) -> Locator:
        """Wait until the newest bot message contains text."""
        await expect(self.bot.last).to_contain_text(text)
        return self.bot.last

    async def tap(self, label: str) -> None:
        await self.panel.locator(".ad-btn", has_text=label).last.click()
        await expect(self.me.last).to_contain_text(label)

    async def type(self, text: str) -> None:
        await self.panel.locator("#ad-input").fill(text)
        await self.panel.locator("#ad-send").click()
        await expect(self.me.last).to_have_text(text)
        await expect(self.panel.locator("#ad-input")).to_have_value("")

    def bot_messages_with(self, text: str) -> Locator:
        return self.bot.filter(has_text=text)

    async def no_notices(self) -> None:
        await expect(self.panel.locator(".ad-notice")).to_have_count(0)


async def _open_demo(page: Page, base_url: str) -> WidgetUI:
    await page.goto(base_url + "/")
    ui = WidgetUI(page)
    await expect(ui.panel).to_be_visible()  # data-open="true" on the demo page
    await expect(page.locator("#autodoctor-launcher")).to_be_hidden()
    await expect(ui.panel.locator("#ad-status")).to_be_empty()  # connected
    return ui


async def _choose_tier_and_vin(ui: WidgetUI) -> None:
    greeting = await ui.bot_says("Which kind of help do you need?")
    await expect(greeting.locator(".ad-btn")).to_have_count(3)
    for tier in ("Quick Chat", "Standard Video", "Full Diagnostic"):
        await expect(greeting.locator(".ad-btn", has_text=tier)).to_be_visible()
    await ui.tap("Standard Video")
    await ui.bot_says("What's your first name?")
    await ui.type("Dana")
    await ui.bot_says("17-character VIN")
    await ui.type(VIN)
    await ui.bot_says("odometer")


async def _finish_intake(ui: WidgetUI) -> None:
    await ui.type("84000")
    await ui.bot_says("tell me about the problem")
    await ui.type(PROBLEM)
    await ui.bot_says("Photos help a lot")
    await ui.tap("Skip")
    summary = await ui.bot_says("Here's your request")
    await expect(summary).to_contain_text("Standard Video")
    await expect(summary).to_contain_text(VIN)
    await expect(summary).to_contain_text("84,000")
    await expect(summary).to_contain_text(PROBLEM)
    await ui.tap("Confirm and pay")
    terms = await ui.bot_says("advice, not an inspection")
    await expect(terms.locator(".ad-link")).to_have_attribute("href", re.compile(r"/terms$"))
    await ui.tap("I agree")
    paying = await ui.bot_says("Almost done!")
    link = paying.locator(".ad-link")
    await expect(link).to_have_count(1)
    await expect(link).to_have_attribute("href", re.compile(r"/pay/"))
    await expect(link).to_have_attribute("target", "_blank")
    await expect(link).to_have_attribute("rel", re.compile(r"noopener"))
    await expect(link).to_contain_text("$29.99")


async def test_customer_intake_in_the_browser(config: Config, engine: AsyncEngine,
                                              page: Page) -> None:
    async with serve(config, engine) as base_url:
        ui = await _open_demo(page, base_url)
        await _choose_tier_and_vin(ui)
        await _finish_intake(ui)
        await ui.no_notices()
        # Newlines in bot texts survive (textContent + pre-wrap), and no markup is injected.
        summary = ui.bot_messages_with("Here's your request").first
        assert "\nTier: Standard Video" in await summary.evaluate("el => el.innerText")
        await expect(ui.panel.locator(".ad-msg script, .ad-msg img")).to_have_count(0)
        await page.screenshot(path=str(SCREENSHOT))


async def test_reload_mid_intake_shows_each_message_once(config: Config, engine: AsyncEngine,
                                                         page: Page) -> None:
    async with serve(config, engine) as base_url:
        ui = await _open_demo(page, base_url)
        await _choose_tier_and_vin(ui)
        token = await page.evaluate("localStorage.getItem('autodoctor.visitor')")
        assert token

        await page.reload()
        await expect(ui.panel).to_be_visible()
        await expect(ui.panel.locator("#ad-status")).to_be_empty()
        # The transcript is back, once: the same visitor, resumed after its last message.
        assert await page.evaluate("localStorage.getItem('autodoctor.visitor')") == token
        await expect(ui.bot_messages_with("good choice")).to_have_count(1)
        await expect(ui.me.filter(has_text=VIN)).to_have_count(1)
        await ui.bot_says("odometer")

        await _finish_intake(ui)
        # Anything the server replayed would have arrived before these replies.
        await expect(ui.bot_messages_with("Which kind of help do you need?")).to_have_count(1)
        await expect(ui.bot_messages_with("good choice")).to_have_count(1)
        await expect(ui.bot_messages_with("odometer")).to_have_count(1)
        await ui.no_notices()


async def test_messages_typed_while_the_server_is_down_are_sent_after_reconnect(
        config: Config, engine: AsyncEngine, page: Page) -> None:
    async with serve(config, engine) as base_url:
        ui = await _open_demo(page, base_url)
        await _choose_tier_and_vin(ui)
        port = int(base_url.rsplit(":", 1)[1])
    # The server is gone: the widget says so and keeps what the visitor types.
    status = ui.panel.locator("#ad-status")
    await expect(status).to_contain_text("econnecting")
    await ui.panel.locator("#ad-input").fill("84000")
    await ui.panel.locator("#ad-send").click()
    await expect(ui.me.last).to_have_text("84000")
    await expect(ui.me.last).to_have_class(re.compile(r"ad-pending"))

    async with serve(config, engine, port=port):  # a restart on the same address
        await expect(status).to_be_empty()
        await ui.bot_says("tell me about the problem")
        await expect(ui.me.last).not_to_have_class(re.compile(r"ad-pending"))
        await expect(ui.bot_messages_with("good choice")).to_have_count(1)
