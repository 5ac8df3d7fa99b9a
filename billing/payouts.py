"""Payouts: the mechanic's share of a completed consultation, sent once as a Connect transfer."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import BillingError, ProviderRejected
from core.db import insert_ignore
from core.models import Checkout, Consultation, Mechanic, Payout, SessionRequest
from core.payments import PayoutPort, split_cents
from core.runtime import Runtime

log = logging.getLogger("autodoctor.billing")


class TransferPort(Protocol):
    async def transfer(self, payout: Payout, *, destination: str,
                       source_transaction: str | None, transfer_group: str | None) -> str: ...

    async def charge_for_payment(self, payment_intent_id: str) -> str | None: ...


async def send_payout(session: AsyncSession, payments: TransferPort, payout_id: int,
                      now: datetime) -> Payout:
    """Transfer one payout to the mechanic's connected account; a paid payout stays as it is.

    A mechanic without a ready Stripe account keeps the payout pending (with the reason in
    `failure`); a transfer Stripe refuses marks it failed. Stripe being down raises
    ProviderUnavailable and changes nothing.
    """
    payout = await session.scalar(
        select(Payout).where(Payout.id == payout_id).with_for_update()
        .execution_options(populate_existing=True))
    if payout is None:
        raise BillingError(f"no payout {payout_id}")
    if payout.status == "paid":
        return payout
    mechanic = await session.get(Mechanic, payout.mechanic_id)
    if mechanic is None or not mechanic.stripe_account_id or not mechanic.payouts_enabled:
        payout.failure = ("the mechanic has not finished Stripe onboarding; the payout waits "
                          "until they do")
        log.info("payout=%s waiting: mechanic=%s not onboarded", payout.id, payout.mechanic_id)
        return payout
    checkout = await _checkout_of(session, payout)
    request_ref = await session.scalar(
        select(SessionRequest.ref).join(Consultation, Consultation.request_id == SessionRequest.id)
        .where(Consultation.id == payout.consultation_id))
    try:
        source = None
        if checkout is not None:
            if checkout.charge_id is None and checkout.payment_intent_id:
                checkout.charge_id = await payments.charge_for_payment(
                    checkout.payment_intent_id)
            source = checkout.charge_id
        payout.transfer_id = await payments.transfer(
            payout, destination=mechanic.stripe_account_id, source_transaction=source,
            transfer_group=request_ref)
    except ProviderRejected as exc:
        payout.status = "failed"
        payout.failure = str(exc)
        log.warning("payout=%s failed: %s", payout.id, exc)
        return payout
    payout.status = "paid"
    payout.paid_at = now
    payout.failure = None
    return payout


async def _checkout_of(session: AsyncSession, payout: Payout) -> Checkout | None:
    return await session.scalar(
        select(Checkout)
        .join(SessionRequest, SessionRequest.checkout_id == Checkout.id)
        .join(Consultation, Consultation.request_id == SessionRequest.id)
        .where(Consultation.id == payout.consultation_id))


async def complete_payout(session: AsyncSession, runtime: Runtime, consultation: Consultation,
                          now: datetime) -> Payout:
    """Pay the mechanic for a completed consultation: one Payout row, one transfer, ever.

    A mechanic not yet onboarded keeps it pending; it is sent when Stripe reports their
    account ready (account.updated), see pay_pending.
    """
    request = await session.get(SessionRequest, consultation.request_id)
    assert request is not None
    share, fee = split_cents(request.price_cents, runtime.config.billing.fee_bps)
    await insert_ignore(session, Payout, {
        "consultation_id": consultation.id, "mechanic_id": consultation.mechanic_id,
        "amount_cents": share, "fee_cents": fee, "currency": runtime.config.billing.currency,
        "status": "pending", "idempotency_key": f"payout:{consultation.id}",
        "created_at": now}, ["consultation_id"])
    payout_id = await session.scalar(select(Payout.id).where(
        Payout.consultation_id == consultation.id))
    assert payout_id is not None
    return await send_payout(session, runtime.payments, payout_id, now)  # type: ignore[arg-type]


def payouts_for(payments: TransferPort) -> PayoutPort:
    """Runtime.payout: send one pending payout through this provider."""
    async def pay(session: AsyncSession, payout_id: int, now: datetime) -> Payout:
        return await send_payout(session, payments, payout_id, now)

    return pay


async def pay_pending(session: AsyncSession, runtime: Runtime, mechanic_id: int,
                      now: datetime) -> list[Payout]:
    """Send every payout kept waiting for this mechanic's onboarding."""
    ids = (await session.scalars(select(Payout.id).where(
        Payout.mechanic_id == mechanic_id, Payout.status == "pending"))).all()
    return [await send_payout(session, runtime.payments, pid, now)  # type: ignore[arg-type]
            for pid in ids]
