"""widget.js after a drain (bot/drain.py) in headless Chromium: a socket closed with 1012
(service restart) reconnects at once, with the page's timers stood still; any other close
waits for its backoff."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from playwright.async_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import create_app
from bot.drain import DRAIN
from channels.web.ws import WidgetSocket
from core.config import Config, with_changes
from tests.channels.test_widget_browser import (  # noqa: F401 - fixtures
    VIN,
    _open_demo,
    browser,
    chromium,
    page,
)


@asynccontextmanager
async def serve(config: Config, engine: AsyncEngine) -> AsyncIterator[tuple[str, WidgetSocket]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = with_changes(config, public_url=f"http://127.0.0.1:{port}")
    app = create_app(config, engine=engine)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", app[DRAIN].sockets
    finally:
        await runner.cleanup()


async def test_a_service_restart_close_reconnects_at_once_others_back_off(
        config: Config, engine: AsyncEngine, page: Page) -> None:  # noqa: F811 - the fixture
    await page.clock.install()
    async with serve(config, engine) as (base_url, sockets):
        ui = await _open_demo(page, base_url)
        await ui.bot_says("Which kind of help do you need?")
        await ui.tap("Quick Chat")
        await ui.bot_says("What's your first name?")
        await ui.type("Dana")
        await ui.bot_says("17-character VIN")
        await ui.type(VIN)
        await ui.bot_says("odometer")
        status = ui.panel.locator("#ad-status")
        # From here the page's timers stand still unless the test moves its clock.
        await page.clock.pause_at(await page.evaluate("Date.now()") + 100)

        # The drain's close (on another process behind a proxy this one would answer).
        [first] = sockets.open
        await first.close(code=1012, message=b"service restart")
        await _reconnected(sockets, first)  # no timer has run
        await expect(status).to_be_empty()
        await ui.type("84000")  # the conversation goes on where it was
        await ui.bot_says("tell me about the problem")
        await expect(ui.bot_messages_with("odometer")).to_have_count(1)  # nothing twice

        # Any other close: the widget waits for its backoff (1 s first).
        [second] = sockets.open
        await second.close(code=1011, message=b"internal error")
        await expect(status).to_contain_text("econnecting")
        assert sockets.open == set()
        await page.clock.run_for(1500)
        await _reconnected(sockets, second)
        await expect(status).to_be_empty()


async def _reconnected(sockets: WidgetSocket, closed: web.WebSocketResponse) -> None:
    for _ in range(1000):
        if sockets.open and closed not in sockets.open:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the widget did not reconnect")
