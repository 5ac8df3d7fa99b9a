"""POST /webhooks/stripe: verify Stripe's signature, then apply each event exactly once."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import stripe
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.connect import account_updated
from billing.errors import BillingError
from billing.payments import in_transaction, mark_expired, mark_paid, mark_payment_failed
from billing.payouts import pay_pending
from billing.refunds import refund_confirmed
from core.config import EXTENSION_PLAN
from core.db import insert_ignore
from core.models import Checkout, InboundEvent, SessionRequest
from core.runtime import Runtime
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.billing.webhook")

# Stripe's own default: a signature older than this is a replay.
TOLERANCE_SECONDS = 300

Effect = Callable[[UnitOfWork, Runtime, dict[str, Any], datetime], Awaitable[None]]


class StripeWebhook:
    """The aiohttp handler; a bad, missing or stale signature is a 400 that changes nothing."""

    def __init__(self, runtime: Runtime, secret: str) -> None:
        if not secret:
            raise BillingError("STRIPE_WEBHOOK_SECRET is not set; the Stripe webhook is off")
        self.runtime = runtime
        self._secret = secret

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.read()
        try:
            stripe.WebhookSignature.verify_header(
                payload, request.headers.get("Stripe-Signature"), self._secret,
                TOLERANCE_SECONDS)
            event = json.loads(payload)
            event_id, event_type = _stripe_id(event["id"]), str(event["type"])
            obj = event["data"]["object"]
            if event_id is None or not isinstance(obj, dict):
                raise ValueError("no event id, or data.object is not an object")
        except stripe.SignatureVerificationError as exc:
            log.warning("stripe webhook rejected: %s", str(exc).split(";")[0][:120])
            return web.json_response({"error": "invalid signature"}, status=400)
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("stripe webhook rejected: malformed event")
            return web.json_response({"error": "malformed event"}, status=400)
        try:
            outcome = await process_event(self.runtime, event_id, event_type, obj)
        except MalformedEvent as exc:
            # Nothing was recorded; a field of the event is not what Stripe sends.
            log.warning("stripe event=%s type=%s rejected: %s", event_id, event_type, exc)
            return web.json_response({"error": f"malformed event: {exc}"}, status=400)
        except BillingError as exc:
            # Nothing was recorded: Stripe delivers the event again later.
            log.warning("stripe event=%s type=%s failed: %s", event_id, event_type, exc)
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response({"received": True, "outcome": outcome})


async def process_event(runtime: Runtime, event_id: str, event_type: str,
                        obj: dict[str, Any]) -> str:
    """Apply one verified event; 'processed', 'duplicate' or 'ignored'."""
    effect = EFFECTS.get(event_type)
    if effect is None:
        return "ignored"

    async def work(uow: UnitOfWork) -> str:
        now = runtime.clock.now()
        # Recorded in the same transaction as the effect: both happen, or neither does.
        fresh = await insert_ignore(uow.session, InboundEvent, {
            "provider": "stripe", "event_id": event_id, "received_at": now},
            ["provider", "event_id"])
        if fresh is None:
            log.info("stripe event=%s type=%s duplicate ignored", event_id, event_type)
            return "duplicate"
        await effect(uow, runtime, obj, now)
        log.info("stripe event=%s type=%s processed", event_id, event_type)
        return "processed"

    return await in_transaction(runtime, work)


class MalformedEvent(ValueError):
    """A field of a signed event that is not of the shape Stripe sends."""


def _stripe_id(value: Any) -> str | None:
    """An id or reference as Stripe sends them (printable ASCII, bounded), None if absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 255 or not (
            value.isascii() and value.isprintable()):
        raise MalformedEvent(f"not an id: {str(value)[:40]!r}")
    return value


def _field_id(obj: dict[str, Any], key: str) -> str | None:
    """obj[key] as an id; an expanded object (a dict) gives its own id."""
    value = obj.get(key)
    return _stripe_id(value.get("id") if isinstance(value, dict) else value)


def _mapping(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedEvent(f"{key} is not an object")
    return value


def _cents(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value < 10**12:
        raise MalformedEvent(f"{key} is not an amount in cents")
    return value


async def _checkout_ref(session: AsyncSession, obj: dict[str, Any]) -> str | None:
    ref = _field_id(obj, "client_reference_id") or _field_id(_mapping(obj, "metadata"),
                                                             "checkout")
    if ref:
        return ref
    # Not made by us, or made before metadata: find it by the session id.
    return await session.scalar(select(Checkout.ref).where(
        Checkout.provider_session_id == (_field_id(obj, "id") or "")))


async def _session_paid(uow: UnitOfWork, runtime: Runtime, obj: dict[str, Any],
                        now: datetime) -> None:
    session = uow.session
    ref = await _checkout_ref(session, obj)
    if ref is None:
        log.warning("stripe session=%s paid but matches no checkout", obj.get("id"))
        return
    expected = (await session.execute(select(Checkout.amount_cents, Checkout.currency)
                                      .where(Checkout.ref == ref))).first()
    if expected is not None and (obj.get("amount_total"), obj.get("currency")) != tuple(expected):
        # Stripe's figure is what was charged (a stripe_price_id may differ from config.toml).
        log.warning("checkout=%s paid %s %s but expected %s %s", ref, obj.get("amount_total"),
                    obj.get("currency"), *expected)
    request = await mark_paid(uow, runtime, ref, now,
                              payment_intent_id=_field_id(obj, "payment_intent"))
    if request is None:
        await _refund_if_duplicate(session, runtime, ref, now)


async def _session_completed(uow: UnitOfWork, runtime: Runtime, obj: dict[str, Any],
                             now: datetime) -> None:
    # 'unpaid' here is a delayed payment method (bank debit): async_payment_* follows.
    if obj.get("payment_status") == "paid":
        await _session_paid(uow, runtime, obj, now)


async def _refund_if_duplicate(session: AsyncSession, runtime: Runtime, ref: str,
                               now: datetime) -> None:
    """A second payment for an intake already paid through another checkout goes back."""
    checkout = await session.scalar(select(Checkout).where(Checkout.ref == ref))
    if checkout is None or checkout.status != "paid" or checkout.plan == EXTENSION_PLAN:
        return  # an extension's late payment is refunded by the sweep
    if await session.scalar(select(SessionRequest.id)
                            .where(SessionRequest.checkout_id == checkout.id)) is not None:
        return
    if runtime.refund is None:
        log.error("checkout=%s is a second payment for its intake and no refunder is set: "
                  "refund it by hand", ref)
        return
    await runtime.refund(session, ref, "duplicate_payment", now)


async def _session_failed(uow: UnitOfWork, runtime: Runtime, obj: dict[str, Any],
                          now: datetime) -> None:
    session = uow.session
    ref = await _checkout_ref(session, obj)
    if ref is not None:
        await mark_payment_failed(uow, runtime, ref, now)


async def _session_expired(uow: UnitOfWork, runtime: Runtime, obj: dict[str, Any],
                           now: datetime) -> None:
    session = uow.session
    ref = await _checkout_ref(session, obj)
    if ref is not None:
        await mark_expired(session, ref)


async def _charge_refunded(uow: UnitOfWork, runtime: Runtime, obj: dict[str, Any],
                           now: datetime) -> None:
    session = uow.session
    charge_id, payment_intent = _field_id(obj, "id"), _field_id(obj, "payment_intent")
    amount = _cents(obj, "amount_refunded")
    refunds = _mapping(obj, "refunds").get("data") or []
    if not isinstance(refunds, list):
        raise MalformedEvent("refunds.data is not a list")
    refund_id = _field_id(refunds[0], "id") if refunds and isinstance(refunds[0], dict) else None
    query = select(Checkout).with_for_update().execution_options(populate_existing=True)
    checkout = None
    if payment_intent:
        checkout = await session.scalar(query.where(Checkout.payment_intent_id == payment_intent))
    if checkout is None and charge_id:
        checkout = await session.scalar(query.where(Checkout.charge_id == charge_id))
    if checkout is None:
        log.warning("stripe charge=%s refunded but matches no checkout", charge_id)
        return
    checkout.charge_id = checkout.charge_id or charge_id
    await refund_confirmed(session, checkout, amount, bool(obj.get("refunded")), now,
                           provider_refund_id=refund_id)


async def _account_updated(uow: UnitOfWork, runtime: Runtime, obj: dict[str, Any],
                           now: datetime) -> None:
    session = uow.session
    mechanic = await account_updated(session, _field_id(obj, "id") or "",
                                     charges_enabled=bool(obj.get("charges_enabled")),
                                     payouts_enabled=bool(obj.get("payouts_enabled")))
    if mechanic is not None and mechanic.payouts_enabled:
        await pay_pending(session, runtime, mechanic.id, now)


EFFECTS: dict[str, Effect] = {
    "checkout.session.completed": _session_completed,
    "checkout.session.async_payment_succeeded": _session_paid,
    "checkout.session.async_payment_failed": _session_failed,
    "checkout.session.expired": _session_expired,
    "charge.refunded": _charge_refunded,
    "account.updated": _account_updated,
}
