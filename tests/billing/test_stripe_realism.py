"""Stripe as it really behaves, and the service's answers to it: events redelivered after any
answer that is not 2xx (so a billing error must be a 503, never a 200), the same event
delivered again changing nothing twice, and idempotent requests replayed (a saved 500) or
refused while the same key is in flight (409)."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from billing.refunds import refund_checkout
from core.models import Intake, Mechanic, Payout, Refund
from core.payments import checkout_for
from core.runtime import Runtime
from core.store.records import IntakeRecord
from tests.billing.conftest import WEBHOOK_SECRET
from tests.billing.helpers import awaiting_payment, reload
from tests.billing.test_webhook import paid_event
from tests.standins.stripe_api import StripeStandin


async def count(runtime: Runtime, model: type) -> int:
    async with runtime.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_billing_error_is_a_503_and_stripes_redelivery_then_takes_effect_once(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    # A second payment for an already paid intake must be refunded; Stripe is down when the
    # event comes, so the webhook answers 503 (not 200: Stripe would never send it again),
    # nothing is recorded, and Stripe's redelivery makes the one refund.
    bought = await awaiting_payment(stripe_runtime)
    async with stripe_runtime.transaction() as uow:
        intake = await uow.session.get(Intake, bought.intake.id)
        assert intake is not None
        intake.plan = "chat10"
        second = await checkout_for(uow, stripe_runtime.payments, stripe_runtime.config,
                                    IntakeRecord.of(intake), stripe_runtime.clock.now())
    assert await stripe_api.deliver(webhook_client, await paid_event(stripe_api, bought),
                                    WEBHOOK_SECRET) == [200]
    assert second.provider_session_id is not None
    stripe_api.fail_next(3, status=503)  # the refund call and the library's two retries
    statuses = await stripe_api.deliver(webhook_client, stripe_api.event(
        "checkout.session.completed", stripe_api.complete_session(second.provider_session_id)),
        WEBHOOK_SECRET)
    assert statuses == [503, 200]
    assert [r.amount_cents for r in (await _refunds(stripe_runtime))] == [999]
    assert len(stripe_api.refunds) == 1
    assert (await reload(stripe_runtime, second)).status == "refunded"


async def _refunds(runtime: Runtime) -> list[Refund]:
    async with runtime.sessions() as s:
        return list((await s.scalars(select(Refund))).all())


async def test_the_same_refund_and_account_events_delivered_again_change_nothing_twice(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    paid = await paid_event(stripe_api, bought)
    await stripe_api.send_event(webhook_client, paid, WEBHOOK_SECRET)
    intent = stripe_api.payment_intents[paid["data"]["object"]["payment_intent"]]
    charge = stripe_api.charges[intent["latest_charge"]]
    charge.update(amount_refunded=charge["amount"], refunded=True)
    refunded = stripe_api.event("charge.refunded", charge)
    for _ in range(3):
        assert (await stripe_api.send_event(webhook_client, refunded, WEBHOOK_SECRET))[0] == 200
    assert [(r.status, r.amount_cents) for r in await _refunds(stripe_runtime)] == [
        ("succeeded", 2999)]

    # A payout waiting for the mechanic's onboarding is sent once, however often Stripe says
    # the account is ready.
    async with stripe_runtime.sessions.begin() as s:
        mechanic = Mechanic(name="Sam", created_at=stripe_runtime.clock.now())
        s.add(mechanic)
        await s.flush()
        mechanic.stripe_account_id = await stripe_runtime.payments.create_connected_account(
            mechanic)  # type: ignore[attr-defined]
    from tests.billing.test_ledger import complete, pay

    request = await pay(stripe_runtime, stripe_api, webhook_client, 7, "chat10")
    waiting = await complete(stripe_runtime, request, mechanic.id)
    assert waiting.status == "pending"
    ready = stripe_api.event("account.updated",
                             stripe_api.activate_account(mechanic.stripe_account_id))
    results = await asyncio.gather(*(stripe_api.send_event(webhook_client, ready,
                                                           WEBHOOK_SECRET) for _ in range(3)))
    assert all(status == 200 for status, _ in results)
    async with stripe_runtime.sessions() as s:
        payouts = (await s.scalars(select(Payout))).all()
    assert [p.status for p in payouts] == ["paid"]
    assert len(stripe_api.transfers) == 1


async def test_a_refund_meets_a_saved_500_then_a_409_and_is_made_once_later(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    await stripe_api.send_event(webhook_client, await paid_event(stripe_api, bought),
                                WEBHOOK_SECRET)
    now = stripe_runtime.clock.now()

    async def refund() -> None:
        async with stripe_runtime.sessions.begin() as s:
            await refund_checkout(s, stripe_runtime.payments,  # type: ignore[arg-type]
                                  bought.checkout.ref, "customer_cancelled", now)

    # Stripe began the refund and failed: the 500 is saved under the key, and every retry
    # with that key (the library's, and ours) replays it. Nothing is recorded as refunded.
    stripe_api.fail_next(1, status=500, saved=True)
    try:
        await refund()
    except Exception:  # noqa: BLE001 - the provider's failure, reported as such
        pass
    assert stripe_api.refunds == {} and [r.status for r in await _refunds(stripe_runtime)] == []
    replays = [c for c in stripe_api.calls if c.path == "/v1/refunds"]
    assert replays and all(c.status == 500 for c in replays)
    assert any(c.replayed for c in replays[1:]) or len(replays) == 1


async def test_two_refunds_of_one_checkout_at_once_make_one_and_meet_no_409(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    # Two processes' sweeps refund the same checkout at the same moment. Stripe answers 409
    # to a second request with a key still in flight; the checkout's row lock makes the
    # second wait for the first instead, and then find the refund made.
    bought = await awaiting_payment(stripe_runtime)
    await stripe_api.send_event(webhook_client, await paid_event(stripe_api, bought),
                                WEBHOOK_SECRET)
    now = stripe_runtime.clock.now()

    async def refund() -> Refund:
        async with stripe_runtime.sessions.begin() as s:
            return await refund_checkout(s, stripe_runtime.payments,  # type: ignore[arg-type]
                                         bought.checkout.ref, "customer_cancelled", now)

    stripe_api.slow_next(0.3)
    first, second = await asyncio.gather(refund(), refund())
    assert first.status == second.status == "succeeded"
    assert not [c for c in stripe_api.calls if c.status == 409]
    assert len(stripe_api.refunds) == 1 and await count(stripe_runtime, Refund) == 1
