"""Refunds: a paid checkout is refunded in full at most once, whoever asks and however often."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import CheckoutNotFound, NotRefundable
from core.db import insert_ignore
from core.models import Checkout, Refund, SessionRequest

log = logging.getLogger("autodoctor.billing")


@dataclass(frozen=True)
class ProviderRefund:
    """The provider's answer to a refund: its id and 'succeeded', 'pending' or 'failed'."""

    id: str | None
    status: str


class Refunder(Protocol):
    provider: str

    async def refund(self, checkout: Checkout, *, reason: str) -> ProviderRefund:
        """Refund the checkout's payment in full, idempotently on the provider's side."""
        ...


def refund_key(checkout: Checkout) -> str:
    return f"refund:{checkout.ref}"


async def lock_checkout(session: AsyncSession, ref: str) -> Checkout | None:
    """The checkout row, locked for this transaction and read afresh."""
    return await session.scalar(
        select(Checkout).where(Checkout.ref == ref).with_for_update()
        .execution_options(populate_existing=True))


async def refund_checkout(session: AsyncSession, refunder: Refunder, checkout_ref: str,
                          reason: str, now: datetime) -> Refund:
    """Refund a paid checkout in full; asked again, returns the refund already made."""
    checkout = await lock_checkout(session, checkout_ref)
    if checkout is None:
        raise CheckoutNotFound(f"no checkout {checkout_ref}")
    refund = await session.scalar(select(Refund).where(Refund.checkout_id == checkout.id))
    if refund is not None and (refund.status == "succeeded" or refund.provider_refund_id):
        return refund
    if checkout.status not in ("paid", "refunded"):
        raise NotRefundable(f"checkout {checkout.ref} is {checkout.status}, not paid: there is "
                            "nothing to refund")
    if refund is None:
        request_id = await session.scalar(
            select(SessionRequest.id).where(SessionRequest.checkout_id == checkout.id))
        refund = Refund(checkout_id=checkout.id, request_id=request_id,
                        amount_cents=checkout.amount_cents, reason=reason[:64],
                        status="pending", idempotency_key=refund_key(checkout), created_at=now)
        session.add(refund)
        await session.flush()
    # If this call fails the transaction rolls back; a later try reuses the idempotency key,
    # so the provider still makes one refund.
    result = await refunder.refund(checkout, reason=refund.reason)
    refund.provider_refund_id = result.id
    refund.status = result.status
    if result.status == "succeeded":
        refund.completed_at = now
        checkout.status = "refunded"
    log.info("checkout=%s refund=%s status=%s reason=%s", checkout.ref, refund.id,
             refund.status, refund.reason)
    return refund


async def refund_confirmed(session: AsyncSession, checkout: Checkout, amount_refunded: int,
                           fully: bool, now: datetime, provider_refund_id: str | None = None
                           ) -> Refund | None:
    """The provider reports money returned (our refund or one made in its dashboard)."""
    if amount_refunded <= 0:
        return None
    refund = await session.scalar(select(Refund).where(Refund.checkout_id == checkout.id))
    if refund is None:
        await insert_ignore(session, Refund, {
            "checkout_id": checkout.id, "amount_cents": amount_refunded,
            "reason": "provider_dashboard", "status": "succeeded",
            "idempotency_key": refund_key(checkout), "provider_refund_id": provider_refund_id,
            "created_at": now, "completed_at": now}, ["checkout_id"])
        refund = await session.scalar(select(Refund).where(Refund.checkout_id == checkout.id))
    elif refund.status != "succeeded":
        refund.status = "succeeded"
        refund.completed_at = now
        refund.provider_refund_id = refund.provider_refund_id or provider_refund_id
    if fully:
        checkout.status = "refunded"
    return refund
