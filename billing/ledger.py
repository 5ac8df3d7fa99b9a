"""The ledger check: every cent charged is refunded, paid out, kept as fee, or still held.

Each paid checkout falls in exactly one place, and its parts must add up to what was charged:
- refunded in full;
- a completed consultation: the mechanic's share (paid, pending or failed) plus the fee;
- completed but with no payout row yet (owed to the mechanic);
- held for a request still open (pending, unattended, accepted);
- owed back: closed unserved (expired, cancelled, a second payment) and not refunded yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Checkout, Consultation, Payout, Refund, SessionRequest
from core.payments import split_cents

OPEN = ("pending", "unattended", "accepted")


@dataclass
class Ledger:
    charged_cents: int = 0
    refunded_cents: int = 0
    transferred_cents: int = 0
    payouts_pending_cents: int = 0
    payouts_failed_cents: int = 0
    platform_fees_cents: int = 0
    owed_to_mechanics_cents: int = 0
    held_for_open_requests_cents: int = 0
    refunds_due_cents: int = 0
    checkouts: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def accounted_cents(self) -> int:
        return (self.refunded_cents + self.transferred_cents + self.payouts_pending_cents
                + self.payouts_failed_cents + self.platform_fees_cents
                + self.owed_to_mechanics_cents + self.held_for_open_requests_cents
                + self.refunds_due_cents)

    @property
    def balanced(self) -> bool:
        return self.charged_cents == self.accounted_cents and not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accounted_cents": self.accounted_cents,
                "balanced": self.balanced}


async def reconcile(session: AsyncSession, fee_bps: int, *, paid_from: datetime | None = None,
                    paid_before: datetime | None = None) -> Ledger:
    """Walk every paid checkout (or those paid in [paid_from, paid_before)) and place its
    money; list anything that does not add up."""
    ledger = Ledger()
    query = select(Checkout).where(Checkout.status.in_(("paid", "refunded")))
    if paid_from is not None:
        query = query.where(Checkout.paid_at >= paid_from)
    if paid_before is not None:
        query = query.where(Checkout.paid_at < paid_before)
    checkouts = (await session.scalars(query.order_by(Checkout.id))).all()
    requests = {r.checkout_id: r for r in (await session.scalars(select(SessionRequest))).all()}
    refunds = {r.checkout_id: r for r in (await session.scalars(select(Refund))).all()}
    consultations = {c.request_id: c for c in (await session.scalars(
        select(Consultation))).all()}
    payouts = {p.consultation_id: p for p in (await session.scalars(select(Payout))).all()}
    for checkout in checkouts:
        ledger.checkouts += 1
        ledger.charged_cents += checkout.amount_cents
        _place(ledger, checkout, requests.get(checkout.id), refunds.get(checkout.id),
               consultations, payouts, fee_bps)
    return ledger


def _place(ledger: Ledger, checkout: Checkout, request: SessionRequest | None,
           refund: Refund | None, consultations: dict[int, Consultation],
           payouts: dict[int, Payout], fee_bps: int) -> None:
    amount = checkout.amount_cents
    if refund is not None and refund.status == "succeeded":
        ledger.refunded_cents += refund.amount_cents
        if refund.amount_cents != amount:
            ledger.problems.append(f"checkout {checkout.ref}: refunded {refund.amount_cents} "
                                   f"of {amount}")
        return
    if request is None or request.status in ("expired", "cancelled"):
        ledger.refunds_due_cents += amount
        return
    if request.status in OPEN:
        ledger.held_for_open_requests_cents += amount
        return
    consultation = consultations.get(request.id)
    payout = payouts.get(consultation.id) if consultation is not None else None
    if payout is None:
        ledger.owed_to_mechanics_cents += amount
        return
    expected_fee = split_cents(amount, fee_bps)[1]
    bucket = {"paid": "transferred_cents", "pending": "payouts_pending_cents",
              "failed": "payouts_failed_cents"}[payout.status]
    setattr(ledger, bucket, getattr(ledger, bucket) + payout.amount_cents)
    ledger.platform_fees_cents += payout.fee_cents
    if payout.amount_cents + payout.fee_cents != amount or payout.fee_cents != expected_fee:
        ledger.problems.append(
            f"checkout {checkout.ref}: payout {payout.amount_cents} + fee {payout.fee_cents} "
            f"!= charged {amount} (fee should be {expected_fee})")
