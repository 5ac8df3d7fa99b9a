"""The dashboard: today at a glance (UTC) and two charts of the last 7 days."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_web import charts
from admin_web.web import now_of, render, runtime_of
from core.models import Checkout, Consultation, Intake, Payout, Refund, SessionRequest


@dataclass(frozen=True)
class Today:
    sessions: int
    live: int
    unattended: int
    intakes: int
    charged_cents: int
    refunded_cents: int
    fees_cents: int
    median_accept: timedelta | None
    accepted: int


async def _count(session: AsyncSession, query: object) -> int:
    return int(await session.scalar(query) or 0)  # type: ignore[call-overload]


async def today(session: AsyncSession, now: datetime) -> Today:
    """Today's figures, from midnight UTC."""
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    count = select(func.count())
    accepted = (await session.execute(select(SessionRequest.paid_at, SessionRequest.accepted_at)
                                      .where(SessionRequest.accepted_at >= start))).all()
    waits = sorted(accepted_at - paid_at for paid_at, accepted_at in accepted
                   if accepted_at is not None and accepted_at >= paid_at)
    return Today(
        sessions=await _count(session, count.select_from(Consultation)
                              .where(Consultation.created_at >= start)),
        live=await _count(session, count.select_from(Consultation)
                          .where(Consultation.status == "live")),
        unattended=await _count(session, count.select_from(SessionRequest)
                                .where(SessionRequest.status == "unattended")),
        intakes=await _count(session, count.select_from(Intake)
                             .where(Intake.created_at >= start)),
        charged_cents=await _count(session, select(func.sum(Checkout.amount_cents)).where(
            Checkout.paid_at >= start, Checkout.status.in_(("paid", "refunded")))),
        refunded_cents=await _count(session, select(func.sum(Refund.amount_cents)).where(
            Refund.status == "succeeded", Refund.completed_at >= start)),
        fees_cents=await _count(session, select(func.sum(Payout.fee_cents)).where(
            Payout.created_at >= start)),
        median_accept=_median(waits),
        accepted=len(waits))


def _median(values: list[timedelta]) -> timedelta | None:
    """The middle of sorted values (the mean of the two middle ones for an even count)."""
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


async def week_charts(session: AsyncSession, now: datetime) -> list[charts.Chart]:
    since = now - timedelta(days=8)
    paid = (await session.scalars(select(SessionRequest.paid_at)
                                  .where(SessionRequest.paid_at >= since))).all()
    pairs = [(p, a) for p, a in (await session.execute(
        select(SessionRequest.paid_at, SessionRequest.accepted_at)
        .where(SessionRequest.accepted_at >= since))).all() if a is not None]
    return [charts.requests_per_hour(paid, now), charts.time_to_accept(pairs, now)]


async def dashboard(request: web.Request) -> web.Response:
    now = now_of(request)
    async with runtime_of(request).readers() as session:
        figures = await today(session, now)
        week = await week_charts(session, now)
    return render(request, "dashboard.html", today=figures, charts=week)
