"""The payment port the intake calls; billing/ implements it (Stripe, or offline test mode)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Config
from core.models import Checkout, Intake
from core.sql import add_new, as_transient


class PaymentPort(Protocol):
    provider: str

    async def create_checkout(self, session: AsyncSession, checkout: Checkout) -> str:
        """Open a hosted payment page for this (already added) checkout; returns its URL."""
        ...


class RefundPort(Protocol):
    async def __call__(self, session: AsyncSession, checkout_ref: str, reason: str,
                       now: datetime) -> object:
        """Refund the checkout in full, once, however often it is asked."""
        ...


def split_cents(price_cents: int, fee_bps: int) -> tuple[int, int]:
    """(mechanic's share, platform fee) in integer cents: fee = price * fee_bps // 10000."""
    fee = price_cents * fee_bps // 10000
    return price_cents - fee, fee


def new_checkout_ref() -> str:
    return "co_" + secrets.token_urlsafe(18)


async def checkout_for(session: AsyncSession, port: PaymentPort, config: Config,
                       intake: Intake, now: datetime) -> Checkout:
    """The intake's open, unexpired checkout, or a new one: one payable link at a time."""
    if intake.submitted_at is None:
        # Never confirmed: it has no checkout yet (the first is made as it is submitted, in the
        # same transaction), so there is nothing to look for.
        return await _open_checkout(session, port, config, intake, now)
    # This intake's checkouts made or changed in this transaction count: written first (a new
    # one is in the identity map before it is written, see _open_checkout).
    if any(isinstance(row, Checkout) and row.intake_id == intake.id
           for row in (*session.new, *session.identity_map.values())):
        await session.flush()
    with session.no_autoflush:
        existing = await session.scalar(
            select(Checkout).where(Checkout.intake_id == intake.id,
                                   Checkout.plan == intake.plan, Checkout.status == "open",
                                   Checkout.expires_at > now)
            .order_by(Checkout.id.desc()).limit(1))
    if existing is not None and existing.url:
        return existing
    return await _open_checkout(session, port, config, intake, now)


async def _open_checkout(session: AsyncSession, port: PaymentPort, config: Config,
                         intake: Intake, now: datetime) -> Checkout:
    assert intake.plan is not None
    plan = config.plan(intake.plan)
    # Transient, its values set as loading sets them (not attribute by attribute through the
    # ORM's events, which only an object in a session needs).
    checkout = as_transient(Checkout, {
        **_NO_VALUES, "ref": new_checkout_ref(), "intake_id": intake.id,
        "customer_id": intake.customer_id, "plan": intake.plan,
        "amount_cents": plan.price_cents, "currency": config.billing.currency,
        "provider": port.provider, "status": "open", "created_at": now,
        "expires_at": now + timedelta(seconds=config.billing.checkout_ttl_seconds)})
    # The provider's page first: if it fails, no half-made checkout row is left behind. The
    # row is stored with the transaction (the link reaches the customer only after commit),
    # with the other new checkouts of a group commit in one statement (core.sql.add_new).
    checkout.url = await port.create_checkout(session, checkout)
    values = checkout.__dict__  # with what the port set (Stripe: its session's id)
    return await add_new(session, Checkout, {key: values.get(key) for key in _NO_VALUES})


# Every column but the id.
_NO_VALUES = {c.key: None for c in Checkout.__table__.columns if c.key != "id"}
