"""The join page in headless Chromium (fake camera and microphone) against the real service on
127.0.0.1, with the LiveKit stand-in as the configured server.

There is no media server here: what is tested is what the page does up to the media — it
loads the SDK this service serves, shows the countdown and the relayed chat, previews the
camera, asks for its LiveKit token and opens the signalling connection to the configured URL
with it, and says clearly that the video server cannot be reached.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import create_app
from core.clock import ManualClock
from core.config import Config
from core.runtime import Runtime
from rooms.client import CHECKSUM_FILE
from tests.channels.test_widget_browser import CHROMIUM_ARGS, chromium  # noqa: F401
from tests.core.test_consultations import consultation_of, matched
from tests.rooms.test_join import path_of
from tests.rooms.test_rooms import join_links
from tests.standins.livekit_api import LiveKitStandin

MEDIA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
SCREENSHOT = Path("/tmp/video-join.png")
expect.set_options(timeout=15_000)


@asynccontextmanager
async def serve(config: Config, engine: AsyncEngine, clock: ManualClock) -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(config, engine=engine, clock=clock, background=False))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def media_browser(chromium: Path) -> AsyncIterator[Browser]:  # noqa: F811
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium),
                                           args=[*CHROMIUM_ARGS, *MEDIA_ARGS])
        try:
            yield browser
        finally:
            await browser.close()


async def _open(browser: Browser, url: str, *, phone: bool = False) -> tuple[Page, list[str]]:
    context = await browser.new_context(
        viewport={"width": 390, "height": 844} if phone else {"width": 1280, "height": 800},
        permissions=["camera", "microphone"])
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    return page, errors


async def test_the_join_page_loads_the_sdk_shows_timer_and_chat_and_tries_the_server(
        media_browser: Browser, video_runtime: Runtime, video_config: Config,
        engine: AsyncEngine, clock: ManualClock, livekit_api: LiveKitStandin) -> None:
    session = await matched(video_runtime, "video15", name="Sam Lee")
    await session.customer.send("Hello from the car")  # the session is live: the timer runs
    consultation = await consultation_of(video_runtime, session.request)
    mechanic_link, = await join_links(video_runtime, session.mechanic.id)
    async with serve(video_config, engine, clock) as base:
        page, errors = await _open(media_browser, base + path_of(mechanic_link))
        # The SDK, from this service, exactly the pinned bundle.
        sdk = await page.request.get(base + "/video/livekit-client.js")
        expected = CHECKSUM_FILE.read_text().split()[0]
        assert sdk.status == 200 and hashlib.sha256(await sdk.body()).hexdigest() == expected
        assert await page.evaluate("typeof window.LivekitClient.Room") == "function"
        # The countdown, green with more than 5 minutes left.
        timer = page.locator("#timer")
        await expect(timer).to_have_text("45:00 left")
        await expect(timer).to_have_attribute("data-level", "green")
        # The relayed chat, both ways.
        await expect(page.locator("#lines li")).to_have_text(["Customer12:00Hello from the car"])
        await page.fill("#text", "Please point the camera at the front left wheel")
        await page.click("#say button")
        await expect(page.locator("#lines li.mine")).to_contain_text("front left wheel")
        assert "Sam: Please point the camera at the front left wheel" in \
            await session.customer_saw()
        # The camera preview (Chromium's fake camera).
        # (Functions, not expressions: an expression is polled with eval, which the page's
        # Content-Security-Policy rightly refuses.)
        await page.wait_for_function(
            "() => document.getElementById('local-video').videoWidth > 0")
        # It asked for its token and opened the signalling connection with it...
        await page.wait_for_function("() => window.autodoctorRoom.joined !== undefined")
        await expect(page.locator("#status")).to_contain_text("Can't reach the video server")
        assert livekit_api.connects, "the page never tried the configured LiveKit URL"
        tried = livekit_api.connects[0]
        assert tried.path.startswith("/rtc") and tried.claims is not None
        assert tried.claims.identity == f"m{consultation.mechanic_id}"
        assert tried.claims.video.room == consultation.room_name
        assert await page.locator("#status").get_attribute("data-kind") == "problem"
        await page.screenshot(path=str(SCREENSHOT))
        # The time runs out: yellow from 5 minutes, red under 1, then over.
        clock.advance(minutes=41)
        await expect(timer).to_have_attribute("data-level", "yellow")
        clock.advance(minutes=3, seconds=30)
        await expect(timer).to_have_attribute("data-level", "red")
        await page.close()
        assert errors == []


async def test_on_a_phone_the_customer_ends_the_session_from_the_page(
        media_browser: Browser, video_runtime: Runtime, video_config: Config,
        engine: AsyncEngine, clock: ManualClock, livekit_api: LiveKitStandin) -> None:
    session = await matched(video_runtime, "video15")
    customer_link, = await join_links(video_runtime, session.customer_identity)
    async with serve(video_config, engine, clock) as base:
        page, errors = await _open(media_browser, base + path_of(customer_link), phone=True)
        await expect(page.locator("#timer")).to_have_text("Starts when you join")
        # The videos above the chat, nothing wider than the phone.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        videos = await page.locator("#videos").bounding_box()
        chat = await page.locator(".chat").bounding_box()
        assert videos is not None and chat is not None and chat["y"] > videos["y"]
        await page.screenshot(path=str(SCREENSHOT.with_name("video-join-phone.png")))
        end = page.locator("#end")
        await end.click()
        await expect(end).to_have_text("Tap again to end")
        await end.click()
        await expect(page.locator("#status")).to_contain_text("The session is over")
        await expect(page.locator("#timer")).to_have_text("Session over")
        assert await page.locator("#text").is_disabled()
        consultation = await consultation_of(video_runtime, session.request)
        assert consultation.status == "completed" and livekit_api.rooms == {}
        await page.close()
        assert errors == []


async def test_when_the_sdk_cannot_be_loaded_the_page_says_so_and_the_chat_still_works(
        media_browser: Browser, video_runtime: Runtime, video_config: Config,
        engine: AsyncEngine, clock: ManualClock) -> None:
    session = await matched(video_runtime, "video15")
    customer_link, = await join_links(video_runtime, session.customer_identity)
    async with serve(video_config, engine, clock) as base:
        context = await media_browser.new_context()
        # What a browser sees when the bundle is not served (not installed, or not the pinned
        # one: tests/rooms/test_client.py).
        await context.route("**/video/livekit-client.js",
                            lambda route: route.fulfill(status=503, body="/* missing */"))
        page = await context.new_page()
        await page.goto(base + path_of(customer_link))
        await expect(page.locator("#status")).to_contain_text("video client could not be")
        await page.fill("#text", "No video for me, but hello")
        await page.click("#say button")
        await expect(page.locator("#lines li.mine")).to_contain_text("hello")
        await context.close()
