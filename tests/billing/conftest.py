"""Billing fixtures: the Stripe stand-in, a runtime that pays through it, the webhook app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine

import billing
from billing.payouts import payouts_for
from billing.stripe_provider import StripePayments
from bot.texts import text as render_text
from core.clock import ManualClock
from core.config import Config, with_changes
from core.runtime import Runtime
from tests.standins.stripe_api import StripeStandin

WEBHOOK_SECRET = "whsec_test_standin_secret"


@pytest.fixture
async def stripe_api(clock: ManualClock) -> AsyncIterator[StripeStandin]:
    """Stripe on 127.0.0.1, keeping the test's clock (expires_at is checked against it)."""
    async with StripeStandin(now=lambda: clock.now().timestamp()) as api:
        yield api


@pytest.fixture
def stripe_config(config: Config, stripe_api: StripeStandin) -> Config:
    return with_changes(config, stripe={"api_base": stripe_api.url},
                        secrets={"stripe_secret_key": stripe_api.api_key,
                                 "stripe_webhook_secret": WEBHOOK_SECRET})


@pytest.fixture
async def stripe_payments(stripe_config: Config) -> AsyncIterator[StripePayments]:
    payments = StripePayments(stripe_config)
    yield payments
    await payments.close()


@pytest.fixture
def stripe_runtime(stripe_config: Config, engine: AsyncEngine, clock: ManualClock,
                   stripe_payments: StripePayments) -> Runtime:
    return Runtime.build(stripe_config, engine, stripe_payments, render_text, clock,
                         refund=billing.refunds_for(stripe_payments),
                         payout=payouts_for(stripe_payments))


@pytest.fixture
async def webhook_client(aiohttp_client: Any, stripe_runtime: Runtime) -> TestClient:
    """A small app with billing's routes, as bot.app would mount them with Stripe on."""
    app = web.Application()
    billing.setup(app, stripe_runtime)
    client: TestClient = await aiohttp_client(app)
    return client


@pytest.fixture
async def offline_client(aiohttp_client: Any, runtime: Runtime) -> TestClient:
    """The same with Stripe off: the offline /pay pages."""
    app = web.Application()
    billing.setup(app, runtime)
    client: TestClient = await aiohttp_client(app)
    return client


@pytest.fixture(autouse=True)
async def mechanic_on_call(runtime: Runtime) -> None:
    """One mechanic available, so a paid request is offered and stays pending."""
    from tests.factories import linked_mechanic

    await linked_mechanic(runtime, "On-call")
