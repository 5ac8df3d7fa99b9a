"""Consultations: the session a customer paid for, from the match to its end.

A consultation is `waiting` from the match, `live` from the customer's first message or,
in a video tier, their joining the video room (the timer starts then), and `completed` when
either side ends it or its time is up, or `cancelled` (a mechanic's emergency, a no-show).
While it is waiting or live, what either side writes is relayed to the other
(bot.flows.consultation). Every change of status is a conditional UPDATE, so two processes
(or a sweep and a message) cannot both make it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Config
from core.links import sign
from core.messages import Attachment, Button, Outbound
from core.models import (
    Consultation,
    Customer,
    Extension,
    File,
    Identity,
    Intake,
    Mechanic,
    Payout,
    SessionRequest,
)
from core.outbox import enqueue, tell
from core.payments import split_cents
from core.runtime import Runtime
from core.store.uow import UnitOfWork
from core.video import room_name

log = logging.getLogger("autodoctor.consultations")

ACTIVE = ("waiting", "live")


def first_name(name: str | None, fallback: str) -> str:
    """The first word of a person's name, as the other side sees it."""
    parts = (name or "").split()
    return parts[0][:40] if parts else fallback


def file_url(config: Config, file_id: int, viewer_identity_id: int, now: datetime) -> str:
    """A link to one file that opens for this identity only, for [links] file_hours."""
    token = sign(config.secrets.secret_key, "f", file_id, f"i{viewer_identity_id}",
                 now + timedelta(hours=config.links.file_hours))
    return f"{config.public_url.rstrip('/')}/f/{token}"


def record_url(config: Config, consultation: Consultation, now: datetime) -> str:
    """The customer's session record page (/s/...), good for [links] record_days."""
    token = sign(config.secrets.secret_key, "s", consultation.id,
                 f"c{consultation.customer_id}",
                 now + timedelta(days=config.links.record_days))
    return f"{config.public_url.rstrip('/')}/s/{token}"


def attachments(config: Config, files: list[File], viewer_identity_id: int,
                now: datetime) -> tuple[Attachment, ...]:
    return tuple(Attachment(f.original_name or f"{f.public_id}", f.content_type,
                            file_url(config, f.id, viewer_identity_id, now), f.sha256)
                 for f in files)


async def mechanic_rating(session: AsyncSession, mechanic_id: int) -> tuple[float | None, int]:
    """The mechanic's average rating and how many ratings it is made of."""
    average, count = (await session.execute(
        select(func.avg(Consultation.rating), func.count(Consultation.rating))
        .where(Consultation.mechanic_id == mechanic_id,
               Consultation.rating.is_not(None)))).one()
    return (float(average) if average is not None else None), int(count)


def minutes_of(runtime: Runtime, consultation: Consultation) -> int:
    """The length paid for: the plan's, and any extensions'."""
    return runtime.config.plan(consultation.plan).minutes + consultation.extra_minutes


async def open_consultation(uow: UnitOfWork, runtime: Runtime, request: SessionRequest,
                            mechanic: Mechanic, mechanic_chat: Identity | None,
                            customer_chat: Identity | None, now: datetime) -> Consultation:
    """The match: a waiting consultation, and both sides told who the other is and how to
    start (the mechanic gets the intake with its photos)."""
    session = uow.session
    consultation = Consultation(
        request_id=request.id, customer_id=request.customer_id, mechanic_id=mechanic.id,
        plan=request.plan, status="waiting", created_at=now,
        customer_identity_id=customer_chat.id if customer_chat else None,
        mechanic_identity_id=mechanic_chat.id if mechanic_chat else None)
    session.add(consultation)
    await session.flush()
    intake = await session.get(Intake, request.intake_id)
    customer = await session.get(Customer, request.customer_id)
    assert intake is not None and customer is not None
    plan = runtime.config.plan(request.plan)
    stamp = f"{now.timestamp():.0f}"
    video = video_mode(runtime, request.plan)
    if video == "room":
        # Made by LiveKit after this commits (core.room_sweep), then both get their links.
        consultation.room_name = room_name(request.ref, consultation.id)
        consultation.room_status = "pending"
    if mechanic_chat is not None:
        photos = (await session.scalars(select(File).where(File.intake_id == intake.id)
                                        .order_by(File.id))).all()
        await enqueue(uow, mechanic_chat, Outbound(
            mechanic_chat.channel, mechanic_chat.address, runtime.texts(
                "accepted_details", request=request, plan=plan, intake=intake,
                customer_name=first_name(customer.display_name, "the customer"),
                photos=len(photos), video=video),
            dedupe_key=f"accepted:{request.id}:{mechanic.id}:{stamp}",
            files=attachments(runtime.config, list(photos), mechanic_chat.id, now)),
            now, consultation_id=consultation.id)
    average, ratings = await mechanic_rating(session, mechanic.id)
    await tell(uow, customer_chat, runtime.texts(
        "customer_matched", mechanic_name=first_name(mechanic.name, "your mechanic"),
        plan=plan, rating=round(average, 1) if average is not None else None,
        ratings=ratings, video=video), now, key=f"matched:{request.id}:{mechanic.id}:{stamp}",
        consultation_id=consultation.id)
    log.info("consultation=%s request=%s mechanic=%s waiting", consultation.id, request.ref,
             mechanic.id)
    return consultation


def video_mode(runtime: Runtime, plan: str) -> str | None:
    """How a tier's session runs: None a chat tier, "room" a video tier with a LiveKit room,
    "off" a video tier held as a chat session because LiveKit is not configured."""
    if not runtime.config.plan(plan).video:
        return None
    return "room" if runtime.rooms is not None else "off"


async def start_session(uow: UnitOfWork, runtime: Runtime, consultation: Consultation,
                        now: datetime) -> bool:
    """The customer joined (wrote first, or came into the video room): the session goes live
    and both are told until when. False if it was not waiting."""
    if not await go_live(uow.session, runtime, consultation, now):
        return False
    plan = runtime.config.plan(consultation.plan)
    text = runtime.texts("session_live", plan=plan,
                         minutes=plan.minutes + consultation.extra_minutes,
                         ends_at=consultation.ends_at)
    await tell_both(uow, consultation, now, f"live:{consultation.id}", text, text)
    return True


async def go_live(session: AsyncSession, runtime: Runtime, consultation: Consultation,
                  now: datetime) -> bool:
    """waiting → live: the timer starts now. False if it was not waiting."""
    ends = now + timedelta(minutes=minutes_of(runtime, consultation))
    started = (await session.execute(
        update(Consultation).where(Consultation.id == consultation.id,
                                   Consultation.status == "waiting")
        .values(status="live", started_at=now, ends_at=ends)
        .returning(Consultation.id))).scalar_one_or_none()
    if started is None:
        return False
    await session.refresh(consultation)
    log.info("consultation=%s live until %s", consultation.id, ends.isoformat())
    return True


@dataclass(frozen=True)
class Participants:
    """The two chats of a consultation (None where a chat has gone)."""

    customer: Identity | None
    mechanic: Identity | None


async def participants(session: AsyncSession, consultation: Consultation) -> Participants:
    customer = await session.get(Identity, consultation.customer_identity_id) \
        if consultation.customer_identity_id else None
    mechanic = await session.get(Identity, consultation.mechanic_identity_id) \
        if consultation.mechanic_identity_id else None
    return Participants(customer, mechanic)


async def tell_both(uow: UnitOfWork, consultation: Consultation, now: datetime, key: str,
                    customer_text: str, mechanic_text: str,
                    customer_buttons: tuple[Button, ...] = ()) -> None:
    """One notice to each side, each sent once (keyed)."""
    both = await participants(uow.session, consultation)
    await tell(uow, both.customer, customer_text, now, key=f"{key}:customer",
               consultation_id=consultation.id, buttons=customer_buttons)
    await tell(uow, both.mechanic, mechanic_text, now, key=f"{key}:mechanic",
               consultation_id=consultation.id)


async def complete(uow: UnitOfWork, runtime: Runtime, consultation_id: int, reason: str,
                   now: datetime) -> Consultation | None:
    """Ends a session under way (either side ended it, or its time is up): completed, its
    request completed, the mechanic freed and asked for notes, the customer asked for a
    rating, the payout queued. None if it was no longer under way."""
    session = uow.session
    ended = (await session.execute(
        update(Consultation).where(Consultation.id == consultation_id,
                                   Consultation.status.in_(ACTIVE))
        .values(status="completed", ended_at=now, end_reason=reason)
        .returning(Consultation.id).execution_options(synchronize_session=False)
    )).scalar_one_or_none()
    if ended is None:
        return None
    consultation = await session.get(Consultation, consultation_id,
                                     populate_existing=True)
    assert consultation is not None
    request = await session.get(SessionRequest, consultation.request_id)
    assert request is not None
    await session.execute(
        update(SessionRequest).where(SessionRequest.id == request.id,
                                     SessionRequest.status == "accepted")
        .values(SessionRequest.closing("completed", "completed", now))
        .execution_options(synchronize_session=False))
    await queue_payout(session, runtime, consultation, request, now)
    plan = runtime.config.plan(consultation.plan)
    rating = tuple(Button(str(n), f"rate:{consultation.id}:{n}") for n in range(1, 6))
    await tell_both(
        uow, consultation, now, f"ended:{consultation.id}",
        runtime.texts("session_ended_customer", reason=reason, plan=plan,
                      record=record_url(runtime.config, consultation, now)),
        runtime.texts("session_ended_mechanic", reason=reason, ref=request.ref,
                      report=plan.senior_only),
        customer_buttons=rating)
    log.info("consultation=%s request=%s completed (%s)", consultation.id, request.ref,
             reason)
    return consultation


async def queue_payout(session: AsyncSession, runtime: Runtime, consultation: Consultation,
                       request: SessionRequest, now: datetime) -> None:
    """The mechanic's share (of the price and any paid extensions), as one pending payout;
    billing sends it after the commit (core.sweeps.payouts_due)."""
    extensions = int(await session.scalar(
        select(func.coalesce(func.sum(Extension.amount_cents), 0))
        .where(Extension.consultation_id == consultation.id, Extension.status == "paid"))
        or 0)
    share, fee = split_cents(request.price_cents + extensions, runtime.config.billing.fee_bps)
    exists = await session.scalar(select(Payout.id).where(
        Payout.consultation_id == consultation.id))
    if exists is None:
        session.add(Payout(consultation_id=consultation.id, mechanic_id=consultation.mechanic_id,
                           amount_cents=share, fee_cents=fee,
                           currency=runtime.config.billing.currency, status="pending",
                           idempotency_key=f"payout:{consultation.id}", created_at=now))


async def cancel_for_emergency(uow: UnitOfWork, runtime: Runtime, consultation: Consultation,
                               now: datetime, *, reason: str = "emergency") -> bool:
    """The session must stop (the mechanic's emergency, or "admin_cancelled_session": an
    admin's call): cancelled, the request closed for a full refund (core.sweeps.refund_due),
    both told. False if it was no longer under way."""
    session = uow.session
    cancelled = (await session.execute(
        update(Consultation).where(Consultation.id == consultation.id,
                                   Consultation.status.in_(ACTIVE))
        .values(status="cancelled", ended_at=now, end_reason=reason)
        .returning(Consultation.id))).scalar_one_or_none()
    if cancelled is None:
        return False
    await session.refresh(consultation)
    request = await session.get(SessionRequest, consultation.request_id)
    assert request is not None
    await session.execute(
        update(SessionRequest).where(SessionRequest.id == request.id,
                                     SessionRequest.status == "accepted")
        .values(SessionRequest.closing("cancelled", reason, now)))
    plan = runtime.config.plan(consultation.plan)
    texts = ("emergency_customer", "emergency_mechanic") if reason == "emergency" else \
        ("session_cancelled_customer", "session_cancelled_mechanic")
    await tell_both(uow, consultation, now, f"{reason}:{consultation.id}",
                    runtime.texts(texts[0], plan=plan, amount_cents=request.price_cents),
                    runtime.texts(texts[1], ref=request.ref))
    log.info("consultation=%s request=%s cancelled: %s", consultation.id, request.ref,
             reason)
    return True
