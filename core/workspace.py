"""What a mechanic's workspace (the web console) shows: their open offers, the job they hold
with its intake and photos, their history and earnings, and their availability. Read-only:
every change (accept, available, away) goes through the chat, as on every other channel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.aftercare import earnings, mechanic_history
from core.availability import schedule_of
from core.consultations import file_url, first_name
from core.dispatch.offers import OPEN_STATUSES, holds_job
from core.models import (
    Consultation,
    Customer,
    File,
    Identity,
    Intake,
    Mechanic,
    Offer,
    SessionRequest,
)
from core.payments import split_cents
from core.runtime import Runtime


def _vehicle(intake: Intake) -> str:
    car = " ".join(str(p) for p in (intake.vehicle_year, intake.vehicle_make,
                                    intake.vehicle_model) if p)
    if car and intake.vin:
        return f"{car} (VIN {intake.vin})"
    return car or (f"VIN {intake.vin}" if intake.vin else "not given")


def _intake(intake: Intake) -> dict[str, Any]:
    return {"vehicle": _vehicle(intake), "vin": intake.vin,
            "odometer": intake.odometer, "odometer_unit": intake.odometer_unit or "mi",
            "problem": intake.problem or ""}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


async def mechanic_workspace(session: AsyncSession, runtime: Runtime, mechanic_id: int,
                             viewer_identity_id: int, now: datetime) -> dict[str, Any]:
    """The workspace of one mechanic, seen from one of their chats (photo links open for
    that chat, or for the chat the job is relayed with)."""
    config = runtime.config
    mechanic = await session.get(Mechanic, mechanic_id)
    assert mechanic is not None
    fee_bps = config.billing.fee_bps
    offers = []
    for offer, request, intake in (await session.execute(
            select(Offer, SessionRequest, Intake)
            .join(SessionRequest, SessionRequest.id == Offer.request_id)
            .join(Intake, Intake.id == SessionRequest.intake_id)
            .where(Offer.mechanic_id == mechanic_id, Offer.status == "offered",
                   SessionRequest.status.in_(OPEN_STATUSES))
            .order_by(Offer.id))).all():
        plan = config.plan(request.plan)
        files = int(await session.scalar(select(func.count()).select_from(File)
                                         .where(File.intake_id == intake.id)) or 0)
        offers.append({"ref": request.ref, "plan": plan.name, "minutes": plan.minutes,
                       "payout_cents": split_cents(request.price_cents, fee_bps)[0],
                       "files": files, "offered_at": _iso(offer.created_at),
                       **_intake(intake)})
    history = [{"ref": past.ref, "plan": config.plan(past.consultation.plan).name,
                "status": past.consultation.status, "date": _iso(past.consultation.created_at),
                "rating": past.consultation.rating}
               for past in await mechanic_history(session, mechanic_id)]
    money = await earnings(session, mechanic_id)
    return {
        "mechanic": {"name": mechanic.name, "available": mechanic.is_available,
                     "senior": mechanic.is_senior, "timezone": mechanic.timezone,
                     "hours": [w.describe() for w in await schedule_of(session, mechanic_id)]},
        "currency": config.billing.currency.upper(),
        "offers": offers,
        "job": await _job(session, runtime, mechanic_id, viewer_identity_id, now),
        "history": history,
        "earnings": {"sessions": money.sessions, "paid_cents": money.paid_cents,
                     "pending_cents": money.pending_cents, "rating": money.rating,
                     "ratings": money.ratings},
    }


async def _job(session: AsyncSession, runtime: Runtime, mechanic_id: int,
               viewer_identity_id: int, now: datetime) -> dict[str, Any] | None:
    request = await holds_job(session, mechanic_id)
    if request is None:
        return None
    intake = await session.get(Intake, request.intake_id)
    assert intake is not None
    consultation = await session.scalar(
        select(Consultation).where(Consultation.request_id == request.id,
                                   Consultation.mechanic_id == mechanic_id)
        .order_by(Consultation.id.desc()).limit(1))
    # The photo links open for the chat the session is relayed with (which may be this one).
    viewer = viewer_identity_id
    customer_name = None
    if consultation is not None:
        viewer = consultation.mechanic_identity_id or viewer_identity_id
        if consultation.customer_identity_id is not None:
            chat = await session.get(Identity, consultation.customer_identity_id)
            customer_name = chat.display_name if chat is not None else None
    if customer_name is None:
        customer = await session.get(Customer, request.customer_id)
        customer_name = customer.display_name if customer is not None else None
    files = (await session.scalars(select(File).where(File.intake_id == intake.id)
                                   .order_by(File.id))).all()
    plan = runtime.config.plan(request.plan)
    return {"ref": request.ref, "plan": plan.name, "minutes": plan.minutes,
            "status": consultation.status if consultation is not None else request.status,
            "customer": first_name(customer_name, "the customer"),
            "started_at": _iso(consultation.started_at if consultation else None),
            "ends_at": _iso(consultation.ends_at if consultation else None),
            "payout_cents": split_cents(request.price_cents, runtime.config.billing.fee_bps)[0],
            "photos": [{"name": f.original_name or f.public_id, "content_type": f.content_type,
                        "url": file_url(runtime.config, f.id, viewer, now)} for f in files],
            **_intake(intake)}
