"""POST /webhooks/stripe: events signed with Stripe's scheme, applied exactly once."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

import billing
from core.config import Config, with_changes
from core.models import Checkout, InboundEvent, Intake, Mechanic, OutboxItem, SessionRequest
from core.payments import checkout_for
from core.runtime import Runtime
from core.store.records import IntakeRecord
from tests.billing.conftest import WEBHOOK_SECRET
from tests.billing.helpers import (
    AwaitingPayment,
    awaiting_payment,
    count,
    inbound_events,
    intake_status,
    refunds,
    reload,
    requests,
    step_of,
    texts_to,
)
from tests.helpers import recording_executions, scans
from tests.standins.stripe_api import StripeStandin

PAID_TEXT = "Payment received, thank you!"


def paid_once(texts: list[str]) -> bool:
    """Exactly one message, and it says the payment arrived."""
    return len(texts) == 1 and texts[0].startswith(PAID_TEXT)


async def paid_event(api: StripeStandin, bought: AwaitingPayment) -> dict[str, Any]:
    assert bought.checkout.provider_session_id is not None
    return api.event("checkout.session.completed",
                     api.complete_session(bought.checkout.provider_session_id))


async def test_payment_makes_one_request_even_when_delivered_three_times_at_once(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime, "video15")
    event = await paid_event(stripe_api, bought)

    answers = await asyncio.gather(*[
        stripe_api.send_event(webhook_client, event, WEBHOOK_SECRET) for _ in range(3)])

    assert [status for status, _ in answers] == [200, 200, 200]
    outcomes = sorted(json.loads(body)["outcome"] for _, body in answers)
    assert outcomes == ["duplicate", "duplicate", "processed"]
    [request] = await requests(stripe_runtime)
    assert request.status == "pending"
    assert request.price_cents == 2999
    assert request.plan == "video15"
    assert request.ref.startswith("R-") and 4 <= len(request.ref) - 2 <= 6
    assert request.ref[2:].isdigit()
    assert paid_once(await texts_to(stripe_runtime, bought.identity))
    assert await step_of(stripe_runtime, bought.conversation_id) == "matching"
    assert await intake_status(stripe_runtime, bought.intake.id) == "paid"
    checkout = await reload(stripe_runtime, bought.checkout)
    assert checkout.status == "paid"
    assert checkout.paid_at == stripe_runtime.clock.now()
    assert checkout.payment_intent_id == event["data"]["object"]["payment_intent"]
    assert await inbound_events(stripe_runtime) == 1


async def test_completed_and_async_succeeded_together_still_make_one_request(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    completed = await paid_event(stripe_api, bought)
    succeeded = stripe_api.event("checkout.session.async_payment_succeeded",
                                 completed["data"]["object"])

    await asyncio.gather(stripe_api.send_event(webhook_client, completed, WEBHOOK_SECRET),
                         stripe_api.send_event(webhook_client, succeeded, WEBHOOK_SECRET))

    assert len(await requests(stripe_runtime)) == 1
    assert paid_once(await texts_to(stripe_runtime, bought.identity))


def _forge(api: StripeStandin, payload_event: dict[str, Any], how: str) -> dict[str, Any]:
    payload = json.dumps(payload_event, indent=2)
    if how == "wrong secret":
        return {"signature": api.sign(payload, "whsec_not_ours")}
    if how == "stale":
        return {"timestamp": int(time.time()) - 600}
    if how == "missing":
        return {"signed": False}
    if how == "garbage":
        return {"signature": "t=notanumber,v1=zz"}
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["wrong secret", "stale", "missing", "garbage"])
async def test_a_bad_signature_is_refused_and_changes_nothing(
        how: str, webhook_client: TestClient, stripe_runtime: Runtime,
        stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    event = await paid_event(stripe_api, bought)

    status, body = await stripe_api.send_event(webhook_client, event, WEBHOOK_SECRET,
                                               **_forge(stripe_api, event, how))

    assert status == 400
    assert "signature" in body
    assert await requests(stripe_runtime) == []
    assert await texts_to(stripe_runtime, bought.identity) == []
    assert (await reload(stripe_runtime, bought.checkout)).status == "open"
    assert await intake_status(stripe_runtime, bought.intake.id) == "awaiting_payment"
    assert await inbound_events(stripe_runtime) == 0


async def test_a_tampered_body_is_refused(webhook_client: TestClient, stripe_runtime: Runtime,
                                          stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    event = await paid_event(stripe_api, bought)
    signature = stripe_api.sign(json.dumps(event, indent=2), WEBHOOK_SECRET)
    event["data"]["object"]["amount_total"] = 1

    status, _ = await stripe_api.send_event(webhook_client, event, WEBHOOK_SECRET,
                                            signature=signature)

    assert status == 400
    assert await requests(stripe_runtime) == []


async def test_a_delayed_payment_waits_for_async_payment_succeeded(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    assert bought.checkout.provider_session_id is not None
    processing = stripe_api.complete_session(bought.checkout.provider_session_id,
                                             payment_status="unpaid")
    await stripe_api.send_event(webhook_client, stripe_api.event(
        "checkout.session.completed", processing), WEBHOOK_SECRET)
    assert await requests(stripe_runtime) == []
    assert (await reload(stripe_runtime, bought.checkout)).status == "open"

    settled = stripe_api.settle_async_payment(bought.checkout.provider_session_id, True)
    await stripe_api.send_event(webhook_client, stripe_api.event(
        "checkout.session.async_payment_succeeded", settled), WEBHOOK_SECRET)

    assert len(await requests(stripe_runtime)) == 1
    assert paid_once(await texts_to(stripe_runtime, bought.identity))


async def test_a_failed_delayed_payment_tells_the_customer_once(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    assert bought.checkout.provider_session_id is not None
    stripe_api.complete_session(bought.checkout.provider_session_id, payment_status="unpaid")
    failed = stripe_api.event("checkout.session.async_payment_failed",
                              stripe_api.settle_async_payment(
                                  bought.checkout.provider_session_id, False))

    for _ in range(2):
        await stripe_api.send_event(webhook_client, failed, WEBHOOK_SECRET)

    assert (await reload(stripe_runtime, bought.checkout)).status == "failed"
    [said] = await texts_to(stripe_runtime, bought.identity)
    assert "didn't go through" in said and "nothing was charged" in said
    assert await requests(stripe_runtime) == []


async def test_an_expired_session_closes_the_checkout_and_a_new_link_is_made(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    assert bought.checkout.provider_session_id is not None
    expired = stripe_api.expire_session_now(bought.checkout.provider_session_id)

    status, _ = await stripe_api.send_event(
        webhook_client, stripe_api.event("checkout.session.expired", expired), WEBHOOK_SECRET)

    assert status == 200
    assert (await reload(stripe_runtime, bought.checkout)).status == "expired"
    async with stripe_runtime.transaction() as uow:
        intake = await uow.session.get(Intake, bought.intake.id)
        assert intake is not None
        fresh = await checkout_for(uow, stripe_runtime.payments, stripe_runtime.config,
                                   IntakeRecord.of(intake), stripe_runtime.clock.now())
    assert fresh.ref != bought.checkout.ref
    assert len(stripe_api.sessions) == 2


async def test_paying_a_second_link_for_a_paid_intake_is_refunded(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    # The customer asked for a new link meanwhile (another plan), then paid both.
    async with stripe_runtime.transaction() as uow:
        intake = await uow.session.get(Intake, bought.intake.id)
        assert intake is not None
        intake.plan = "chat10"
        second = await checkout_for(uow, stripe_runtime.payments, stripe_runtime.config,
                                    IntakeRecord.of(intake), stripe_runtime.clock.now())
    await stripe_api.send_event(webhook_client, await paid_event(stripe_api, bought),
                                WEBHOOK_SECRET)
    assert second.provider_session_id is not None
    status, _ = await stripe_api.send_event(webhook_client, stripe_api.event(
        "checkout.session.completed", stripe_api.complete_session(second.provider_session_id)),
        WEBHOOK_SECRET)

    assert status == 200
    assert len(await requests(stripe_runtime)) == 1
    [refund] = await refunds(stripe_runtime)
    assert refund.reason == "duplicate_payment"
    assert refund.amount_cents == 999
    assert (await reload(stripe_runtime, second)).status == "refunded"
    [stripe_refund] = stripe_api.refunds.values()
    assert stripe_refund["amount"] == 999
    assert paid_once(await texts_to(stripe_runtime, bought.identity))


async def test_a_refund_made_in_the_stripe_dashboard_is_recorded(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    paid = await paid_event(stripe_api, bought)
    await stripe_api.send_event(webhook_client, paid, WEBHOOK_SECRET)
    intent = stripe_api.payment_intents[paid["data"]["object"]["payment_intent"]]
    charge = stripe_api.charges[intent["latest_charge"]]
    charge.update(amount_refunded=charge["amount"], refunded=True)

    await stripe_api.send_event(webhook_client, stripe_api.event("charge.refunded", charge),
                                WEBHOOK_SECRET)

    checkout = await reload(stripe_runtime, bought.checkout)
    assert checkout.status == "refunded"
    assert checkout.charge_id == charge["id"]
    [refund] = await refunds(stripe_runtime)
    assert (refund.status, refund.amount_cents) == ("succeeded", 2999)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_refund_webhook_finds_its_checkout_through_an_index(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin,
        engine: AsyncEngine) -> None:
    # charge.refunded names the payment intent and the charge: the checkout is looked up by
    # them, through indexes, not by reading every checkout ever opened.
    bought = await awaiting_payment(stripe_runtime)
    paid = await paid_event(stripe_api, bought)
    await stripe_api.send_event(webhook_client, paid, WEBHOOK_SECRET)
    intent = stripe_api.payment_intents[paid["data"]["object"]["payment_intent"]]
    charge = stripe_api.charges[intent["latest_charge"]]
    charge.update(amount_refunded=charge["amount"], refunded=True)
    with recording_executions(engine) as runs:
        await stripe_api.send_event(webhook_client, stripe_api.event("charge.refunded", charge),
                                    WEBHOOK_SECRET)
    assert (await reload(stripe_runtime, bought.checkout)).status == "refunded"
    assert any("checkouts.payment_intent_id = " in sql for sql, _ in runs)
    found = await scans(engine, runs)
    assert found == [], "\n".join(f"{line}: {sql}" for sql, line in found)


async def _post_signed(client: TestClient, api: StripeStandin, payload: str) -> int:
    resp = await client.post("/webhooks/stripe", data=payload.encode(), headers={
        "Content-Type": "application/json", "Stripe-Signature": api.sign(payload,
                                                                         WEBHOOK_SECRET)})
    return int(resp.status)


@pytest.mark.parametrize("change", [
    {"amount_refunded": "abc"}, {"amount_refunded": 1e30}, {"amount_refunded": True},
    {"refunds": "x"}, {"refunds": {"data": "x"}}, {"id": "ch_\ud800"},
    {"payment_intent": ["pi_1"]}, {"payment_intent": "pi " + "x" * 300}])
async def test_a_signed_refund_event_with_odd_fields_is_refused_and_changes_nothing(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin,
        change: dict[str, Any]) -> None:
    # Signed, so from Stripe, but with fields not of the shape Stripe sends: a 400 saying so,
    # nothing recorded (these were 500s: an int() of text, a float too large for the
    # column, a string where an object was expected, a surrogate no column holds).
    bought = await awaiting_payment(stripe_runtime)
    paid = await paid_event(stripe_api, bought)
    await stripe_api.send_event(webhook_client, paid, WEBHOOK_SECRET)
    intent = stripe_api.payment_intents[paid["data"]["object"]["payment_intent"]]
    charge = {**stripe_api.charges[intent["latest_charge"]], "refunded": True, **change}
    events_before = await inbound_events(stripe_runtime)
    status, body = await stripe_api.send_event(
        webhook_client, stripe_api.event("charge.refunded", charge), WEBHOOK_SECRET)
    assert (status, json.loads(body)["error"].startswith("malformed event")) == (400, True)
    assert await inbound_events(stripe_runtime) == events_before
    assert (await reload(stripe_runtime, bought.checkout)).status == "paid"


async def test_signed_events_malformed_as_a_whole_are_refused(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    # Nested deeper than the JSON parser recurses (a 500 before); an event without an id
    # (stored as the id "None" before, so a second one was taken for a duplicate); a session's
    # metadata that is not an object.
    assert await _post_signed(webhook_client, stripe_api,
                              "[" * 100_000 + "]" * 100_000) == 400
    no_id = {**stripe_api.event("checkout.session.completed", {"id": "cs_1"}), "id": None}
    assert await _post_signed(webhook_client, stripe_api, json.dumps(no_id)) == 400
    bought = await awaiting_payment(stripe_runtime)
    paid = await paid_event(stripe_api, bought)
    paid["data"]["object"].update(metadata="x", client_reference_id=None)
    assert await _post_signed(webhook_client, stripe_api, json.dumps(paid)) == 400
    assert await inbound_events(stripe_runtime) == 0
    assert (await reload(stripe_runtime, bought.checkout)).status == "open"


async def test_account_updated_enables_the_mechanics_payouts(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    async with stripe_runtime.sessions.begin() as s:
        mechanic = Mechanic(name="Sam", created_at=stripe_runtime.clock.now())
        s.add(mechanic)
        await s.flush()
        mechanic.stripe_account_id = await stripe_runtime.payments.create_connected_account(
            mechanic)  # type: ignore[attr-defined]

    account = stripe_api.activate_account(mechanic.stripe_account_id)
    status, _ = await stripe_api.send_event(
        webhook_client, stripe_api.event("account.updated", account), WEBHOOK_SECRET)

    assert status == 200
    async with stripe_runtime.sessions() as s:
        stored = await s.get(Mechanic, mechanic.id)
        assert stored is not None
        assert (stored.charges_enabled, stored.payouts_enabled) == (True, True)


async def test_other_events_are_acknowledged_and_ignored(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    event = stripe_api.event("customer.created", {"id": "cus_1", "object": "customer"})
    status, body = await stripe_api.send_event(webhook_client, event, WEBHOOK_SECRET)
    assert (status, json.loads(body)["outcome"]) == (200, "ignored")
    assert await inbound_events(stripe_runtime) == 0


async def test_payment_wakes_the_customers_open_widget(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    woken = stripe_runtime.hub.subscribe(bought.identity.id)

    await stripe_api.send_event(webhook_client, await paid_event(stripe_api, bought),
                                WEBHOOK_SECRET)

    # Woken with the committed row itself, so the socket need not read it back.
    rows, reread = woken.take()
    assert not reread
    assert paid_once([row.text for row in rows])
    assert [row.text for row in rows] == await texts_to(stripe_runtime, bought.identity)


async def test_without_a_webhook_secret_there_is_no_webhook_route(
        aiohttp_client: Any, stripe_config: Config, stripe_runtime: Runtime,
        stripe_api: StripeStandin) -> None:
    stripe_runtime.config = with_changes(stripe_config, secrets={"stripe_webhook_secret": ""})
    app = web.Application()
    billing.setup(app, stripe_runtime)
    client = await aiohttp_client(app)
    event = stripe_api.event("checkout.session.completed", {"id": "cs_x"})

    status, _ = await stripe_api.send_event(client, event, WEBHOOK_SECRET)

    assert status in (404, 405)
    # Stripe on: the offline pay page is not served either.
    assert (await client.get("/pay/co_anything")).status == 404


async def test_outbox_row_is_addressed_to_the_intake_channel(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime, channel="telegram", address="555")

    await stripe_api.send_event(webhook_client, await paid_event(stripe_api, bought),
                                WEBHOOK_SECRET)

    async with stripe_runtime.sessions() as s:
        [row] = (await s.scalars(select(OutboxItem).where(OutboxItem.address == "555"))).all()
        request = await s.scalar(select(SessionRequest))
        checkout = await s.scalar(select(Checkout))
    assert (row.channel, row.address, row.status) == ("telegram", "555", "pending")
    assert row.dedupe_key == f"paid:{bought.checkout.ref}"
    assert request is not None and checkout is not None
    assert request.checkout_id == checkout.id
    assert await count(stripe_runtime, InboundEvent) == 1


async def test_returning_from_stripe_before_the_webhook_already_counts_the_payment(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    event = await paid_event(stripe_api, bought)  # paid on Stripe; the webhook is late

    resp = await webhook_client.get(f"/pay/{bought.checkout.ref}/done")

    assert "Paid — waiting for a mechanic" in await resp.text()
    [call] = stripe_api.calls_to(
        "GET", f"/v1/checkout/sessions/{bought.checkout.provider_session_id}")
    assert call.status == 200
    assert len(await requests(stripe_runtime)) == 1
    assert paid_once(await texts_to(stripe_runtime, bought.identity))

    status, _ = await stripe_api.send_event(webhook_client, event, WEBHOOK_SECRET)
    assert status == 200
    assert len(await requests(stripe_runtime)) == 1
    assert await refunds(stripe_runtime) == []
    assert paid_once(await texts_to(stripe_runtime, bought.identity))


async def test_returning_unpaid_from_stripe_says_it_is_being_confirmed(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)

    page = await (await webhook_client.get(f"/pay/{bought.checkout.ref}/done")).text()

    assert "being confirmed" in page
    assert await requests(stripe_runtime) == []
