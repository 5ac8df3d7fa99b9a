"""Payments: Stripe Checkout, webhooks, refunds, Connect payouts; offline provider."""

from __future__ import annotations

import logging
from datetime import datetime

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from billing import pages
from billing.errors import BillingError
from billing.offline import OfflinePayments
from billing.payments import mark_paid
from billing.payouts import complete_payout
from billing.refunds import Refunder, refund_checkout
from core.config import Config
from core.models import Refund
from core.payments import PaymentPort, RefundPort
from core.runtime import Runtime

log = logging.getLogger("autodoctor.billing")


def payments_for(config: Config) -> PaymentPort:
    """Stripe when STRIPE_SECRET_KEY is set, else the offline test-mode checkout."""
    if config.secrets.stripe_secret_key:
        # Imported only when used: the stripe package takes a third of a second to load.
        from billing.stripe_provider import StripePayments

        return StripePayments(config)
    return OfflinePayments(config)


def refunds_for(payments: Refunder) -> RefundPort:
    """Runtime.refund: refund a checkout in full, once, through this provider."""
    async def refund(session: AsyncSession, checkout_ref: str, reason: str,
                     now: datetime) -> Refund:
        return await refund_checkout(session, payments, checkout_ref, reason, now)

    return refund


def setup(app: web.Application, runtime: Runtime) -> None:
    """Add billing's routes: the Stripe webhook, the payment pages, and closing the client."""
    secrets = runtime.config.secrets
    if secrets.stripe_webhook_secret:
        from billing.webhook import StripeWebhook

        webhook = StripeWebhook(runtime, secrets.stripe_webhook_secret)
        app.router.add_post("/webhooks/stripe", webhook.handle, name="stripe_webhook")
    elif secrets.stripe_secret_key:
        log.warning("STRIPE_WEBHOOK_SECRET is not set: a Stripe payment is noticed only if "
                    "the customer comes back to the success page; set it to the webhook "
                    "endpoint's signing secret")
    if not secrets.stripe_secret_key:
        offline = pages.OfflineCheckoutPages(runtime)
        app.router.add_get("/pay/{ref}", offline.show, name="offline_pay")
        app.router.add_post("/pay/{ref}", offline.pay, name="offline_pay_post")
    # Where Stripe sends people back to (and harmless for the offline checkout).
    returned = pages.PaymentDone(runtime)
    app.router.add_get("/pay/{ref}/done", returned.show, name="payment_done")
    app.router.add_get("/pay/{ref}/cancelled", returned.cancelled, name="payment_cancelled")
    app.router.add_get("/connect/done", pages.connect_done, name="connect_done")
    app.router.add_get("/connect/refresh", pages.connect_refresh, name="connect_refresh")

    close = getattr(runtime.payments, "close", None)
    if close is not None:
        async def close_payments(app: web.Application) -> None:
            await close()

        app.on_cleanup.append(close_payments)


__all__ = ["BillingError", "complete_payout", "mark_paid", "payments_for", "refunds_for", "setup"]
