"""Payouts: the mechanic's share of a completed consultation, sent once as a Connect transfer."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import BillingError, ProviderRejected
from core.models import Checkout, Consultation, Mechanic, Payout, SessionRequest

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
    source = None
    if checkout is not None:
        if checkout.charge_id is None and checkout.payment_intent_id:
            checkout.charge_id = await payments.charge_for_payment(checkout.payment_intent_id)
        source = checkout.charge_id
    try:
        payout.transfer_id = await payments.transfer(
            payout, destination=mechanic.stripe_account_id, source_transaction=source,
            transfer_group=checkout.ref if checkout is not None else None)
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
