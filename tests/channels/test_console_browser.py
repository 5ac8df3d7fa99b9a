"""The mechanic workspace at /m/{invite} in headless Chromium against the real service: an
offer arrives (sound, desktop notification, title count), Accept takes it, the job shows its
intake and photo, the conversation is relayed, availability is switched."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from core.config import Config
from core.mechanics import invite_mechanic
from core.runtime import Runtime
from tests.channels.test_widget_browser import browser, chromium, serve  # noqa: F401
from tests.channels.test_widget_ws import GOOD_VIN, PNG, Widget
from tests.helpers import pay_offline

TITLE = "Mechanic console · AutoDoctor"
# Records what the page asks the browser for: desktop notifications and tones (the page's
# own code runs unchanged; the browser's constructors are wrapped to count the calls).
RECORD_ALERTS = """
window.__alerts = [];
if (window.Notification) {
  const Real = window.Notification;
  window.Notification = class extends Real {
    constructor(title, options) {
      window.__alerts.push({kind: "notification", title: title, body: options && options.body});
      super(title, options);
    }
  };
}
const start = OscillatorNode.prototype.start;
OscillatorNode.prototype.start = function (...args) {
  window.__alerts.push({kind: "tone"});
  return start.apply(this, args);
};
"""


@pytest.fixture
async def console_page(browser: Browser) -> AsyncIterator[Page]:  # noqa: F811 - the fixture
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    await context.add_init_script(RECORD_ALERTS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        await context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


async def _customer_pays_with_a_photo(http: aiohttp.ClientSession) -> Widget:
    customer = Widget(http)  # type: ignore[arg-type] - a client session speaks the same
    await customer.connect()
    await customer.expect()
    await customer.tap("Quick Chat")
    await customer.say("Dana")
    await customer.say(GOOD_VIN, replies=2)
    await customer.say("84000")
    await customer.say("Battery dies overnight")
    form = aiohttp.FormData()
    form.add_field("file", PNG, filename="dash.png", content_type="image/png")
    uploaded = await http.post("/widget/upload", data=form,
                               headers={"X-Visitor-Token": customer.visitor or ""})
    assert uploaded.status == 201
    assert "1 file attached" in await customer.say(
        "", attachments=[(await uploaded.json())["file"]])
    await customer.tap("Done")
    await customer.tap("Confirm and pay")  # the terms first
    (pay,) = await customer.tap("I agree")
    paid = await pay_offline(http, "/" + pay["link"]["url"].split("/", 3)[3])
    assert paid.status == 200
    (received,) = await customer.expect()
    assert received["text"].startswith("Payment received")
    return customer


async def test_the_mechanic_workspace(config: Config, engine: AsyncEngine, runtime: Runtime,
                                      console_page: Page) -> None:
    page = console_page
    async with serve(config, engine) as base_url, \
            aiohttp.ClientSession(base_url=base_url) as http:
        await page.context.grant_permissions(["notifications"], origin=base_url)
        async with runtime.sessions.begin() as s:  # the served app keeps real time
            code = (await invite_mechanic(s, config, "Sam Lee", datetime.now(UTC))).invite_code
        await page.goto(f"{base_url}/m/{code}")
        # A full page: the conversation inline, no corner launcher meant for customers.
        chat = page.locator("#console-chat #autodoctor-widget")
        await expect(chat).to_be_visible()
        await expect(chat.locator(".ad-bot").first).to_contain_text("Welcome, Sam Lee!")
        await expect(page.locator("#autodoctor-launcher")).to_have_count(0)
        await expect(page.get_by_text("Chat with a mechanic")).to_have_count(0)
        await expect(page.locator("#console-who")).to_contain_text("Sam Lee")
        await expect(page.locator("#console-no-offers")).to_be_visible()
        await expect(page.locator("#console-job")).to_contain_text("No job right now")
        await expect(page.locator("#console-earnings")).to_contain_text("$0.00")
        await expect(page.locator("#console-history")).to_contain_text("No sessions yet")
        await expect(page).to_have_title(TITLE)
        await page.get_by_role("button", name="Turn on alerts for new requests").click()
        await expect(page.locator("#console-alerts")).to_have_text(
            "Alerts on: sound and notifications")

        # Availability, through the chat's own words ("away", "available").
        toggle = page.locator("#console-toggle")
        await toggle.click()
        await expect(page.locator("#console-availability")).to_contain_text("You're away")
        await expect(chat.locator(".ad-me").last).to_have_text("away")
        await expect(toggle).to_have_text("Become available")
        await toggle.click()
        await expect(page.locator("#console-availability")).to_contain_text("You're available")
        await expect(toggle).to_have_text("Go away")

        customer = await _customer_pays_with_a_photo(http)
        offer = page.locator("#console-offers .offer")
        await expect(offer).to_have_count(1)
        ref = re.search(r"R-\d+", await offer.locator("h3").inner_text())
        assert ref is not None
        await expect(offer).to_contain_text("Quick Chat (30 min)")
        await expect(offer).to_contain_text("$8.00")
        await expect(offer).to_contain_text("84,000 mi")
        await expect(offer).to_contain_text("Battery dies overnight")
        await expect(page).to_have_title(f"(1) {TITLE}")
        alerts = await page.evaluate("window.__alerts")
        body = f"Quick Chat · 2003 Honda (VIN {GOOD_VIN})\nBattery dies overnight"
        assert {"kind": "notification", "title": f"New request {ref[0]}", "body": body} in alerts
        assert sum(a["kind"] == "tone" for a in alerts) == 2

        # Accept: the offer's own action, through the conversation's socket.
        await offer.get_by_role("button", name=f"Accept {ref[0]}").click()
        job = page.locator("#console-job")
        await expect(job.locator("h3").first).to_have_text(
            f"{ref[0]} · Quick Chat with Dana")
        await expect(page.locator("#console-offers .offer")).to_have_count(0)
        await expect(page).to_have_title(TITLE)
        await expect(job).to_contain_text("waiting for the customer to write")
        await expect(job).to_contain_text("Battery dies overnight")
        photo = job.locator(".photos a")
        await expect(photo).to_have_count(1)
        await expect(photo).to_contain_text("dash.png")
        # The signed link opens, with the very bytes uploaded.
        href = await photo.get_attribute("href")
        assert await page.evaluate("url => fetch(url).then(r => r.arrayBuffer())"
                                   ".then(b => b.byteLength)", href) == len(PNG)
        await expect(chat.locator(".ad-me").last).to_have_text(f"Accept {ref[0]}")
        await expect(chat.locator(".ad-bot").last).to_contain_text(f"It's yours: {ref[0]}")

        # The conversation is relayed both ways.
        assert customer.ws is not None
        await customer.expect()  # matched
        await customer.ws.send_json({"type": "message", "text": "Hi, it's a 2003 Accord"})
        await expect(chat.locator(".ad-bot", has_text="Hi, it's a 2003 Accord")).to_have_count(1)
        await chat.locator("#ad-input").fill("Hello! When did it start?")
        await chat.locator("#ad-input").press("Enter")
        while True:
            (relayed,) = await customer.expect()
            if "Hello! When did it start?" in relayed["text"]:
                break
        await expect(job).to_contain_text("under way")
        # During a job the chat is the customer's: availability waits for its end.
        await expect(page.locator("#console-toggle")).to_be_disabled()
        await expect(page.locator("#console-availability")).to_contain_text("after this job")
        await customer.ws.close()
