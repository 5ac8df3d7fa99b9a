"""Stripe Connect: a mechanic's Express account and onboarding link, then their payout."""

from __future__ import annotations

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from billing.connect import start_onboarding
from billing.payouts import send_payout
from billing.stripe_provider import StripePayments
from core.models import Consultation, Mechanic, Payout, SessionRequest
from core.runtime import Runtime
from tests.billing.conftest import WEBHOOK_SECRET
from tests.billing.helpers import awaiting_payment, requests
from tests.standins.stripe_api import StripeStandin


async def new_mechanic(runtime: Runtime) -> int:
    async with runtime.sessions.begin() as s:
        mechanic = Mechanic(name="Sam Torres", created_at=runtime.clock.now())
        s.add(mechanic)
        await s.flush()
        return mechanic.id


async def onboard(runtime: Runtime, payments: StripePayments, mechanic_id: int) -> str:
    async with runtime.sessions.begin() as s:
        return await start_onboarding(s, payments, runtime.config, mechanic_id)


async def test_onboarding_creates_one_express_account_and_a_link(
        stripe_runtime: Runtime, stripe_api: StripeStandin,
        stripe_payments: StripePayments) -> None:
    mechanic_id = await new_mechanic(stripe_runtime)

    first = await onboard(stripe_runtime, stripe_payments, mechanic_id)
    second = await onboard(stripe_runtime, stripe_payments, mechanic_id)

    [account] = stripe_api.accounts.values()
    assert account["type"] == "express"
    assert account["metadata"] == {"mechanic": str(mechanic_id)}
    [create] = stripe_api.calls_to("POST", "/v1/accounts")
    assert create.form["capabilities[transfers][requested]"] == "true"
    assert create.idempotency_key == f"connect-account:{mechanic_id}"
    links = stripe_api.calls_to("POST", "/v1/account_links")
    assert [c.form["account"] for c in links] == [account["id"], account["id"]]
    assert links[0].form["type"] == "account_onboarding"
    assert links[0].form["return_url"] == "http://127.0.0.1:8080/connect/done"
    assert first.startswith(f"https://connect.stripe.com/setup/e/{account['id']}/")
    assert first != second
    async with stripe_runtime.sessions() as s:
        mechanic = await s.get(Mechanic, mechanic_id)
        assert mechanic is not None and mechanic.stripe_account_id == account["id"]


async def completed_consultation(runtime: Runtime, api: StripeStandin, client: TestClient,
                                 mechanic_id: int) -> int:
    """A paid request (through Stripe) done by the mechanic, and its payout row."""
    bought = await awaiting_payment(runtime, "video15")
    assert bought.checkout.provider_session_id is not None
    await api.send_event(client, api.event(
        "checkout.session.completed", api.complete_session(bought.checkout.provider_session_id)),
        WEBHOOK_SECRET)
    now = runtime.clock.now()
    async with runtime.sessions.begin() as s:
        request = await s.scalar(select(SessionRequest))
        assert request is not None
        request.status, request.mechanic_id = "completed", mechanic_id
        consultation = Consultation(request_id=request.id, customer_id=request.customer_id,
                                    mechanic_id=mechanic_id, plan=request.plan,
                                    status="completed", created_at=now)
        s.add(consultation)
        await s.flush()
        fee = request.price_cents * runtime.config.billing.fee_bps // 10000
        payout = Payout(consultation_id=consultation.id, mechanic_id=mechanic_id,
                        amount_cents=request.price_cents - fee, fee_cents=fee,
                        currency="usd", status="pending",
                        idempotency_key=f"payout-consultation:{consultation.id}",
                        created_at=now)
        s.add(payout)
        await s.flush()
        return payout.id


async def pay_out(runtime: Runtime, payments: StripePayments, payout_id: int) -> Payout:
    async with runtime.sessions.begin() as s:
        return await send_payout(s, payments, payout_id, runtime.clock.now())


async def test_payout_transfers_the_mechanics_share_once(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin,
        stripe_payments: StripePayments) -> None:
    mechanic_id = await new_mechanic(stripe_runtime)
    await onboard(stripe_runtime, stripe_payments, mechanic_id)
    [account] = stripe_api.accounts.values()
    await stripe_api.send_event(webhook_client, stripe_api.event(
        "account.updated", stripe_api.activate_account(account["id"])), WEBHOOK_SECRET)
    payout_id = await completed_consultation(stripe_runtime, stripe_api, webhook_client,
                                             mechanic_id)

    first = await pay_out(stripe_runtime, stripe_payments, payout_id)
    again = await pay_out(stripe_runtime, stripe_payments, payout_id)

    [transfer] = stripe_api.transfers.values()
    [charge] = stripe_api.charges.values()
    assert transfer["amount"] == 2400  # 2999 less the 20% fee (2999 * 2000 // 10000 = 599)
    assert transfer["destination"] == account["id"]
    assert transfer["source_transaction"] == charge["id"]
    # Grouped by our request (the rule); source_transaction ties it to the charge.
    assert transfer["transfer_group"] == (await requests(stripe_runtime))[0].ref
    [call] = stripe_api.calls_to("POST", "/v1/transfers")
    assert call.idempotency_key == f"payout:{payout_id}"
    assert (first.status, first.transfer_id) == ("paid", transfer["id"])
    assert (again.status, again.transfer_id) == ("paid", transfer["id"])


async def test_payout_waits_for_a_mechanic_without_a_ready_account(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin,
        stripe_payments: StripePayments) -> None:
    mechanic_id = await new_mechanic(stripe_runtime)
    payout_id = await completed_consultation(stripe_runtime, stripe_api, webhook_client,
                                             mechanic_id)

    payout = await pay_out(stripe_runtime, stripe_payments, payout_id)

    assert payout.status == "pending"
    assert payout.failure is not None and "onboarding" in payout.failure
    assert stripe_api.transfers == {}
