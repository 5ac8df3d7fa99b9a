"""Accepting a request: race-safe, one winner, one job per mechanic; admin assignment and
release.

The one-job rule is the database's: a conditional UPDATE decides who wins a request, and the
partial unique index refuses a second job for one mechanic, even across processes.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.consultations import open_consultation
from core.dispatch.offers import (
    OPEN_STATUSES,
    customer_identity,
    holds_job,
    mechanic_identity,
    offer_request,
)
from core.messages import Outbound
from core.models import (
    AuditLog,
    Consultation,
    Identity,
    Mechanic,
    Offer,
    OutboxItem,
    SessionRequest,
)
from core.outbox import enqueue_many, tell
from core.runtime import Runtime
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.dispatch")


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
                .values(status="accepted", mechanic_id=mechanic_id, accepted_at=now,
                        next_wave_at=None)
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
    await _after_accept(uow, runtime, request, mechanic_id, now, admin=admin, taps=taps,
                        chat_id=identity_id)
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
            waiting = closed[request.ref] = {identity for identity in (await session.scalars(
                select(OutboxItem.identity_id).where(
                    OutboxItem.status == "pending",
                    OutboxItem.dedupe_key.startswith(_closing_key(request), autoescape=True)))
            ).all() if identity is not None}
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
                        taps: Taps, chat_id: int | None) -> None:
    """The winner's consultation opens; the other offers close."""
    session = uow.session
    mechanic = await session.get(Mechanic, mechanic_id)
    assert mechanic is not None
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
    # The session is relayed with the chat the tap came from (an admin's assignment: the
    # mechanic's preferred chat).
    tapped = await session.get(Identity, chat_id) if chat_id is not None else None
    mechanic_chat = tapped if tapped is not None and tapped.mechanic_id == mechanic_id \
        else await mechanic_identity(session, mechanic_id)
    await open_consultation(uow, runtime, request, mechanic, mechanic_chat,
                            await customer_identity(session, request), now)
    session.add(AuditLog(actor=admin or f"mechanic:{mechanic_id}",
                         action="assign" if admin else "accept", subject=request.ref,
                         details={"mechanic_id": mechanic_id}, created_at=now))
    waited = max(0.0, (now - request.paid_at).total_seconds())
    uow.after_commit(lambda: runtime.metrics.accept_seconds.observe(waited))
    log.info("request=%s mechanic=%s %s %.0fs after payment", request.ref, mechanic_id,
             f"assigned by {admin}" if admin else "accepted", waited)


async def release(uow: UnitOfWork, runtime: Runtime, mechanic_id: int,
                  now: datetime) -> SessionRequest | None:
    """The mechanic hands back their accepted request; it is offered again."""
    session = uow.session
    request = await session.scalar(select(SessionRequest).where(
        SessionRequest.mechanic_id == mechanic_id, SessionRequest.status == "accepted"))
    if request is None:
        return None
    live = await session.scalar(select(Consultation.id).where(
        Consultation.request_id == request.id, Consultation.status == "live"))
    if live is not None:
        return None  # under way: the mechanic ends it, or cancels for an emergency
    released = (await session.execute(
        update(SessionRequest).where(SessionRequest.id == request.id,
                                     SessionRequest.status == "accepted",
                                     SessionRequest.mechanic_id == mechanic_id)
        .values(status="pending", mechanic_id=None)
        .returning(SessionRequest.id))).scalar_one_or_none()
    if released is None:
        return None
    await session.refresh(request)
    await session.execute(update(Consultation).where(
        Consultation.request_id == request.id, Consultation.status == "waiting")
        .values(status="cancelled", ended_at=now, end_reason="released"))
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
