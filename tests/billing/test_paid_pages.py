"""A paid checkout's pages tell the truth: where the request stands now, never a second Pay
button, and a receipt (Stripe's when the charge has one, else the page itself)."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.flows import route
from bot.texts import text as render_text
from core.clock import ManualClock
from core.dispatch import assign
from core.engine import Engine
from core.messages import Inbound
from core.models import Checkout, Identity
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.billing.conftest import WEBHOOK_SECRET
from tests.billing.helpers import AwaitingPayment, awaiting_payment, requests, texts_to
from tests.helpers import pay_offline
from tests.standins.stripe_api import StripeStandin


async def page_of(client: TestClient, path: str) -> str:
    resp = await client.get(path)
    assert resp.status == 200, resp.status
    return str(await resp.text())


def heading(page: str) -> str:
    found = re.search(r"<h1>(.*?)</h1>", page)
    assert found is not None
    return found.group(1)


async def say(runtime: Runtime, who: AwaitingPayment | Identity, **inbound: Any) -> None:
    identity = who.identity if isinstance(who, AwaitingPayment) else who
    await Engine(runtime, route).receive(Inbound(channel=identity.channel,
                                                 address=identity.address, **inbound))


async def on_call(runtime: Runtime) -> Identity:
    """The mechanic billing's conftest links for every test."""
    async with runtime.sessions() as s:
        found = await s.scalar(select(Identity).where(Identity.mechanic_id.is_not(None)))
    assert found is not None
    return found


async def test_the_pay_page_follows_the_request_after_payment(
        offline_client: TestClient, runtime: Runtime) -> None:
    bought = await awaiting_payment(runtime, "video15")
    path = f"/pay/{bought.checkout.ref}"
    await pay_offline(offline_client, path)
    [request] = await requests(runtime)

    waiting = await page_of(offline_client, path)
    assert heading(waiting) == "Paid — waiting for a mechanic"
    assert "Your payment of $29.99 went through" in waiting
    assert 'method="post"' not in waiting and "Pay (test mode" not in waiting

    mechanic = await on_call(runtime)
    await say(runtime, mechanic, action=f"accept:{request.ref}")
    assert heading(await page_of(offline_client, path)) == "Matched with On-call"

    await say(runtime, bought, text="Hi, the noise starts at 30 mph")
    assert heading(await page_of(offline_client, path)) == "In session with On-call"

    await say(runtime, mechanic, text="end session")
    done = await page_of(offline_client, path)
    assert heading(done) == "Session completed"
    assert "Your session with On-call is over" in done

    # Paying again changes nothing: one request, one "payment received", no new charge.
    again = await pay_offline(offline_client, path)
    assert again.status == 200 and heading(await again.text()) == "Session completed"
    assert len(await requests(runtime)) == 1
    assert sum(t.startswith("Payment received") for t in await texts_to(
        runtime, bought.identity)) == 1


async def test_the_paid_page_is_a_receipt(offline_client: TestClient, runtime: Runtime,
                                          clock: ManualClock) -> None:
    bought = await awaiting_payment(runtime, "video15")
    await pay_offline(offline_client, f"/pay/{bought.checkout.ref}")
    [request] = await requests(runtime)
    paid_on = clock.now()

    for path in (f"/pay/{bought.checkout.ref}", f"/pay/{bought.checkout.ref}/done"):
        page = await page_of(offline_client, path)
        receipt = page[page.index('<section class="receipt"'):]
        assert f"<dt>Date</dt><dd>{paid_on.day} {paid_on:%b %Y, %H:%M} UTC</dd>" in receipt
        assert "<dt>Tier</dt><dd>Standard Video</dd>" in receipt
        assert "<dt>Amount</dt><dd>$29.99</dd>" in receipt
        assert f"<dt>Request</dt><dd>{request.ref}</dd>" in receipt
        assert f"<dt>Payment reference</dt><dd>{bought.checkout.ref}</dd>" in receipt
        assert "Print or save this page as your receipt." in receipt  # no Stripe receipt


async def test_expired_and_refunded_requests_say_so(
        offline_client: TestClient, engine: AsyncEngine, config: Any, clock: ManualClock,
        runtime: Runtime) -> None:
    # Without refunds the sweep only expires the request: the page says the refund is due.
    no_refunds = Runtime.build(config, engine, runtime.payments, render_text, clock)
    bought = await awaiting_payment(runtime, "video15")
    path = f"/pay/{bought.checkout.ref}"
    await pay_offline(offline_client, path)
    clock.advance(runtime.config.timeouts.expire_after_seconds + 1)
    await run_sweeps(no_refunds)
    expired = await page_of(offline_client, path)
    assert heading(expired) == "No mechanic was free in time"
    assert "the full amount, $29.99, is being refunded" in expired

    await run_sweeps(runtime)  # the offline provider refunds at once
    refunded = await page_of(offline_client, path)
    assert heading(refunded) == "This payment was refunded"
    assert "<dt>Amount</dt><dd>$29.99 (refunded)</dd>" in refunded


async def test_a_cancelled_request_says_so(offline_client: TestClient, engine: AsyncEngine,
                                           config: Any, clock: ManualClock,
                                           runtime: Runtime) -> None:
    no_refunds = Runtime.build(config, engine, runtime.payments, render_text, clock)
    bought = await awaiting_payment(runtime, "video15")
    path = f"/pay/{bought.checkout.ref}"
    await pay_offline(offline_client, path)
    await say(no_refunds, bought, text="cancel request")
    page = await page_of(offline_client, path)
    assert heading(page) == "This request was cancelled"
    assert "the full amount, $29.99, is being refunded" in page


async def test_names_on_the_page_are_escaped(offline_client: TestClient,
                                             runtime: Runtime) -> None:
    from tests.factories import linked_mechanic

    bought = await awaiting_payment(runtime, "video15")
    path = f"/pay/{bought.checkout.ref}"
    await pay_offline(offline_client, path)
    [request] = await requests(runtime)
    evil = await linked_mechanic(runtime, "<script>x</script>")
    assert evil.mechanic_id is not None
    async with runtime.transaction() as uow:  # as an admin assigns from the queue
        await assign(uow, runtime, request.ref, evil.mechanic_id, "test", runtime.clock.now())
    page = await page_of(offline_client, path)
    assert "<script>x" not in page
    assert heading(page) == "Matched with &lt;script&gt;x&lt;/script&gt;"


# ---------------------------------------------------------------------- Stripe

async def paid_on_stripe(runtime: Runtime, api: StripeStandin, client: TestClient,
                         *, webhook: bool = True) -> AwaitingPayment:
    bought = await awaiting_payment(runtime, "video15")
    assert bought.checkout.provider_session_id is not None
    session = api.complete_session(bought.checkout.provider_session_id)
    if webhook:
        await api.send_event(client, api.event("checkout.session.completed", session),
                             WEBHOOK_SECRET)
    return bought


async def test_the_stripe_success_page_links_stripes_receipt(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await paid_on_stripe(stripe_runtime, stripe_api, webhook_client)
    [charge] = stripe_api.charges.values()

    page = await page_of(webhook_client, f"/pay/{bought.checkout.ref}/done")

    assert heading(page) == "Paid — waiting for a mechanic"
    assert "<dt>Amount</dt><dd>$29.99</dd>" in page
    assert charge["receipt_url"].startswith("https://pay.stripe.com/receipts/payment/")
    assert f'<a href="{charge["receipt_url"]}">Your receipt from Stripe</a>' in page
    assert "Print or save" not in page


async def test_a_late_webhook_still_gets_the_receipt(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    # The customer is back before the webhook: the page asks Stripe, then shows the receipt.
    bought = await paid_on_stripe(stripe_runtime, stripe_api, webhook_client, webhook=False)
    [charge] = stripe_api.charges.values()

    page = await page_of(webhook_client, f"/pay/{bought.checkout.ref}/done")

    assert heading(page) == "Paid — waiting for a mechanic"
    assert f'href="{charge["receipt_url"]}"' in page
    assert len(await requests(stripe_runtime)) == 1
    async with stripe_runtime.sessions() as s:
        checkout = await s.get(Checkout, bought.checkout.id)
        assert checkout is not None and checkout.status == "paid"


async def test_without_a_stripe_receipt_the_page_is_the_receipt(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await paid_on_stripe(stripe_runtime, stripe_api, webhook_client)
    path = f"/pay/{bought.checkout.ref}/done"
    [charge] = stripe_api.charges.values()

    charge["receipt_url"] = None
    assert "Print or save this page as your receipt." in await page_of(webhook_client, path)

    # Whatever Stripe (or something in its place) answers, only an https link is made.
    charge["receipt_url"] = "javascript:alert(1)"
    page = await page_of(webhook_client, path)
    assert "javascript:" not in page
    assert "Print or save this page as your receipt." in page

    charge["receipt_url"] = "https://pay.stripe.com/receipts/payment/abc"
    stripe_api.fail_next(3)  # Stripe down (a try and two retries): the page does without
    page = await page_of(webhook_client, path)
    assert "<dt>Amount</dt><dd>$29.99</dd>" in page
    assert "Print or save this page as your receipt." in page
    assert "pay.stripe.com" not in page


async def test_the_success_page_of_an_unpaid_checkout_still_says_confirming(
        webhook_client: TestClient, stripe_runtime: Runtime) -> None:
    bought = await awaiting_payment(stripe_runtime, "video15")
    page = await page_of(webhook_client, f"/pay/{bought.checkout.ref}/done")
    assert heading(page) == "Thanks — return to the chat"
    assert '<section class="receipt"' not in page
