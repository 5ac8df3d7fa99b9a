"""The offline test-mode checkout: /pay/{ref} shows the price; its button pays (mark_paid)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine

import billing
from bot.texts import text as render_text
from core.clock import ManualClock
from core.config import Config, with_changes
from core.intake import cancel_unpaid
from core.models import Intake
from core.runtime import Runtime
from core.store.records import IntakeRecord
from tests.billing.helpers import (
    awaiting_payment,
    intake_status,
    reload,
    requests,
    step_of,
    texts_to,
)
from tests.helpers import pay_offline

PAID_TEXT = "Payment received, thank you!"


def paid_once(texts: list[str]) -> bool:
    """Exactly one message, and it says the payment arrived."""
    return len(texts) == 1 and texts[0].startswith(PAID_TEXT)


async def test_pay_page_shows_the_plan_and_price(offline_client: TestClient,
                                                 runtime: Runtime) -> None:
    bought = await awaiting_payment(runtime, "video15")
    assert bought.checkout.url == f"http://127.0.0.1:8080/pay/{bought.checkout.ref}"

    resp = await offline_client.get(f"/pay/{bought.checkout.ref}")

    assert resp.status == 200
    page = await resp.text()
    assert "Standard Video" in page
    assert "$29.99" in page
    assert "45 minutes" in page
    assert "Pay (test mode, no real charge)" in page
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert await requests(runtime) == []


async def test_pressing_pay_makes_the_request_and_says_paid(offline_client: TestClient,
                                                            runtime: Runtime) -> None:
    bought = await awaiting_payment(runtime, "video15")

    resp = await pay_offline(offline_client, f"/pay/{bought.checkout.ref}")

    assert resp.status == 200
    assert resp.url.path == f"/pay/{bought.checkout.ref}"  # redirected: reload won't re-post
    assert "Paid — waiting for a mechanic" in await resp.text()
    [request] = await requests(runtime)
    assert (request.status, request.price_cents, request.plan) == ("pending", 2999, "video15")
    assert paid_once(await texts_to(runtime, bought.identity))
    assert await step_of(runtime, bought.conversation_id) == "matching"
    assert await intake_status(runtime, bought.intake.id) == "paid"
    assert (await reload(runtime, bought.checkout)).status == "paid"

    again = await pay_offline(offline_client, f"/pay/{bought.checkout.ref}")
    assert "Paid — waiting for a mechanic" in await again.text()
    assert len(await requests(runtime)) == 1
    assert paid_once(await texts_to(runtime, bought.identity))


async def test_an_unknown_link_is_a_404_page(offline_client: TestClient,
                                             runtime: Runtime) -> None:
    for resp in (await offline_client.get("/pay/co_nonexistent"),
                 await pay_offline(offline_client, "/pay/co_nonexistent")):
        assert resp.status == 404
        assert "Payment link not found" in await resp.text()
    assert await requests(runtime) == []


async def test_an_expired_link_says_so_and_cannot_be_paid(
        offline_client: TestClient, runtime: Runtime, clock: ManualClock) -> None:
    bought = await awaiting_payment(runtime)
    clock.advance(runtime.config.billing.checkout_ttl_seconds + 1)

    shown = await offline_client.get(f"/pay/{bought.checkout.ref}")
    posted = await pay_offline(offline_client, f"/pay/{bought.checkout.ref}")

    for resp in (shown, posted):
        assert resp.status == 410
        page = await resp.text()
        assert "This payment link has expired" in page
        assert "Pay (test mode" not in page
    assert await requests(runtime) == []
    assert await texts_to(runtime, bought.identity) == []


async def test_a_cancelled_request_cannot_be_paid(offline_client: TestClient,
                                                  runtime: Runtime) -> None:
    bought = await awaiting_payment(runtime)
    async with runtime.transaction() as uow:
        intake = await uow.session.get(Intake, bought.intake.id)
        assert intake is not None
        assert await cancel_unpaid(uow.session, uow.track(IntakeRecord.of(intake)),
                                   runtime.clock.now())

    resp = await pay_offline(offline_client, f"/pay/{bought.checkout.ref}")

    assert resp.status == 410
    assert "This request was cancelled" in await resp.text()
    assert await requests(runtime) == []


async def test_page_text_is_html_escaped(aiohttp_client: Any, config: Config,
                                         engine: AsyncEngine, clock: ManualClock) -> None:
    plans = {**config.plans, "video15": replace(config.plans["video15"],
                                                name="<b>Video</b> & more")}
    config = with_changes(config, plans=plans)
    runtime = Runtime.build(config, engine, billing.payments_for(config), render_text, clock)
    app = web.Application()
    billing.setup(app, runtime)
    client = await aiohttp_client(app)
    bought = await awaiting_payment(runtime, make="<script>alert(1)</script>")

    page = await (await client.get(f"/pay/{bought.checkout.ref}")).text()

    assert "&lt;b&gt;Video&lt;/b&gt; &amp; more" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in page


async def test_return_pages_send_the_customer_back_to_the_chat(
        offline_client: TestClient, runtime: Runtime) -> None:
    bought = await awaiting_payment(runtime)
    done = await offline_client.get(f"/pay/{bought.checkout.ref}/done")
    cancelled = await offline_client.get(f"/pay/{bought.checkout.ref}/cancelled")
    assert done.status == cancelled.status == 200
    assert "return to the chat" in (await done.text()).lower()
    cancelled_page = await cancelled.text()
    assert "Nothing was charged" in cancelled_page
    assert "Return to the chat" in cancelled_page


async def test_return_pages_of_an_unknown_link_say_it_is_not_found(
        offline_client: TestClient) -> None:
    # Not "your payment is being confirmed" for a link no checkout has (a typo, a forgery).
    for suffix in ("done", "cancelled"):
        resp = await offline_client.get(f"/pay/co_nosuchref/{suffix}")
        assert resp.status == 404
        assert "Payment link not found" in await resp.text()


async def test_return_pages_link_back_to_telegram_for_telegram_customers(
        offline_client: TestClient, runtime: Runtime) -> None:
    bought = await awaiting_payment(runtime, "chat10", channel="telegram", address="777")
    web_customer = await awaiting_payment(runtime, "chat10", address="visitor-9")
    for suffix in ("done", "cancelled"):
        page = await (await offline_client.get(f"/pay/{bought.checkout.ref}/{suffix}")).text()
        assert 'href="https://t.me/AutoDoctorBot"' in page
        other = await (await offline_client.get(
            f"/pay/{web_customer.checkout.ref}/{suffix}")).text()
        assert "t.me" not in other
