"""Refunds: one Stripe refund and one Refund row per checkout, however often asked."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from billing.errors import NotRefundable, ProviderUnavailable
from billing.stripe_provider import StripePayments
from core.models import Checkout, Refund
from core.runtime import Runtime
from tests.billing.conftest import WEBHOOK_SECRET
from tests.billing.helpers import AwaitingPayment, awaiting_payment, refunds, reload
from tests.standins.stripe_api import StripeStandin


async def paid(runtime: Runtime, api: StripeStandin, client: TestClient) -> AwaitingPayment:
    """A customer who paid through Stripe (the webhook delivered)."""
    bought = await awaiting_payment(runtime, "video15")
    assert bought.checkout.provider_session_id is not None
    session = api.complete_session(bought.checkout.provider_session_id)
    status, _ = await api.send_event(client, api.event("checkout.session.completed", session),
                                     WEBHOOK_SECRET)
    assert status == 200
    return bought


async def refund(runtime: Runtime, ref: str, reason: str = "expired_unmatched") -> Refund:
    """As the sweeps ask for it: through Runtime.refund (billing.refunds_for)."""
    assert runtime.refund is not None
    async with runtime.sessions.begin() as s:
        done = await runtime.refund(s, ref, reason, runtime.clock.now())
    assert isinstance(done, Refund)
    return done


async def test_refunding_twice_makes_one_stripe_refund_and_one_row(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await paid(stripe_runtime, stripe_api, webhook_client)

    first = await refund(stripe_runtime, bought.checkout.ref)
    second = await refund(stripe_runtime, bought.checkout.ref, "customer_cancelled")

    assert first.id == second.id
    assert (first.status, first.amount_cents, first.reason) == (
        "succeeded", 2999, "expired_unmatched")
    [stripe_refund] = stripe_api.refunds.values()
    assert stripe_refund["amount"] == 2999
    assert stripe_refund["id"] == first.provider_refund_id
    [call] = stripe_api.calls_to("POST", "/v1/refunds")
    assert call.idempotency_key == f"refund:{bought.checkout.ref}"
    assert call.form["payment_intent"] == (await reload(stripe_runtime,
                                                        bought.checkout)).payment_intent_id
    assert call.form["metadata[reason]"] == "expired_unmatched"
    assert len(await refunds(stripe_runtime)) == 1
    assert (await reload(stripe_runtime, bought.checkout)).status == "refunded"


async def test_refunds_asked_at_the_same_time_make_one_refund(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await paid(stripe_runtime, stripe_api, webhook_client)

    done = await asyncio.gather(*[refund(stripe_runtime, bought.checkout.ref)
                                  for _ in range(3)])

    assert len({r.id for r in done}) == 1
    assert len(stripe_api.refunds) == 1
    assert len(await refunds(stripe_runtime)) == 1


async def test_stripe_itself_refunds_once_for_a_repeated_key(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin,
        stripe_payments: StripePayments) -> None:
    bought = await paid(stripe_runtime, stripe_api, webhook_client)
    checkout = await reload(stripe_runtime, bought.checkout)

    first = await stripe_payments.refund(checkout, reason="customer_cancelled")
    again = await stripe_payments.refund(checkout, reason="customer_cancelled")

    assert first == again
    assert len(stripe_api.refunds) == 1
    assert [c.replayed for c in stripe_api.calls_to("POST", "/v1/refunds")] == [False, True]


async def test_stripe_down_during_a_refund_leaves_it_to_retry(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await paid(stripe_runtime, stripe_api, webhook_client)
    stripe_api.fail_next(3)

    with pytest.raises(ProviderUnavailable):
        await refund(stripe_runtime, bought.checkout.ref)
    assert await refunds(stripe_runtime) == []
    assert (await reload(stripe_runtime, bought.checkout)).status == "paid"

    done = await refund(stripe_runtime, bought.checkout.ref)
    assert done.status == "succeeded"
    assert len(stripe_api.refunds) == 1


async def test_an_unpaid_checkout_cannot_be_refunded(stripe_runtime: Runtime,
                                                     stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime)
    with pytest.raises(NotRefundable, match="nothing to refund"):
        await refund(stripe_runtime, bought.checkout.ref)
    assert stripe_api.calls_to("POST", "/v1/refunds") == []


async def test_the_refund_webhook_after_our_refund_keeps_one_row(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await paid(stripe_runtime, stripe_api, webhook_client)
    ours = await refund(stripe_runtime, bought.checkout.ref)
    [charge] = stripe_api.charges.values()

    await stripe_api.send_event(webhook_client, stripe_api.event("charge.refunded", charge),
                                WEBHOOK_SECRET)

    [row] = await refunds(stripe_runtime)
    assert (row.id, row.status, row.reason) == (ours.id, "succeeded", "expired_unmatched")
    stored: Checkout = await reload(stripe_runtime, bought.checkout)
    assert (stored.status, stored.charge_id) == ("refunded", charge["id"])


async def test_a_charge_refunded_in_the_dashboard_is_not_refunded_again(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await paid(stripe_runtime, stripe_api, webhook_client)
    [charge] = stripe_api.charges.values()
    # Someone refunds it on Stripe directly; that webhook never reached us.
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{stripe_api.url}/v1/refunds", data={"charge": charge["id"]},
                               headers={"Authorization": f"Bearer {stripe_api.api_key}"})
        assert resp.status == 200

    done = await refund(stripe_runtime, bought.checkout.ref)

    assert done.status == "succeeded"
    assert len(stripe_api.refunds) == 1
    assert (await reload(stripe_runtime, bought.checkout)).status == "refunded"
