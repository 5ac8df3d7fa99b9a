"""The widget, the demo page and the mechanic workspace on a phone and with the keyboard, in
headless Chromium: control sizes, font size, contrast, where focus goes, no full-screen chat
before the visitor has seen the page; axe-core finds nothing serious and Lighthouse's
accessibility score is 100 (both from the root package.json's pinned devDependencies)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from core.config import Config
from core.mechanics import invite_mechanic
from core.runtime import Runtime
from tests.channels.test_widget_browser import CHROMIUM, browser, chromium, serve  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
LIGHTHOUSE = ROOT / "tests" / "tools" / "lighthouse.mjs"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
TOUCH_PX = 44


@pytest.fixture
def dev_tools() -> Path:
    """node_modules from the root package.json (make test installs it)."""
    if not AXE.exists():
        message = "node_modules is missing (make test runs npm ci for it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)
    return AXE


async def _page(browser: Browser, viewport: dict[str, int]) -> Page:  # noqa: F811
    phone = viewport["width"] < 600
    # bypass_csp: axe is added to the page as a script of its own.
    context = await browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone,
                                        bypass_csp=True)
    return await context.new_page()


@pytest.fixture
async def phone(browser: Browser) -> AsyncIterator[Page]:  # noqa: F811 - the fixture
    page = await _page(browser, PHONE)
    yield page
    await page.context.close()


@pytest.fixture
async def desktop(browser: Browser) -> AsyncIterator[Page]:  # noqa: F811 - the fixture
    page = await _page(browser, DESKTOP)
    yield page
    await page.context.close()


async def _greeted(page: Page) -> None:
    panel = page.locator("#autodoctor-widget")
    await expect(panel).to_be_visible()
    await expect(panel.locator(".ad-bot").last.locator(".ad-btn")).to_have_count(3)


async def test_demo_waits_on_phones_and_chat_links_open_the_widget(
        config: Config, engine: AsyncEngine, phone: Page, desktop: Page) -> None:
    async with serve(config, engine) as base_url:
        await phone.goto(base_url + "/")
        launcher = phone.locator("#autodoctor-launcher")
        await expect(launcher).to_be_visible()
        await expect(phone.locator("#autodoctor-widget")).to_be_hidden()
        await phone.get_by_role("link", name="Chat with a mechanic").click()
        await _greeted(phone)
        # The paid page's way back: /#chat opens it at load, on a phone too.
        await phone.goto("about:blank")
        await phone.goto(base_url + "/#chat")
        await _greeted(phone)
        # On a wide screen data-open="true" still opens it beside the page.
        await desktop.goto(base_url + "/")
        await _greeted(desktop)


async def test_every_widget_control_fits_a_finger_on_a_phone(
        config: Config, engine: AsyncEngine, phone: Page) -> None:
    async with serve(config, engine) as base_url:
        await phone.goto(base_url + "/#chat")
        await _greeted(phone)
        panel = phone.locator("#autodoctor-widget")
        controls = {"chip": panel.locator(".ad-btn").first, "close": panel.locator(".ad-close"),
                    "attach": panel.locator(".ad-attach"), "send": panel.locator("#ad-send"),
                    "input": panel.locator("#ad-input")}
        for name, control in controls.items():
            box = await control.bounding_box()
            assert box is not None and box["height"] >= TOUCH_PX, (name, box)
        close = await controls["close"].bounding_box()
        assert close is not None and close["width"] >= TOUCH_PX, close
        # 16 px: iOS does not zoom into the input.
        assert await controls["input"].evaluate("el => getComputedStyle(el).fontSize") == "16px"
        # Full height by the dynamic viewport, so Safari's toolbar does not cover the input.
        heights = await phone.evaluate("""() => {
            const sheet = document.getElementById("autodoctor-widget-style").sheet;
            const phone = [...sheet.cssRules]
                .find(r => r.media && r.media.mediaText.includes("480px"));
            const rule = phone.cssRules[0].style;
            return [rule.height, rule.maxHeight];
        }""")
        assert heights == ["100dvh", "100dvh"]
        input_box = await controls["input"].bounding_box()
        assert input_box is not None and input_box["y"] + input_box["height"] <= PHONE["height"]
        await controls["close"].click()
        launcher = await phone.locator("#autodoctor-launcher").bounding_box()
        assert launcher is not None and launcher["height"] >= TOUCH_PX


def _luminance(rgb: tuple[int, ...]) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def _colours(css: str) -> list[tuple[int, ...]]:
    return [tuple(int(float(n)) for n in m.split(",")[:3])
            for m in re.findall(r"rgba?\(([^)]*)\)", css)]


async def test_widget_header_text_reads_on_every_part_of_its_gradient(
        config: Config, engine: AsyncEngine, desktop: Page) -> None:
    async with serve(config, engine) as base_url:
        await desktop.goto(base_url + "/")
        await _greeted(desktop)
        head = desktop.locator("#autodoctor-widget .ad-head")
        stops = _colours(await head.evaluate("el => getComputedStyle(el).backgroundImage"))
        assert len(stops) >= 2
        for text in (head.locator(".ad-title"), head.locator(".ad-sub"),
                     head.locator(".ad-close")):
            style = await text.evaluate("el => [getComputedStyle(el).color, "
                                        "getComputedStyle(el).opacity]")
            assert style[1] == "1"
            (colour,) = _colours(style[0])
            worst = min(contrast(colour, stop) for stop in stops)
            assert worst >= 4.5, (await text.inner_text(), stops, worst)


async def test_focus_returns_to_the_input_after_a_button_and_to_the_launcher_after_closing(
        config: Config, engine: AsyncEngine, desktop: Page) -> None:
    focused = "() => document.activeElement && document.activeElement.id"
    async with serve(config, engine) as base_url:
        await desktop.goto(base_url + "/")
        await _greeted(desktop)
        panel = desktop.locator("#autodoctor-widget")
        await panel.locator(".ad-btn", has_text="Quick Chat").click()
        await expect(panel.locator(".ad-btn", has_text="Quick Chat")).to_be_disabled()
        assert await desktop.evaluate(focused) == "ad-input"
        await panel.locator(".ad-close").click()
        assert await desktop.evaluate(focused) == "autodoctor-launcher"
        await desktop.keyboard.press("Enter")  # the launcher, from the keyboard
        await expect(panel).to_be_visible()
        assert await desktop.evaluate(focused) == "ad-input"
        await desktop.keyboard.press("Escape")
        await expect(panel).to_be_hidden()
        assert await desktop.evaluate(focused) == "autodoctor-launcher"


async def _axe(page: Page) -> list[dict[str, Any]]:
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "nodes": len(v["nodes"])}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


async def _lighthouse(url: str, viewport: dict[str, int]) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "node", str(LIGHTHOUSE), url, "--width", str(viewport["width"]),
        "--height", str(viewport["height"]), cwd=ROOT,
        env={**os.environ, "CHROMIUM": str(CHROMIUM)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode == 0, err.decode()[-2000:]
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def _invite(runtime: Runtime, config: Config, name: str) -> str:
    async with runtime.sessions.begin() as s:  # the served app keeps real time
        return (await invite_mechanic(s, config, name, datetime.now(UTC))).invite_code


# The pages do not depend on the database: one backend is enough for the slow tools.
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_axe_and_lighthouse_find_nothing_to_fix(
        config: Config, engine: AsyncEngine, runtime: Runtime, phone: Page, desktop: Page,
        dev_tools: Path) -> None:
    async with serve(config, engine) as base_url:
        console = f"{base_url}/m/{await _invite(runtime, config, 'Sam Lee')}"
        await phone.goto(base_url + "/#chat")
        await _greeted(phone)
        await desktop.goto(console)
        await expect(desktop.locator("#console-who")).to_contain_text("Sam Lee")
        await expect(desktop.locator("#console-chat .ad-bot")).to_have_count(1)
        assert await _axe(phone) == []
        assert await _axe(desktop) == []
        # Lighthouse in its own Chromium: the demo with the widget open on a phone, and a
        # workspace (its own invite: an invite links one browser) on a wide screen.
        scores = await asyncio.gather(
            _lighthouse(base_url + "/#chat", PHONE),
            _lighthouse(f"{base_url}/m/{await _invite(runtime, config, 'Ann Roe')}", DESKTOP))
        for score in scores:
            assert score == {"score": 100, "failed": [], "errors": []}
