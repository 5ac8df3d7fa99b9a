"""Timeouts as sweeps: conditional UPDATE … RETURNING, notifications only for rows changed.

Several processes may sweep at once: a row changes in exactly one of them, and every message
also carries a dedupe key, so nothing is sent twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, select, update

from core import timers
from core.dispatch import customer_identity, mechanic_identity, notify_unattended, widen_due
from core.files import delete_unattached
from core.messages import Button
from core.models import (
    Checkout,
    Consultation,
    Extension,
    Identity,
    Message,
    Offer,
    Payout,
    Refund,
    SessionRequest,
)
from core.outbox import tell
from core.room_sweep import rooms_due
from core.runtime import Runtime
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.sweeps")


@dataclass
class CleanupStats:
    unattended: int = 0
    expired: int = 0
    no_show: int = 0
    orphaned: int = 0
    warned: int = 0
    completed: int = 0
    refunded: int = 0
    refunds_failed: int = 0
    payouts: int = 0
    uploads_deleted: int = 0
    rooms_opened: int = 0
    rooms_closed: int = 0
    rooms_failed: int = 0
    offers_widened: int = 0

    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))


async def run_sweeps(runtime: Runtime, now: datetime | None = None) -> CleanupStats:
    """Run every timeout once; each in its own transaction."""
    now = now or runtime.clock.now()
    stats = CleanupStats()
    for sweep in (_unattended, _expired, _no_show, _orphaned):
        async with runtime.transaction() as uow:
            await sweep(uow, runtime, now, stats)
    # After the timeouts: a request that just expired is offered to nobody more.
    async with runtime.transaction() as uow:
        stats.offers_widened += await widen_due(uow, runtime, now)
    for minutes in timers.WARNINGS:
        async with runtime.transaction() as uow:
            stats.warned += await timers.warn(uow, runtime, now, minutes)
    async with runtime.transaction() as uow:
        stats.completed += await timers.time_up(uow, runtime, now)
    # Video rooms after the clock: a session whose time is up loses its room in this sweep.
    rooms = await rooms_due(runtime, now)
    stats.rooms_opened, stats.rooms_closed, stats.rooms_failed = \
        rooms.opened, rooms.closed, rooms.failed
    stats.refunded, stats.refunds_failed = await refund_due(runtime, now)
    stats.payouts = await payouts_due(runtime, now)
    async with runtime.transaction() as uow:
        stats.uploads_deleted = await delete_unattached(uow.session, runtime.config, now)
    if stats.total():
        counted = runtime.metrics.sweep_rows
        for kind in fields(stats):
            if changed := getattr(stats, kind.name):
                counted.labels(kind.name).inc(changed)
        log.info("sweep %s", stats)
    return stats


async def _unattended(uow: UnitOfWork, runtime: Runtime, now: datetime,
                      stats: CleanupStats) -> None:
    session = uow.session
    cutoff = now - timedelta(seconds=runtime.config.timeouts.unattended_after_seconds)
    changed = (await session.scalars(
        update(SessionRequest)
        .where(SessionRequest.status == "pending", SessionRequest.paid_at < cutoff)
        .values(status="unattended", unattended_at=now)
        .returning(SessionRequest).execution_options(populate_existing=True))).all()
    for request in changed:
        await notify_unattended(uow, runtime, request, now)
        log.info("request=%s unattended", request.ref)
    stats.unattended += len(changed)


async def _expired(uow: UnitOfWork, runtime: Runtime, now: datetime,
                   stats: CleanupStats) -> None:
    session = uow.session
    cutoff = now - timedelta(seconds=runtime.config.timeouts.expire_after_seconds)
    changed = (await session.scalars(
        update(SessionRequest)
        .where(SessionRequest.status.in_(("pending", "unattended")),
               SessionRequest.paid_at < cutoff)
        .values(SessionRequest.closing("expired", "unmatched", now))
        .returning(SessionRequest).execution_options(populate_existing=True))).all()
    for request in changed:
        await withdraw_offers(uow, runtime, request, now)
        await tell(uow, await customer_identity(session, request),
                   runtime.texts("customer_expired", plan=runtime.config.plan(request.plan)),
                   now, key=f"expired:{request.id}")
        log.info("request=%s expired unmatched", request.ref)
    stats.expired += len(changed)


async def withdraw_offers(uow: UnitOfWork, runtime: Runtime, request: SessionRequest,
                          now: datetime) -> None:
    """Open offers of a closed request: marked withdrawn, their messages edited to say so."""
    session = uow.session
    offers = (await session.scalars(
        update(Offer).where(Offer.request_id == request.id, Offer.status == "offered")
        .values(status="withdrawn", answered_at=now).returning(Offer))).all()
    for offer in offers:
        identity = await session.get(Identity, offer.identity_id) if offer.identity_id else None
        if identity is None:
            continue
        await tell(uow, identity, runtime.texts("offer_withdrawn", ref=request.ref), now,
                   key=f"withdrawn:{request.id}:{offer.mechanic_id}",
                   edit_of=offer.provider_message_id)


async def _no_show(uow: UnitOfWork, runtime: Runtime, now: datetime,
                   stats: CleanupStats) -> None:
    session = uow.session
    cutoff = now - timedelta(seconds=runtime.config.timeouts.no_show_after_seconds)
    # The request's own customer, on any of their channels: the identities are joined here,
    # not picked by a subquery of their own, which would not be correlated with the UPDATE's
    # row (it read every request's customers, so anyone writing excused everyone).
    customer_wrote = exists().where(and_(
        Message.direction == "in", Message.created_at > SessionRequest.accepted_at,
        Message.identity_id == Identity.id,
        Identity.customer_id == SessionRequest.customer_id))
    joined = exists().where(and_(Consultation.request_id == SessionRequest.id,
                                 Consultation.started_at.is_not(None)))
    changed = (await session.scalars(
        update(SessionRequest)
        .where(SessionRequest.status == "accepted", SessionRequest.accepted_at < cutoff,
               ~customer_wrote, ~joined)
        .values(SessionRequest.closing("cancelled", "no_show", now))
        .returning(SessionRequest).execution_options(populate_existing=True))).all()
    for request in changed:
        await session.execute(update(Consultation).where(
            Consultation.request_id == request.id, Consultation.status == "waiting")
            .values(status="cancelled", ended_at=now, end_reason="no_show"))
        plan = runtime.config.plan(request.plan)
        await tell(uow, await customer_identity(session, request),
                   runtime.texts("customer_no_show", plan=plan), now,
                   key=f"no_show:{request.id}",
                   buttons=(Button(runtime.texts("label", key="rematch"),
                                   f"rematch:{request.ref}"),))
        if request.mechanic_id is not None:
            await tell(uow, await mechanic_identity(session, request.mechanic_id),
                       runtime.texts("mechanic_no_show", ref=request.ref), now,
                       key=f"no_show:{request.id}:mechanic")
        log.info("request=%s cancelled: customer did not join", request.ref)
    stats.no_show += len(changed)


async def _orphaned(uow: UnitOfWork, runtime: Runtime, now: datetime,
                    stats: CleanupStats) -> None:
    session = uow.session
    still_accepted = select(SessionRequest.id).where(SessionRequest.status == "accepted")
    changed = (await session.scalars(
        update(Consultation)
        .where(Consultation.status == "waiting", Consultation.request_id.not_in(still_accepted))
        .values(status="cancelled", ended_at=now, end_reason="orphaned")
        .returning(Consultation.id))).all()
    stats.orphaned += len(changed)


REFUNDED_CLOSES = ("unmatched", "customer_cancelled", "emergency", "admin_cancelled",
                   "admin_cancelled_session")


async def refund_due(runtime: Runtime, now: datetime) -> tuple[int, int]:
    """Refund every paid checkout whose request closed unserved, and every extension paid
    after its session ended; retried on each sweep."""
    if runtime.refund is None:
        return 0, 0
    unrefunded = ~exists().where(and_(Refund.checkout_id == Checkout.id,
                                      Refund.status == "succeeded"))
    async with runtime.sessions() as session:
        due: list[tuple[str, str | None]] = [(ref, reason) for ref, reason in (
            await session.execute(
            select(Checkout.ref, SessionRequest.close_reason)
            .join(SessionRequest, SessionRequest.checkout_id == Checkout.id)
            .where(Checkout.status == "paid",
                   SessionRequest.status.in_(("expired", "cancelled")),
                   SessionRequest.close_reason.in_(REFUNDED_CLOSES), unrefunded)))]
        due += [(ref, "extension_after_end") for ref in (await session.scalars(
            select(Checkout.ref).join(Extension, Extension.checkout_id == Checkout.id)
            .where(Checkout.status == "paid", Extension.status == "late", unrefunded)))]
    done = failed = 0
    for ref, reason in due:
        try:
            async with runtime.sessions.begin() as session:
                await runtime.refund(session, ref, reason or "unmatched", now)
            done += 1
        except Exception:
            # Left as it is: the next sweep tries again with the same idempotency key.
            log.exception("checkout=%s refund failed; will retry", ref)
            failed += 1
    return done, failed


async def payouts_due(runtime: Runtime, now: datetime) -> int:
    """Send the payouts of completed sessions not tried yet (a mechanic not onboarded keeps
    theirs pending with the reason; billing sends it when Stripe reports them ready)."""
    if runtime.payout is None:
        return 0
    async with runtime.sessions() as session:
        due = (await session.scalars(select(Payout.id).where(
            Payout.status == "pending", Payout.failure.is_(None)))).all()
    sent = 0
    for payout_id in due:
        try:
            async with runtime.sessions.begin() as session:
                await runtime.payout(session, payout_id, now)
            sent += 1
        except Exception:
            # Left as it is: the next sweep tries again with the same idempotency key.
            log.exception("payout=%s could not be sent; will retry", payout_id)
    return sent
