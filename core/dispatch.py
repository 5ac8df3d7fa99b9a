"""Dispatch: offer paid requests to eligible mechanics, race-safe accept, release, assign.

The one-job rule is the database's: a conditional UPDATE decides who wins a request, and the
partial unique index refuses a second job for one mechanic, even across processes.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.admins import alert_admins
from core.messages import Button, Outbound
from core.models import (
    AuditLog,
    Availability,
    Consultation,
    Customer,
    File,
    Identity,
    Intake,
    Mechanic,
    Offer,
    OutboxItem,
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


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    ALREADY_YOURS = "already_yours"
    TAKEN = "taken"
    CLOSED = "closed"
    BUSY = "busy"
    NOT_OFFERED = "not_offered"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class AcceptResult:
    outcome: Outcome
    request: SessionRequest | None = None
    # TAKEN only: the closing notice of this mechanic's offer ("taken by another mechanic") to
    # the chat the tap came from is queued and not delivered yet (or queued in this very
    # transaction): that notice is the answer, and a reply would say the same thing twice.
    told: bool = False


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


def _in_window(windows: list[Availability], tz: str, now: datetime) -> bool:
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
        if not _in_window(windows.get(mechanic.id, []), mechanic.timezone, now):
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
    """Offer a pending request to every eligible mechanic not yet offered it; returns count.

    With nobody eligible the request goes straight to the admin queue.
    """
    session = uow.session
    intake = await session.get(Intake, request.intake_id)
    assert intake is not None
    plan = runtime.config.plan(request.plan)
    files = int(await session.scalar(select(func.count()).select_from(File)
                                     .where(File.intake_id == intake.id)) or 0)
    # Still holding an open offer, or released this request: not offered (again).
    already = set((await session.scalars(select(Offer.mechanic_id).where(
        Offer.request_id == request.id, Offer.status.in_(("offered", "declined"))))).all())
    text = runtime.texts("offer", request=request, plan=plan, intake=intake, files=files,
                         payout_cents=split_cents(request.price_cents,
                                                 runtime.config.billing.fee_bps)[0])
    round_no = request.accepted_at.timestamp() if request.accepted_at else 0
    earlier = {o.mechanic_id: o for o in (await session.scalars(
        select(Offer).where(Offer.request_id == request.id))).all()}
    targets = [(mechanic, identity) for mechanic, identity
               in await eligible_mechanics(session, runtime, request.plan, now)
               if mechanic.id not in already]
    keys = {mechanic.id: f"offer:{request.id}:{mechanic.id}:{round_no:.0f}"
            for mechanic, _identity in targets}
    buttons = (Button("Accept", f"accept:{request.ref}"),)
    # All the offer messages in a few multi-row statements, not a round trip each.
    queued = await enqueue_many(uow, [
        (identity.id, Outbound(channel=identity.channel, address=identity.address, text=text,
                               buttons=buttons, dedupe_key=keys[mechanic.id]))
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
    log.info("request=%s offered to %s mechanics", request.ref, sent)
    if sent == 0 and not already and request.status == "pending":
        await mark_unattended(uow, runtime, request, now)
    return sent


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


def _closing_key(request: SessionRequest) -> str:
    """The dedupe key prefix of the messages that close a request's offers."""
    return f"offer-closed:{request.id}:"


@dataclass
class _Tapped:
    """A request tapped in this transaction, and (from the second tap on) who was offered it."""

    request: SessionRequest
    offered: set[int] | None = None


@dataclass
class Taps:
    """What one transaction's accepts have read, by request ref: when many mechanics tap one
    request at once (the engine's batches), the request and its offers are read once, not
    once per tap."""

    tapped: dict[str, _Tapped] = field(default_factory=dict)
    # The chats about to be told the request is taken (see AcceptResult.told).
    closing: dict[str, set[int]] = field(default_factory=dict)


async def _request_and_offer(session: AsyncSession, taps: Taps, ref: str,
                             mechanic_id: int) -> tuple[SessionRequest | None, bool]:
    """The request by ref, and whether this mechanic holds an offer of it.

    When several mechanics tap the same request in one transaction (the engine's batches),
    the second tap reads who holds its offers at once (plain ids, no objects), and later ones
    read nothing. The lookups match on columns that never change, so they need not flush
    pending changes first; the conditional UPDATE in accept() decides the race whatever these
    say.
    """
    tapped = taps.tapped
    with session.no_autoflush:
        seen = tapped.get(ref)
        if seen is None:
            request = await session.scalar(select(SessionRequest)
                                           .where(SessionRequest.ref == ref))
            if request is None:
                return None, False
            tapped[ref] = _Tapped(request)
        else:
            if seen.offered is None:
                seen.offered = set((await session.scalars(
                    select(Offer.mechanic_id).where(Offer.request_id == seen.request.id))).all())
            if mechanic_id in seen.offered:
                return seen.request, True
            request = seen.request
        # The first tap, or an offer made since the others were read.
        return request, await session.scalar(select(Offer.id).where(
            Offer.request_id == request.id, Offer.mechanic_id == mechanic_id)) is not None


async def accept(uow: UnitOfWork, runtime: Runtime, ref: str, mechanic_id: int,
                 now: datetime, *, admin: str | None = None, identity_id: int | None = None,
                 taps: Taps | None = None) -> AcceptResult:
    """The mechanic takes the request, if it is still open and they hold no other job.

    `admin` assigns without an offer (unattended queue); the rules are otherwise the same.
    `identity_id`: the chat the tap came from (for AcceptResult.told). `taps`: shared by the
    accepts of one transaction.
    """
    session = uow.session
    taps = taps if taps is not None else Taps()
    request, offered = await _request_and_offer(session, taps, ref, mechanic_id)
    if request is None:
        return AcceptResult(Outcome.NOT_FOUND)
    if request.status == "accepted" and request.mechanic_id == mechanic_id:
        return AcceptResult(Outcome.ALREADY_YOURS, request)
    if admin is None and not offered:
        log.warning("request=%s accept refused: mechanic=%s was not offered it", ref,
                    mechanic_id)
        return AcceptResult(Outcome.NOT_OFFERED, request)
    if request.status == "accepted":
        return await _taken(session, taps, request, identity_id)
    if request.status not in OPEN_STATUSES:
        return AcceptResult(Outcome.CLOSED, request)
    if await holds_job(session, mechanic_id) is not None:
        return AcceptResult(Outcome.BUSY, request)
    try:
        async with session.begin_nested():
            won = (await session.execute(
                update(SessionRequest)
                .where(SessionRequest.id == request.id,
                       SessionRequest.status.in_(OPEN_STATUSES))
                .values(status="accepted", mechanic_id=mechanic_id, accepted_at=now)
                .returning(SessionRequest.id)
                # The request is refreshed below: no need to search the session's objects.
                .execution_options(synchronize_session=False))).scalar_one_or_none()
    except IntegrityError:
        # The partial unique index: this mechanic won another request a moment ago.
        return AcceptResult(Outcome.BUSY, request)
    await session.refresh(request)
    if won is None:
        if request.status == "accepted":
            return await _taken(session, taps, request, identity_id)
        return AcceptResult(Outcome.CLOSED, request)
    await _after_accept(uow, runtime, request, mechanic_id, now, admin=admin, taps=taps)
    return AcceptResult(Outcome.ACCEPTED, request)


async def _taken(session: AsyncSession, taps: Taps, request: SessionRequest,
                 identity_id: int | None) -> AcceptResult:
    """TAKEN, told or not. The chats with a closing notice still to deliver are read once per
    transaction and request (few rows: the outbox's pending ones, by its status index)."""
    if identity_id is None:
        return AcceptResult(Outcome.TAKEN, request)
    closed = taps.closing
    waiting = closed.get(request.ref)
    if waiting is None:
        with session.no_autoflush:
            waiting = closed[request.ref] = set((await session.scalars(
                select(OutboxItem.identity_id).where(
                    OutboxItem.status == "pending",
                    OutboxItem.dedupe_key.startswith(_closing_key(request), autoescape=True)))
            ).all())
    return AcceptResult(Outcome.TAKEN, request, told=identity_id in waiting)


async def assign(uow: UnitOfWork, runtime: Runtime, ref: str, mechanic_id: int,
                 admin: str, now: datetime) -> AcceptResult:
    """An admin gives an open request to a mechanic (the unattended queue); audit-logged."""
    mechanic = await uow.session.get(Mechanic, mechanic_id)
    if mechanic is None or not mechanic.is_active:
        return AcceptResult(Outcome.NOT_FOUND)
    return await accept(uow, runtime, ref, mechanic_id, now, admin=admin)


async def _after_accept(uow: UnitOfWork, runtime: Runtime, request: SessionRequest,
                        mechanic_id: int, now: datetime, *, admin: str | None,
                        taps: Taps) -> None:
    session = uow.session
    mechanic = await session.get(Mechanic, mechanic_id)
    intake = await session.get(Intake, request.intake_id)
    customer = await session.get(Customer, request.customer_id)
    assert mechanic is not None and intake is not None and customer is not None
    plan = runtime.config.plan(request.plan)
    stamp = f"{now.timestamp():.0f}"
    # The open offers, closed in two UPDATEs, and their messages edited in one batch: the
    # winner's answer should not wait on N objects.
    rows = (await session.execute(
        select(Offer.mechanic_id, Offer.provider_message_id, Identity.id, Identity.channel,
               Identity.address)
        .outerjoin(Identity, Identity.id == Offer.identity_id)
        .where(Offer.request_id == request.id, Offer.status == "offered"))).all()
    open_offer = (Offer.request_id == request.id) & (Offer.status == "offered")
    await session.execute(update(Offer).where(open_offer, Offer.mechanic_id == mechanic_id)
                          .values(status="accepted", answered_at=now))
    await session.execute(update(Offer).where(open_offer).values(status="taken", answered_at=now))
    closing: list[tuple[int, Outbound]] = []
    yours = runtime.texts("offer_accepted_by_you", ref=request.ref)
    taken = runtime.texts("offer_taken", ref=request.ref)
    for offer_mechanic, provider_message_id, identity_id, channel, address in rows:
        if identity_id is None:
            continue
        text = yours if offer_mechanic == mechanic_id else taken
        closing.append((identity_id, Outbound(
            channel=channel, address=address, text=text, edit_of=provider_message_id,
            dedupe_key=f"{_closing_key(request)}{offer_mechanic}:{stamp}")))
    await enqueue_many(uow, closing, now)
    taps.closing[request.ref] = {identity_id for identity_id, out in closing}
    await tell(uow, await mechanic_identity(session, mechanic_id),
               runtime.texts("accepted_details", request=request, plan=plan, intake=intake,
                             customer_name=customer.display_name),
               now, key=f"accepted:{request.id}:{mechanic_id}:{stamp}")
    await tell(uow, await customer_identity(session, request),
               runtime.texts("customer_matched", mechanic_name=mechanic.name, plan=plan),
               now, key=f"matched:{request.id}:{mechanic_id}:{stamp}")
    session.add(AuditLog(actor=admin or f"mechanic:{mechanic_id}",
                         action="assign" if admin else "accept", subject=request.ref,
                         details={"mechanic_id": mechanic_id}, created_at=now))
    log.info("request=%s mechanic=%s %s", request.ref, mechanic_id,
             f"assigned by {admin}" if admin else "accepted")


async def mechanic_identity(session: AsyncSession, mechanic_id: int) -> Identity | None:
    identities = (await session.scalars(select(Identity).where(
        Identity.mechanic_id == mechanic_id, Identity.reachable))).all()
    return min(identities, key=lambda i: CHANNEL_PREFERENCE.get(i.channel, 9), default=None)


async def release(uow: UnitOfWork, runtime: Runtime, mechanic_id: int,
                  now: datetime) -> SessionRequest | None:
    """The mechanic hands back their accepted request; it is offered again."""
    session = uow.session
    request = await session.scalar(select(SessionRequest).where(
        SessionRequest.mechanic_id == mechanic_id, SessionRequest.status == "accepted"))
    if request is None:
        return None
    released = (await session.execute(
        update(SessionRequest).where(SessionRequest.id == request.id,
                                     SessionRequest.status == "accepted",
                                     SessionRequest.mechanic_id == mechanic_id)
        .values(status="pending", mechanic_id=None)
        .returning(SessionRequest.id))).scalar_one_or_none()
    if released is None:
        return None
    await session.refresh(request)
    await session.execute(update(Offer).where(Offer.request_id == request.id,
                                              Offer.mechanic_id == mechanic_id)
                          .values(status="declined", answered_at=now))
    session.add(AuditLog(actor=f"mechanic:{mechanic_id}", action="release",
                         subject=request.ref, details={}, created_at=now))
    await tell(uow, await customer_identity(session, request),
               runtime.texts("customer_rematching", plan=runtime.config.plan(request.plan)),
               now, key=f"released:{request.id}:{mechanic_id}:{now.timestamp():.0f}")
    log.info("request=%s released by mechanic=%s", request.ref, mechanic_id)
    await offer_request(uow, runtime, request, now)
    return request
