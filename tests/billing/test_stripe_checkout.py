"""Stripe Checkout links, over Stripe's wire format against the stand-in."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from billing import payments_for
from billing.errors import ProviderUnavailable
from billing.offline import OfflinePayments
from billing.stripe_provider import StripePayments
from bot.texts import text as render_text
from core.clock import ManualClock
from core.config import Config, with_changes
from core.models import Checkout
from core.runtime import Runtime
from core.store.records import CheckoutRecord
from tests.billing.helpers import awaiting_payment, count, reload
from tests.standins.stripe_api import StripeStandin


async def test_checkout_opens_one_stripe_session_for_the_plan_price(
        stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime, "video15")
    checkout = bought.checkout

    [call] = stripe_api.calls_to("POST", "/v1/checkout/sessions")
    [stripe_session] = stripe_api.sessions.values()
    assert checkout.url == stripe_session["url"]
    assert checkout.url.startswith("https://checkout.stripe.com/c/pay/cs_test_")
    assert call.idempotency_key == f"checkout:{checkout.ref}"
    # Stripe's nested form keys, as they went over the wire.
    assert call.form["mode"] == "payment"
    assert call.form["line_items[0][price_data][unit_amount]"] == "2999"
    assert call.form["line_items[0][price_data][currency]"] == "usd"
    assert call.form["line_items[0][quantity]"] == "1"
    assert call.form["client_reference_id"] == checkout.ref
    assert call.form["metadata[intake]"] == str(bought.intake.id)
    assert call.form["metadata[customer]"] == str(bought.intake.customer_id)
    assert call.form["metadata[plan]"] == "video15"
    assert call.form["metadata[checkout]"] == checkout.ref
    assert checkout.expires_at is not None
    assert call.form["expires_at"] == str(int(checkout.expires_at.timestamp()))
    assert call.form["success_url"] == f"http://127.0.0.1:8080/pay/{checkout.ref}/done"
    assert call.form["cancel_url"] == f"http://127.0.0.1:8080/pay/{checkout.ref}/cancelled"
    assert call.headers["Authorization"] == f"Bearer {stripe_api.api_key}"
    assert stripe_session["amount_total"] == 2999

    stored = await reload(stripe_runtime, checkout)
    assert stored.provider == "stripe"
    assert stored.provider_session_id == stripe_session["id"]
    assert stored.amount_cents == 2999


async def test_a_stripe_hiccup_is_retried_with_the_same_key(
        stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    stripe_api.fail_next(1)
    bought = await awaiting_payment(stripe_runtime, "chat10")

    calls = stripe_api.calls_to("POST", "/v1/checkout/sessions")
    assert [c.status for c in calls] == [500, 200]
    assert {c.idempotency_key for c in calls} == {f"checkout:{bought.checkout.ref}"}
    assert len(stripe_api.sessions) == 1
    assert calls[1].form["line_items[0][price_data][unit_amount]"] == "999"


async def test_asking_twice_for_one_checkout_makes_one_stripe_session(
        stripe_runtime: Runtime, stripe_api: StripeStandin,
        stripe_payments: StripePayments) -> None:
    bought = await awaiting_payment(stripe_runtime)
    async with stripe_runtime.sessions.begin() as s:
        checkout = await s.get(Checkout, bought.checkout.id)
        assert checkout is not None
        again = await stripe_payments.create_checkout(s, CheckoutRecord.of(checkout))

    assert again == bought.checkout.url
    assert len(stripe_api.sessions) == 1
    assert [c.replayed for c in stripe_api.calls_to("POST", "/v1/checkout/sessions")] == [
        False, True]


async def test_stripe_down_leaves_no_checkout_behind(
        stripe_config: Config, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    impatient = StripePayments(stripe_config, max_network_retries=0)
    stripe_runtime.payments = impatient
    stripe_api.fail_next(1, status=503)
    try:
        with pytest.raises(ProviderUnavailable, match="try again"):
            await awaiting_payment(stripe_runtime)
    finally:
        await impatient.close()
    assert await count(stripe_runtime, Checkout) == 0
    assert stripe_api.sessions == {}


async def test_a_plan_with_a_stripe_price_sends_the_price_id(
        stripe_config: Config, engine: AsyncEngine, clock: ManualClock,
        stripe_api: StripeStandin) -> None:
    price_id = stripe_api.add_price(2999)
    video = replace(stripe_config.plans["video15"], stripe_price_id=price_id)
    config = with_changes(stripe_config, plans={**stripe_config.plans, "video15": video})
    payments = StripePayments(config)
    try:
        runtime = Runtime.build(config, engine, payments, render_text, clock)
        await awaiting_payment(runtime, "video15")
    finally:
        await payments.close()

    [call] = stripe_api.calls_to("POST", "/v1/checkout/sessions")
    assert call.form["line_items[0][price]"] == price_id
    assert "line_items[0][price_data][unit_amount]" not in call.form
    assert [s["amount_total"] for s in stripe_api.sessions.values()] == [2999]


async def test_payments_for_picks_stripe_only_with_a_secret_key(
        config: Config, stripe_config: Config) -> None:
    assert isinstance(payments_for(config), OfflinePayments)
    stripe = payments_for(stripe_config)
    try:
        assert isinstance(stripe, StripePayments)
        assert stripe.provider == "stripe"
    finally:
        await stripe.close()  # type: ignore[attr-defined]


async def test_expiring_a_checkout_closes_the_stripe_page(
        stripe_runtime: Runtime, stripe_api: StripeStandin,
        stripe_payments: StripePayments) -> None:
    open_one = await awaiting_payment(stripe_runtime, address="visitor-1")
    paid_one = await awaiting_payment(stripe_runtime, address="visitor-2")
    assert open_one.checkout.provider_session_id and paid_one.checkout.provider_session_id
    stripe_api.complete_session(paid_one.checkout.provider_session_id)

    assert await stripe_payments.expire_checkout(open_one.checkout) is True
    # Already paid on Stripe: Stripe refuses, and we say it was not open.
    assert await stripe_payments.expire_checkout(paid_one.checkout) is False

    assert stripe_api.sessions[open_one.checkout.provider_session_id]["status"] == "expired"
    assert stripe_api.sessions[paid_one.checkout.provider_session_id]["status"] == "complete"
    [call] = stripe_api.calls_to(
        "POST", f"/v1/checkout/sessions/{open_one.checkout.provider_session_id}/expire")
    assert call.idempotency_key == f"expire:{open_one.checkout.ref}"
