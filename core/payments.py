"""The payment port the intake calls; billing/ implements it (Stripe, or offline test mode)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Config
from core.models import Checkout, table
from core.store.records import CheckoutRecord, IntakeRecord
from core.store.uow import UnitOfWork


class PaymentPort(Protocol):
    provider: str

    async def create_checkout(self, session: AsyncSession, checkout: CheckoutRecord) -> str:
        """Open a hosted payment page for this checkout (about to be written); returns its
        URL. A provider's own id for the page goes into the record (update())."""
        ...


class RefundPort(Protocol):
    async def __call__(self, session: AsyncSession, checkout_ref: str, reason: str,
                       now: datetime) -> object:
        """Refund the checkout in full, once, however often it is asked."""
        ...


class PayoutPort(Protocol):
    async def __call__(self, session: AsyncSession, payout_id: int, now: datetime) -> object:
        """Send one pending payout to the mechanic (once, whoever asks)."""
        ...


def split_cents(price_cents: int, fee_bps: int) -> tuple[int, int]:
    """(mechanic's share, platform fee) in integer cents: fee = price * fee_bps // 10000."""
    fee = price_cents * fee_bps // 10000
    return price_cents - fee, fee


def new_checkout_ref() -> str:
    return "co_" + secrets.token_urlsafe(18)


async def checkout_for(uow: UnitOfWork, port: PaymentPort, config: Config,
                       intake: IntakeRecord, now: datetime) -> CheckoutRecord | Checkout:
    """The intake's open, unexpired checkout, or a new one: one payable link at a time."""
    if intake.submitted_at is not None:
        # Confirmed before: its link may still be good (one made in this transaction first).
        for made in reversed(uow.new_rows(CheckoutRecord)):
            if made.intake_id == intake.id and made.plan == intake.plan and made.url:
                return made
        existing = await uow.session.scalar(
            select(Checkout).where(Checkout.intake_id == intake.id,
                                   Checkout.plan == intake.plan, Checkout.status == "open",
                                   Checkout.expires_at > now)
            .order_by(Checkout.id.desc()).limit(1))
        if existing is not None and existing.url:
            return existing
    # Never confirmed, or no good link: a new checkout.
    assert intake.plan is not None
    plan = config.plan(intake.plan)
    checkout = CheckoutRecord(
        id=await uow.new_id(table(Checkout)), ref=new_checkout_ref(), intake_id=intake.id,
        customer_id=intake.customer_id, plan=intake.plan, amount_cents=plan.price_cents,
        currency=config.billing.currency, provider=port.provider, status="open",
        created_at=now,
        expires_at=now + timedelta(seconds=config.billing.checkout_ttl_seconds))
    # The provider's page first: if it fails, no half-made checkout row is left behind. The
    # row is written with the unit of work (the link reaches the customer only after commit).
    checkout.update(url=await port.create_checkout(uow.session, checkout))
    return uow.add(checkout)
