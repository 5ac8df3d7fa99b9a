"""The same Stripe event delivered three times at once to each of two processes on one
database (issue 28's faults: Stripe redelivers, and a proxy spreads the deliveries): one
effect. Each "process" is an app with its own Runtime, engine and connection pool."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

import billing
from billing.payouts import payouts_for
from billing.stripe_provider import StripePayments
from bot.texts import text as render_text
from core.runtime import Runtime
from tests.billing.conftest import WEBHOOK_SECRET
from tests.billing.helpers import (
    awaiting_payment,
    inbound_events,
    requests,
    texts_to,
)
from tests.billing.test_webhook import paid_event, paid_once
from tests.standins.stripe_api import StripeStandin


async def test_one_event_three_times_to_each_of_two_processes_has_one_effect(
        aiohttp_client: Any, engine_factory: Any, webhook_client: TestClient,
        stripe_runtime: Runtime, stripe_api: StripeStandin) -> None:
    payments = StripePayments(stripe_runtime.config)
    other = Runtime.build(stripe_runtime.config, engine_factory(), payments, render_text,
                          stripe_runtime.clock, refund=billing.refunds_for(payments),
                          payout=payouts_for(payments))
    app = web.Application()
    billing.setup(app, other)
    second: TestClient = await aiohttp_client(app)
    try:
        bought = await awaiting_payment(stripe_runtime, "chat10")
        event = await paid_event(stripe_api, bought)
        answers = await asyncio.gather(*[
            stripe_api.send_event(client, event, WEBHOOK_SECRET)
            for client in (webhook_client, second) * 3])
        assert [status for status, _ in answers] == [200] * 6
        outcomes = sorted(json.loads(body)["outcome"] for _, body in answers)
        assert outcomes == ["duplicate"] * 5 + ["processed"]
        [request] = await requests(stripe_runtime)
        assert request.status == "pending" and request.price_cents == 999
        assert paid_once(await texts_to(stripe_runtime, bought.identity))
        assert await inbound_events(stripe_runtime) == 1
    finally:
        await payments.close()
        await other.engine.dispose()
