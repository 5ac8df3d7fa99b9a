"""After a consultation: the mechanic's notes (a written report for Full Diagnostic), the
customer's rating and review, and both sides' history."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.consultations import first_name, participants, record_url
from core.models import Consultation, Mechanic, Payout, SessionRequest
from core.outbox import tell
from core.runtime import Runtime
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.aftercare")

# A Full Diagnostic's written report, asked for part by part.
REPORT_PARTS = ("findings", "repairs", "cost")
# How long after the end a mechanic's next free text is taken as their notes.
NOTES_WINDOW = timedelta(hours=24)
MAX_NOTES_CHARS = 4000


async def awaiting_notes(session: AsyncSession, mechanic_id: int,
                         now: datetime) -> Consultation | None:
    """The mechanic's latest session that ended lately without their notes."""
    return await session.scalar(
        select(Consultation).where(Consultation.mechanic_id == mechanic_id,
                                   Consultation.status == "completed",
                                   Consultation.mechanic_notes.is_(None),
                                   Consultation.ended_at > now - NOTES_WINDOW)
        .order_by(Consultation.ended_at.desc()).limit(1))


def next_report_part(consultation: Consultation) -> str | None:
    """The part of a Full Diagnostic's report still to write (None when complete)."""
    written = consultation.report or {}
    return next((part for part in REPORT_PARTS if not written.get(part)), None)


async def take_notes(uow: UnitOfWork, runtime: Runtime, consultation: Consultation,
                     text: str, now: datetime) -> str | None:
    """Stores what the mechanic wrote as notes (or as the next part of the report) and, once
    complete, sends them to the customer. Returns the report part still to ask for, or None
    when the notes went out."""
    text = text.strip()[:MAX_NOTES_CHARS]
    if runtime.config.plan(consultation.plan).senior_only:
        part = next_report_part(consultation)
        if part is not None:
            consultation.report = {**(consultation.report or {}), part: text}
        missing = next_report_part(consultation)
        if missing is not None:
            return missing
        notes = runtime.texts("report_text", report=consultation.report)
    else:
        notes = text
    consultation.mechanic_notes = notes
    mechanic = await uow.session.get(Mechanic, consultation.mechanic_id)
    both = await participants(uow.session, consultation)
    await tell(uow, both.customer, runtime.texts(
        "notes_for_customer", name=first_name(mechanic.name if mechanic else None,
                                              "Your mechanic"),
        notes=notes, record=record_url(runtime.config, consultation, now)),
        now, key=f"notes:{consultation.id}", consultation_id=consultation.id)
    log.info("consultation=%s notes sent to the customer", consultation.id)
    return None


async def rateable(session: AsyncSession, runtime: Runtime, customer_id: int,
                   now: datetime, consultation_id: int | None = None) -> Consultation | None:
    """The customer's session they may rate now (ended lately); a given one, or their latest."""
    window = timedelta(hours=runtime.config.links.rating_change_hours)
    query = select(Consultation).where(Consultation.customer_id == customer_id,
                                       Consultation.status == "completed",
                                       Consultation.ended_at > now - window)
    if consultation_id is not None:
        query = query.where(Consultation.id == consultation_id)
    return await session.scalar(query.order_by(Consultation.ended_at.desc()).limit(1))


def rate(consultation: Consultation, stars: int, now: datetime) -> bool:
    """Stores a rating of 1 to 5; True if it replaced an earlier one."""
    if not 1 <= stars <= 5:
        raise ValueError("a rating is 1 to 5")
    changed = consultation.rating is not None
    consultation.rating, consultation.rated_at = stars, now
    log.info("consultation=%s rated %s", consultation.id, stars)
    return changed


@dataclass(frozen=True)
class PastSession:
    consultation: Consultation
    ref: str
    other_name: str


async def customer_history(session: AsyncSession, customer_id: int,
                           limit: int = 10) -> list[PastSession]:
    rows = (await session.execute(
        select(Consultation, SessionRequest.ref, Mechanic.name)
        .join(SessionRequest, SessionRequest.id == Consultation.request_id)
        .join(Mechanic, Mechanic.id == Consultation.mechanic_id)
        .where(Consultation.customer_id == customer_id)
        .order_by(Consultation.id.desc()).limit(limit))).all()
    return [PastSession(c, ref, first_name(name, "mechanic")) for c, ref, name in rows]


async def mechanic_history(session: AsyncSession, mechanic_id: int,
                           limit: int = 10) -> list[PastSession]:
    rows = (await session.execute(
        select(Consultation, SessionRequest.ref)
        .join(SessionRequest, SessionRequest.id == Consultation.request_id)
        .where(Consultation.mechanic_id == mechanic_id)
        .order_by(Consultation.id.desc()).limit(limit))).all()
    return [PastSession(c, ref, "") for c, ref in rows]


@dataclass(frozen=True)
class Earnings:
    sessions: int
    paid_cents: int
    pending_cents: int
    rating: float | None
    ratings: int


async def earnings(session: AsyncSession, mechanic_id: int) -> Earnings:
    done = int(await session.scalar(select(func.count()).select_from(Consultation).where(
        Consultation.mechanic_id == mechanic_id, Consultation.status == "completed")) or 0)
    sums = dict((await session.execute(
        select(Payout.status, func.sum(Payout.amount_cents))
        .where(Payout.mechanic_id == mechanic_id).group_by(Payout.status))).all())
    average, count = (await session.execute(
        select(func.avg(Consultation.rating), func.count(Consultation.rating))
        .where(Consultation.mechanic_id == mechanic_id))).one()
    return Earnings(done, int(sums.get("paid") or 0), int(sums.get("pending") or 0),
                    round(float(average), 1) if average is not None else None, int(count))
