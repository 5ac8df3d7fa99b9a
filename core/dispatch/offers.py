"""Offers: which mechanics may take a paid request, offering it to them, and the admin queue
when nobody can."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.admins import alert_admins
from core.consultations import attachments, first_name
from core.dispatch.waves import next_wave
from core.messages import Button, Outbound
from core.models import (
    Availability,
    Consultation,
    Customer,
    File,
    Identity,
    Intake,
    Mechanic,
    Offer,
    SessionRequest,
)
from core.outbox import enqueue_many, tell
from core.payments import split_cents
from core.runtime import Runtime
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.dispatch")

OPEN_STATUSES = ("pending", "unattended")
# Which identity of a mechanic gets the offer when they are linked on several channels.
CHANNEL_PREFERENCE = {"telegram": 0, "sms": 1, "web": 2, "console": 3}


async def holds_job(session: AsyncSession, mechanic_id: int) -> SessionRequest | None:
    """The request a mechanic is working on, if any (accepted, or in a session)."""
    busy = await session.scalar(select(SessionRequest).where(
        SessionRequest.mechanic_id == mechanic_id, SessionRequest.status == "accepted"))
    if busy is not None:
        return busy
    live = await session.scalar(select(Consultation.request_id).where(
        Consultation.mechanic_id == mechanic_id,
        Consultation.status.in_(("waiting", "live"))))
    return await session.get(SessionRequest, live) if live is not None else None


def in_window(windows: list[Availability], tz: str, now: datetime) -> bool:
    """Whether `now` is inside one of a mechanic's weekly windows (none: always)."""
    if not windows:
        return True  # no windows set: no time restriction
    try:
        local = now.astimezone(ZoneInfo(tz))
    except (KeyError, ValueError):
        local = now
    minute = local.hour * 60 + local.minute
    return any(w.weekday == local.weekday() and w.start_minute <= minute < w.end_minute
               for w in windows)


async def eligible_mechanics(session: AsyncSession, runtime: Runtime, plan_code: str,
                             now: datetime) -> list[tuple[Mechanic, Identity]]:
    """Active, available, reachable, inside a window, holding no job, senior if needed."""
    plan = runtime.config.plan(plan_code)
    busy_requests = select(SessionRequest.mechanic_id).where(
        SessionRequest.status == "accepted", SessionRequest.mechanic_id.is_not(None))
    busy_sessions = select(Consultation.mechanic_id).where(
        Consultation.status.in_(("waiting", "live")))
    query = (select(Mechanic, Identity).join(Identity, Identity.mechanic_id == Mechanic.id)
             .where(Mechanic.is_active, Mechanic.is_available, Identity.reachable,
                    Mechanic.id.not_in(busy_requests), Mechanic.id.not_in(busy_sessions))
             .order_by(Mechanic.id))
    if plan.senior_only:
        query = query.where(Mechanic.is_senior)
    rows = (await session.execute(query)).all()
    windows: dict[int, list[Availability]] = {}
    if rows:
        for w in (await session.scalars(select(Availability).where(
                Availability.mechanic_id.in_({m.id for m, _ in rows})))).all():
            windows.setdefault(w.mechanic_id, []).append(w)
    best: dict[int, tuple[Mechanic, Identity]] = {}
    for mechanic, identity in rows:
        if not in_window(windows.get(mechanic.id, []), mechanic.timezone, now):
            continue
        current = best.get(mechanic.id)
        rank = CHANNEL_PREFERENCE.get(identity.channel, 9)
        if current is None or rank < CHANNEL_PREFERENCE.get(current[1].channel, 9):
            best[mechanic.id] = (mechanic, identity)
    return list(best.values())


async def customer_identity(session: AsyncSession, request: SessionRequest) -> Identity | None:
    """Where to reach the customer: the channel they did the intake on."""
    intake = await session.get(Intake, request.intake_id)
    query = select(Identity).where(Identity.customer_id == request.customer_id)
    if intake is not None:
        query = query.order_by((Identity.channel == intake.channel).desc(), Identity.id)
    return await session.scalar(query.limit(1))


async def offer_request(uow: UnitOfWork, runtime: Runtime, request: SessionRequest,
                        now: datetime) -> int:
    """Offer a pending request to the next wave of eligible mechanics not yet offered it
    (core.dispatch.waves); returns the count. While others are left, the next wave is due in
    wave_seconds (widen_due). With nobody eligible the request goes straight to the admin
    queue."""
    session = uow.session
    intake = await session.get(Intake, request.intake_id)
    assert intake is not None
    plan = runtime.config.plan(request.plan)
    photos = list((await session.scalars(select(File).where(File.intake_id == intake.id)
                                         .order_by(File.id))).all())
    customer = await session.get(Customer, request.customer_id)
    # Still holding an open offer, or released this request: not offered (again).
    already = set((await session.scalars(select(Offer.mechanic_id).where(
        Offer.request_id == request.id, Offer.status.in_(("offered", "declined"))))).all())
    text = runtime.texts("offer", request=request, plan=plan, intake=intake, files=len(photos),
                         payout_cents=split_cents(request.price_cents,
                                                 runtime.config.billing.fee_bps)[0],
                         customer_name=first_name(customer.display_name if customer else None,
                                                  "a customer"))
    round_no = request.accepted_at.timestamp() if request.accepted_at else 0
    earlier = {o.mechanic_id: o for o in (await session.scalars(
        select(Offer).where(Offer.request_id == request.id))).all()}
    waiting = [(mechanic, identity) for mechanic, identity
               in await eligible_mechanics(session, runtime, request.plan, now)
               if mechanic.id not in already]
    targets = await next_wave(uow, runtime.config, waiting, now)
    keys = {mechanic.id: f"offer:{request.id}:{mechanic.id}:{round_no:.0f}"
            for mechanic, _identity in targets}
    buttons = (Button("Accept", f"accept:{request.ref}"),)
    # All the offer messages in a few multi-row statements, not a round trip each. The photos
    # are links signed for each mechanic's chat, which open while their offer is open
    # (channels.web.records).
    queued = await enqueue_many(uow, [
        (identity.id, Outbound(channel=identity.channel, address=identity.address, text=text,
                               buttons=buttons, dedupe_key=keys[mechanic.id],
                               files=attachments(runtime.config, photos, identity.id, now)))
        for mechanic, identity in targets], now)
    new_offers = []
    for mechanic, identity in targets:
        outbox_id = queued.get(keys[mechanic.id])
        offer = earlier.get(mechanic.id)
        if offer is None:
            new_offers.append({"request_id": request.id, "mechanic_id": mechanic.id,
                               "identity_id": identity.id, "status": "offered",
                               "outbox_id": outbox_id, "created_at": now})
        else:
            offer.identity_id, offer.status, offer.answered_at = identity.id, "offered", None
            if outbox_id is not None:
                offer.outbox_id = outbox_id
    if new_offers:
        await session.execute(insert(Offer), new_offers)
    sent = len(targets)
    # Widened again later while anyone eligible is left out of this wave (over the budget too).
    request.next_wave_at = (now + timedelta(seconds=runtime.config.dispatch.wave_seconds)
                            if len(waiting) > sent else None)
    log.info("request=%s offered to %s mechanics, %s waiting for the next wave", request.ref,
             sent, len(waiting) - sent)
    if not waiting and not already and request.status == "pending":
        await mark_unattended(uow, runtime, request, now)
    return sent


async def widen_due(uow: UnitOfWork, runtime: Runtime, now: datetime) -> int:
    """Offer the next wave of every open request whose wave is due; returns the offers made.

    The conditional UPDATE claims each due request in one process only (on PostgreSQL a second
    sweep waits for the row, then no longer finds it due)."""
    due = (await uow.session.scalars(
        update(SessionRequest)
        .where(SessionRequest.status.in_(OPEN_STATUSES), SessionRequest.next_wave_at <= now)
        .values(next_wave_at=None)
        .returning(SessionRequest).execution_options(populate_existing=True))).all()
    offered = 0
    for request in due:
        offered += await offer_request(uow, runtime, request, now)
    return offered


async def mark_unattended(uow: UnitOfWork, runtime: Runtime, request: SessionRequest,
                          now: datetime) -> bool:
    """pending → unattended (conditionally); alerts admins and reassures the customer once."""
    session = uow.session
    changed = await session.execute(
        update(SessionRequest).where(SessionRequest.id == request.id,
                                     SessionRequest.status == "pending")
        .values(status="unattended", unattended_at=now).returning(SessionRequest.id))
    if changed.scalar_one_or_none() is None:
        return False
    await session.refresh(request)
    await notify_unattended(uow, runtime, request, now)
    log.info("request=%s unattended", request.ref)
    return True


async def notify_unattended(uow: UnitOfWork, runtime: Runtime, request: SessionRequest,
                            now: datetime) -> Identity | None:
    """Alert the admins and reassure the customer (once each); returns the customer's chat."""
    plan = runtime.config.plan(request.plan)
    minutes = max(0, int((now - request.paid_at).total_seconds() // 60))
    await alert_admins(uow, runtime, f"unattended:{request.id}",
                       runtime.texts("admin_unattended", request=request, plan=plan,
                                     minutes=minutes), now)
    customer = await customer_identity(uow.session, request)
    await tell(uow, customer, runtime.texts("customer_unattended"), now,
               key=f"unattended:{request.id}:customer")
    return customer


async def mechanic_identity(session: AsyncSession, mechanic_id: int) -> Identity | None:
    identities = (await session.scalars(select(Identity).where(
        Identity.mechanic_id == mechanic_id, Identity.reachable))).all()
    return min(identities, key=lambda i: CHANNEL_PREFERENCE.get(i.channel, 9), default=None)
