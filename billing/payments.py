"""What a payment does to the domain: a paid checkout becomes one pending SessionRequest."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import BillingError
from billing.refunds import lock_checkout
from core.config import EXTENSION_PLAN
from core.db import insert_ignore, is_transient
from core.dispatch import offer_request
from core.models import Checkout, Conversation, Identity, Intake, SessionRequest
from core.outbox import tell
from core.relay import apply_extension
from core.runtime import Runtime
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.billing")

T = TypeVar("T")



@dataclass(frozen=True)
class CheckoutPayment:
    """The provider's word on a checkout: paid or not, and the payment behind it."""

    paid: bool
    payment_intent_id: str | None = None


class PaymentLookup(Protocol):
    async def payment_of(self, checkout: Checkout) -> CheckoutPayment | None: ...


async def mark_paid(uow: UnitOfWork, runtime: Runtime, checkout_ref: str, now: datetime,
                    payment_intent_id: str | None = None,
                    charge_id: str | None = None) -> SessionRequest | None:
    """Record a checkout as paid: one pending request and one message to the customer.

    Idempotent: returns the request it created, or None when there was nothing new to do
    (already paid, unknown or refunded checkout, or the intake was paid through another
    checkout, which then needs a refund).
    """
    session = uow.session
    found = await session.scalar(select(Checkout).where(Checkout.ref == checkout_ref))
    if found is None:
        log.warning("checkout=%s reported paid but unknown", checkout_ref)
        return None
    # Locks in the conversation engine's order (conversation, then the rows it changes), so
    # a payment landing while the customer types waits instead of deadlocking.
    identity, conversation = await _customer_chat(session, found)
    checkout = await lock_checkout(session, checkout_ref)
    assert checkout is not None
    checkout.payment_intent_id = checkout.payment_intent_id or payment_intent_id
    checkout.charge_id = checkout.charge_id or charge_id
    if checkout.status in ("paid", "refunded"):
        log.info("checkout=%s already %s; payment noted once", checkout.ref, checkout.status)
        return None
    if checkout.plan == EXTENSION_PLAN:
        # More time for a session under way: no request of its own.
        checkout.status, checkout.paid_at = "paid", now
        await apply_extension(uow, runtime, checkout, now)
        return None
    intake = await session.scalar(
        select(Intake).where(Intake.id == checkout.intake_id).with_for_update()
        .execution_options(populate_existing=True))
    assert intake is not None  # checkouts.intake_id is a non-null foreign key
    checkout.status = "paid"
    checkout.paid_at = now
    if await session.scalar(select(SessionRequest.id)
                            .where(SessionRequest.intake_id == intake.id)) is not None:
        log.error("checkout=%s paid but intake=%s already has a request: refund it",
                  checkout.ref, intake.id)
        return None
    # The money is in: even an intake cancelled meanwhile goes ahead, rather than keep a
    # payment and do nothing for it.
    intake.status = "paid"
    intake.updated_at = now
    request = await _new_request(session, checkout, now)
    if conversation is not None:
        conversation.step = "matching"
        conversation.intake_id = intake.id
        conversation.updated_at = now
    if identity is not None:
        text = runtime.texts("payment_received", request=request,
                             plan=runtime.config.plan(checkout.plan))
        await tell(uow, identity, text, now, key=f"paid:{checkout.ref}",
                   conversation_id=conversation.id if conversation is not None else None)
    else:
        log.warning("checkout=%s paid but customer=%s has no chat to tell", checkout.ref,
                    checkout.customer_id)
    log.info("checkout=%s paid request=%s intake=%s amount=%s", checkout.ref, request.ref,
             intake.id, checkout.amount_cents)
    # In the same transaction: the request is offered (or queued for admins) as it is born.
    await offer_request(uow, runtime, request, now)
    return request


async def settle_from_provider(runtime: Runtime, checkout_ref: str) -> bool:
    """Ask the provider whether an open checkout was paid (its webhook late or lost) and
    apply it as the webhook would; True when the checkout is paid now."""
    async with runtime.sessions() as session:
        checkout = await session.scalar(select(Checkout).where(Checkout.ref == checkout_ref))
    if checkout is None:
        return False
    if checkout.status == "paid":
        return True
    payments = runtime.payments
    if checkout.status != "open" or checkout.provider != payments.provider or \
            not hasattr(payments, "payment_of"):
        return False
    lookup: PaymentLookup = payments  # type: ignore[assignment]
    try:
        payment = await lookup.payment_of(checkout)
    except BillingError as exc:
        log.warning("checkout=%s could not be checked with the provider: %s", checkout_ref, exc)
        return False
    if payment is None or not payment.paid:
        return False
    now = runtime.clock.now()
    await in_transaction(runtime, lambda uow: mark_paid(
        uow, runtime, checkout_ref, now, payment_intent_id=payment.payment_intent_id))
    return True


async def mark_payment_failed(uow: UnitOfWork, runtime: Runtime, checkout_ref: str,
                              now: datetime) -> bool:
    """A delayed payment (bank debit) failed: the link is spent, the customer is told once."""
    session = uow.session
    found = await session.scalar(select(Checkout).where(Checkout.ref == checkout_ref))
    if found is None:
        return False
    identity, conversation = await _customer_chat(session, found)
    checkout = await lock_checkout(session, checkout_ref)
    if checkout is None or checkout.status != "open":
        return False
    checkout.status = "failed"
    if identity is not None:
        await tell(uow, identity,
                   runtime.texts("payment_failed", plan=runtime.config.product(checkout.plan)),
                   now, key=f"payment_failed:{checkout.ref}",
                   conversation_id=conversation.id if conversation is not None else None)
    log.info("checkout=%s payment failed", checkout.ref)
    return True


async def mark_expired(session: AsyncSession, checkout_ref: str) -> bool:
    """The hosted page expired unpaid; the next message in chat gets a fresh link."""
    checkout = await lock_checkout(session, checkout_ref)
    if checkout is None or checkout.status != "open":
        return False
    checkout.status = "expired"
    log.info("checkout=%s expired unpaid", checkout.ref)
    return True


async def in_transaction(runtime: Runtime, work: Callable[[UnitOfWork], Awaitable[T]],
                         attempts: int = 4) -> T:
    """Run work in one unit of work; again after a deadlock or lock timeout, never half-done."""
    for attempt in range(attempts):
        try:
            async with runtime.transaction() as uow:
                return await work(uow)
        except DBAPIError as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            log.info("retrying billing transaction after %s", type(exc.orig).__name__)
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


async def _customer_chat(session: AsyncSession, checkout: Checkout
                         ) -> tuple[Identity | None, Conversation | None]:
    """The customer's identity on the intake's channel and its conversation (locked)."""
    channel = await session.scalar(select(Intake.channel).where(Intake.id == checkout.intake_id))
    rows = (await session.execute(
        select(Identity, Conversation.id, Conversation.intake_id)
        .outerjoin(Conversation, Conversation.identity_id == Identity.id)
        .where(Identity.customer_id == checkout.customer_id)
        .order_by(Identity.id.desc()))).all()
    if not rows:
        return None, None

    def rank(row: Any) -> tuple[bool, bool, bool]:
        identity, conversation_id, intake_id = row
        # The chat this intake was made in first, then any chat on its channel.
        return (intake_id == checkout.intake_id, identity.channel == channel,
                conversation_id is not None)

    identity, conversation_id, _ = max(rows, key=rank)
    conversation = None
    if conversation_id is not None:
        conversation = await session.scalar(
            select(Conversation).where(Conversation.id == conversation_id).with_for_update()
            .execution_options(populate_existing=True))
    return identity, conversation


async def _new_request(session: AsyncSession, checkout: Checkout,
                       now: datetime) -> SessionRequest:
    # Short refs people can type ("ACCEPT 4821"); longer only when the short ones collide.
    for attempt in range(12):
        digits = 4 if attempt < 4 else 5 if attempt < 8 else 6
        ref = f"R-{10 ** (digits - 1) + secrets.randbelow(9 * 10 ** (digits - 1))}"
        request_id = await insert_ignore(session, SessionRequest, {
            "ref": ref, "intake_id": checkout.intake_id, "checkout_id": checkout.id,
            "customer_id": checkout.customer_id, "plan": checkout.plan,
            "price_cents": checkout.amount_cents, "status": "pending", "paid_at": now,
            "created_at": now}, ["ref"])
        if request_id is not None:
            request = await session.get(SessionRequest, request_id)
            assert request is not None
            return request
    raise BillingError("could not find a free request reference; try again")
