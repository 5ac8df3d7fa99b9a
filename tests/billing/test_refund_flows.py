"""Refunds the customer never has to ask for twice: expiry and cancel-before-accept."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from bot.flows import route
from core.engine import Engine
from core.messages import Inbound
from core.models import Refund, SessionRequest
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.billing.conftest import WEBHOOK_SECRET
from tests.billing.helpers import AwaitingPayment, awaiting_payment, texts_to
from tests.standins.stripe_api import StripeStandin


async def paid(runtime: Runtime, api: StripeStandin, client: TestClient) -> AwaitingPayment:
    bought = await awaiting_payment(runtime, "video15")
    assert bought.checkout.provider_session_id is not None
    await api.send_event(client, api.event(
        "checkout.session.completed", api.complete_session(bought.checkout.provider_session_id)),
        WEBHOOK_SECRET)
    return bought


async def refund_rows(runtime: Runtime) -> list[Refund]:
    async with runtime.sessions() as s:
        return list((await s.scalars(select(Refund))).all())


async def test_expiry_refunds_once_even_when_two_sweeps_run(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await paid(stripe_runtime, stripe_api, webhook_client)
    stripe_runtime.clock.advance(7201)  # type: ignore[attr-defined]
    first, second = await asyncio.gather(run_sweeps(stripe_runtime), run_sweeps(stripe_runtime))
    third = await run_sweeps(stripe_runtime)
    assert first.expired + second.expired == 1 and third.expired == 0
    assert [r["amount"] for r in stripe_api.refunds.values()] == [2999]
    [row] = await refund_rows(stripe_runtime)
    assert (row.status, row.amount_cents, row.reason) == ("succeeded", 2999, "unmatched")
    texts = await texts_to(stripe_runtime, bought.identity)
    assert sum("refunded in full" in t for t in texts) == 1


async def test_cancel_before_accept_refunds_once_even_if_said_twice(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    bought = await paid(stripe_runtime, stripe_api, webhook_client)
    engine = Engine(stripe_runtime, route)
    address = bought.identity.address
    first = await engine.receive(Inbound(channel="web", address=address, text="cancel"))
    assert "being refunded in full" in first[0].text
    second = await engine.receive(Inbound(channel="web", address=address, text="cancel"))
    assert "nothing to cancel" in second[0].text
    assert [r["amount"] for r in stripe_api.refunds.values()] == [2999]
    [row] = await refund_rows(stripe_runtime)
    assert (row.status, row.reason) == ("succeeded", "customer_cancelled")
    async with stripe_runtime.sessions() as s:
        request = await s.scalar(select(SessionRequest))
    assert request is not None and request.status == "cancelled"
    # A later sweep finds nothing more to refund.
    assert (await run_sweeps(stripe_runtime)).refunded == 0


async def test_cancel_after_a_mechanic_accepted_is_refused(
        webhook_client: TestClient, stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    from core import dispatch
    from core.models import Mechanic

    bought = await paid(stripe_runtime, stripe_api, webhook_client)
    async with stripe_runtime.transaction() as uow:
        s = uow.session
        mechanic_id = (await s.scalars(select(Mechanic.id))).first()
        request = await s.scalar(select(SessionRequest))
        assert request is not None and mechanic_id is not None
        await dispatch.accept(uow, stripe_runtime, request.ref, mechanic_id,
                              stripe_runtime.clock.now())
    engine = Engine(stripe_runtime, route)
    reply = await engine.receive(Inbound(channel="web", address=bought.identity.address,
                                         text="cancel"))
    assert "already accepted" in reply[0].text
    assert stripe_api.refunds == {}


async def test_mechanic_asks_the_bot_for_payout_setup(stripe_runtime: Runtime,
                                                     stripe_api: StripeStandin) -> None:
    from tests.factories import linked_mechanic

    sam = await linked_mechanic(stripe_runtime, "Sam")
    engine = Engine(stripe_runtime, route)
    [reply] = await engine.receive(Inbound(channel=sam.channel, address=sam.address,
                                           text="payout"))
    assert "80%" in reply.text
    assert reply.link is not None and reply.link.label == "Set up payouts"
    [account] = stripe_api.accounts.values()
    assert reply.link.url.startswith(f"https://connect.stripe.com/setup/e/{account['id']}/")
    stripe_api.activate_account(account["id"])
    async with stripe_runtime.sessions.begin() as s:
        from core.models import Mechanic

        mechanic = await s.get(Mechanic, sam.mechanic_id)
        assert mechanic is not None
        mechanic.payouts_enabled = True
    [ready] = await engine.receive(Inbound(channel=sam.channel, address=sam.address,
                                           text="payout"))
    assert "ready" in ready.text


async def test_cancelling_before_paying_closes_the_stripe_page(stripe_runtime: Runtime,
                                                               stripe_api: StripeStandin) -> None:
    bought = await awaiting_payment(stripe_runtime, "chat10")
    engine = Engine(stripe_runtime, route)
    reply = await engine.receive(Inbound(channel="web", address=bought.identity.address,
                                         text="cancel"))
    assert "nothing was charged" in reply[0].text
    [expire] = stripe_api.calls_to(
        "POST", f"/v1/checkout/sessions/{bought.checkout.provider_session_id}/expire")
    assert expire.idempotency_key == f"expire:{bought.checkout.ref}"


async def test_payout_without_stripe_says_it_is_not_set_up(
        runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    from tests.factories import linked_mechanic

    sam = await linked_mechanic(runtime, "Sam")
    engine = Engine(runtime, route)
    [reply] = await engine.receive(Inbound(channel=sam.channel, address=sam.address,
                                           text="payout"))
    assert reply.text.startswith("Payouts are not set up on this server")
    assert reply.link is None
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert all(r.exc_info is None for r in caplog.records)
