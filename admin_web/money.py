"""Money for a date range: charges, refunds, fees, payouts paid, pending and failed, and the
ledger check (billing.ledger) of the checkouts paid in it; CSV of every movement."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_web.web import (
    PAGE_ROWS,
    csv_response,
    day,
    day_end,
    day_start,
    now_of,
    render,
    runtime_of,
    url,
)
from billing.ledger import Ledger, reconcile
from core.models import Checkout, Mechanic, Payout, Refund


@dataclass(frozen=True)
class MoneyRange:
    since: date
    until: date

    @classmethod
    def from_query(cls, query: Mapping[str, str], today: date) -> MoneyRange:
        until = day(query.get("until")) or today
        since = day(query.get("since")) or until - timedelta(days=29)
        return cls(min(since, until), max(since, until))

    @property
    def start(self) -> datetime:
        found = day_start(self.since)
        assert found is not None
        return found

    @property
    def end(self) -> datetime:
        found = day_end(self.until)
        assert found is not None
        return found


@dataclass
class Money:
    charges: list[Checkout] = field(default_factory=list)
    refunds: list[tuple[Refund, str]] = field(default_factory=list)
    payouts: list[tuple[Payout, str]] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)

    @property
    def charged_cents(self) -> int:
        return sum(c.amount_cents for c in self.charges)

    @property
    def refunded_cents(self) -> int:
        return sum(r.amount_cents for r, _ref in self.refunds if r.status == "succeeded")

    @property
    def fees_cents(self) -> int:
        return sum(p.fee_cents for p, _name in self.payouts)

    def payouts_cents(self, status: str) -> int:
        return sum(p.amount_cents for p, _name in self.payouts if p.status == status)


async def money_in(session: AsyncSession, fee_bps: int, span: MoneyRange) -> Money:
    """Charges paid, refunds asked and payouts queued in the range, and the ledger check of
    the checkouts paid in it."""
    found = Money()
    found.charges = list((await session.scalars(select(Checkout).where(
        Checkout.status.in_(("paid", "refunded")), Checkout.paid_at >= span.start,
        Checkout.paid_at < span.end).order_by(Checkout.paid_at, Checkout.id))).all())
    found.refunds = [(r, ref) for r, ref in (await session.execute(
        select(Refund, Checkout.ref).join(Checkout, Checkout.id == Refund.checkout_id)
        .where(Refund.created_at >= span.start, Refund.created_at < span.end)
        .order_by(Refund.created_at, Refund.id))).all()]
    found.payouts = [(p, name) for p, name in (await session.execute(
        select(Payout, Mechanic.name).join(Mechanic, Mechanic.id == Payout.mechanic_id)
        .where(Payout.created_at >= span.start, Payout.created_at < span.end)
        .order_by(Payout.created_at, Payout.id))).all()]
    found.ledger = await reconcile(session, fee_bps, paid_from=span.start,
                                   paid_before=span.end)
    return found


def movements(found: Money) -> list[list[object]]:
    """One CSV row per charge, refund and payout, in time order."""
    rows: list[tuple[datetime, list[object]]] = []
    for c in found.charges:
        assert c.paid_at is not None
        rows.append((c.paid_at, ["charge", c.paid_at, c.ref, c.plan, c.amount_cents, "",
                                 c.status, c.currency]))
    for r, ref in found.refunds:
        rows.append((r.created_at, ["refund", r.created_at, ref, r.reason, r.amount_cents, "",
                                    r.status, ""]))
    for p, name in found.payouts:
        rows.append((p.created_at, ["payout", p.created_at, p.idempotency_key, name,
                                    p.amount_cents, p.fee_cents, p.status, p.currency]))
    return [row for _at, row in sorted(rows, key=lambda item: item[0])]


MOVEMENT_HEADER = ["kind", "at", "reference", "detail", "amount_cents", "fee_cents", "status",
                   "currency"]


async def money(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    span = MoneyRange.from_query(request.query, now_of(request).date())
    async with runtime.readers() as session:
        found = await money_in(session, runtime.config.billing.fee_bps, span)
    return render(request, "money.html", span=span, found=found, shown=PAGE_ROWS,
                  csv_url=url(request, "money_csv", {"since": span.since.isoformat(),
                                                     "until": span.until.isoformat()}))


async def money_csv(request: web.Request) -> web.Response:
    from admin_web.csv_export import csv_text

    runtime = runtime_of(request)
    span = MoneyRange.from_query(request.query, now_of(request).date())
    async with runtime.readers() as session:
        found = await money_in(session, runtime.config.billing.fee_bps, span)
    return csv_response(csv_text(MOVEMENT_HEADER, movements(found)),
                        f"money-{span.since}-{span.until}.csv")
