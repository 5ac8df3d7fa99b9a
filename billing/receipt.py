"""What the page of a paid checkout says: where the request stands now, and the receipt."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import BillingError
from core.config import EXTENSION_PLAN
from core.consultations import first_name
from core.errors import ConfigError
from core.models import Checkout, Consultation, Extension, Mechanic, SessionRequest
from core.runtime import Runtime
from core.sweeps import REFUNDED_CLOSES

log = logging.getLogger("autodoctor.billing.pages")

_BACK = "You can close this page and return to the chat."
_NEW = "Say \"start\" in the chat to make a new request."


@dataclass(frozen=True)
class Standing:
    """Where a paid request stands, as the page's heading and lines (plain text: escaped
    when rendered)."""

    heading: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Receipt:
    paid_on: str
    tier: str
    amount: str
    payment_ref: str
    request_ref: str | None
    refunded: bool
    # Stripe's hosted receipt of the charge, when it has one; otherwise the page is it.
    stripe_url: str | None


@dataclass(frozen=True)
class PaidView:
    standing: Standing
    receipt: Receipt


class ReceiptLookup(Protocol):
    async def receipt_url(self, checkout: Checkout) -> str | None: ...


def money(cents: int, currency: str) -> str:
    """Integer cents as people read them: $29.99, or 29.99 SEK for other currencies."""
    amount = f"{cents // 100:,}.{cents % 100:02d}"
    symbol = _SYMBOLS.get(currency.lower())
    return f"{symbol}{amount}" if symbol else f"{amount} {currency.upper()}"


_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "cad": "CA$", "aud": "A$"}


def when(moment: datetime) -> str:
    """5 Dec 2026, 18:24 UTC"""
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


async def paid_view(runtime: Runtime, checkout_ref: str) -> PaidView | None:
    """The page of a paid (or refunded) checkout; None while it is not paid."""
    async with runtime.readers() as session:
        checkout = await session.scalar(select(Checkout).where(Checkout.ref == checkout_ref))
        if checkout is None or checkout.status not in ("paid", "refunded"):
            return None
        request = await session.scalar(select(SessionRequest).where(
            SessionRequest.checkout_id == checkout.id))
        standing = await _standing(session, runtime, checkout, request)
    try:
        tier = runtime.config.product(checkout.plan).name
    except ConfigError:  # a tier since removed from config.toml
        tier = checkout.plan
    paid_at = checkout.paid_at or checkout.created_at
    return PaidView(standing, Receipt(
        paid_on=when(paid_at), tier=tier, amount=money(checkout.amount_cents, checkout.currency),
        payment_ref=checkout.ref, request_ref=request.ref if request is not None else None,
        refunded=checkout.status == "refunded",
        stripe_url=await _stripe_receipt(runtime, checkout)))


async def _standing(session: AsyncSession, runtime: Runtime, checkout: Checkout,
                    request: SessionRequest | None) -> Standing:
    amount = money(checkout.amount_cents, checkout.currency)
    if checkout.status == "refunded":
        return Standing("This payment was refunded",
                        (f"The full amount, {amount}, went back to you.", _NEW))
    if checkout.plan == EXTENSION_PLAN:
        late = await session.scalar(select(Extension.status).where(
            Extension.checkout_id == checkout.id)) == "late"
        if late:
            return Standing("Paid after the session ended",
                            (f"The session was over before your payment of {amount} arrived, "
                             "so the full amount is being refunded to you.",))
        return Standing("Extra time paid",
                        (f"Thank you! Your payment of {amount} went through and the time is "
                         "added to your session.", _BACK))
    status = request.status if request is not None else "pending"
    if request is not None and status in ("accepted", "completed"):
        name = await _mechanic_name(session, request)
        if status == "completed":
            return Standing("Session completed",
                            (f"Your session with {name} is over. Thank you for choosing "
                             "AutoDoctor!", _NEW))
        live = await session.scalar(select(Consultation.id).where(
            Consultation.request_id == request.id, Consultation.status == "live"))
        if live is not None:
            return Standing(f"In session with {name}",
                            (f"Your session with {name} is under way in the chat.", _BACK))
        return Standing(f"Matched with {name}",
                        (f"{name}, a certified mechanic, accepted your request. Return to the "
                         "chat to start your session.",))
    if status == "expired":
        return Standing("No mechanic was free in time",
                        ("Your request expired before a mechanic could take it, so the full "
                         f"amount, {amount}, is being refunded to you.", _NEW))
    if status == "cancelled" and request is not None:
        if request.close_reason == "no_show":
            return Standing("Your mechanic moved on",
                            ("They waited but the session did not start. Return to the chat "
                             "to be matched again at no new charge, or say \"cancel request\" "
                             "for a full refund.",))
        if request.close_reason in REFUNDED_CLOSES:
            line = ("It was cancelled before a session took place, so the full amount, "
                    f"{amount}, is being refunded to you.")
        else:
            line = "It was cancelled. Reply \"help\" in the chat if you did not expect this."
        return Standing("This request was cancelled", (line, _NEW))
    # Paid, not matched yet (or the request is being created this moment).
    return Standing("Paid — waiting for a mechanic",
                    (f"Thank you! Your payment of {amount} went through and the bot is finding "
                     "your mechanic. You'll hear in the chat as soon as one accepts.", _BACK))


async def _mechanic_name(session: AsyncSession, request: SessionRequest) -> str:
    mechanic_id = request.mechanic_id or await session.scalar(
        select(Consultation.mechanic_id).where(Consultation.request_id == request.id)
        .order_by(Consultation.id.desc()).limit(1))
    name = await session.scalar(select(Mechanic.name).where(Mechanic.id == mechanic_id)) \
        if mechanic_id is not None else None
    return first_name(name, "your mechanic")


async def _stripe_receipt(runtime: Runtime, checkout: Checkout) -> str | None:
    """The charge's receipt on Stripe, if this checkout was paid there and it has one; the
    page does without it if Stripe cannot say (it is a link, not the payment)."""
    payments = runtime.payments
    if checkout.provider != payments.provider or not hasattr(payments, "receipt_url"):
        return None
    lookup: ReceiptLookup = payments  # type: ignore[assignment]
    try:
        url = await lookup.receipt_url(checkout)
    except BillingError as exc:
        log.warning("checkout=%s receipt not read from the provider: %s", checkout.ref, exc)
        return None
    # A link on our page: only an https address, whatever the provider answered.
    parts = urlsplit(url or "")
    return url if parts.scheme == "https" and parts.netloc else None
