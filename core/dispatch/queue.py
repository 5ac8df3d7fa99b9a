"""The admin queue: which mechanics may be given a request (and why the others may not), and
cancelling a request nobody took, with a full refund."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.dispatch.offers import CHANNEL_PREFERENCE, OPEN_STATUSES, customer_identity, in_window
from core.models import AuditLog, Availability, Consultation, Identity, Mechanic, SessionRequest
from core.outbox import tell
from core.runtime import Runtime
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.dispatch")

# The close reason of a request an admin cancelled (refunded by core.sweeps.refund_due).
ADMIN_CANCELLED = "admin_cancelled"


@dataclass(frozen=True)
class Candidate:
    """A mechanic as a choice for one request: `reason` says why they may not take it."""

    mechanic: Mechanic
    identity: Identity | None
    reason: str | None

    @property
    def eligible(self) -> bool:
        return self.reason is None


async def candidates(session: AsyncSession, runtime: Runtime, plan_code: str,
                     now: datetime) -> list[Candidate]:
    """Every active mechanic for a request of this plan: the eligible ones (the same rules as
    dispatch.eligible_mechanics) first, then the others, each with the reason."""
    plan = runtime.config.plan(plan_code)
    mechanics = (await session.scalars(select(Mechanic).where(Mechanic.is_active)
                                       .order_by(Mechanic.name, Mechanic.id))).all()
    ids = [m.id for m in mechanics]
    if not ids:
        return []
    chats: dict[int, Identity] = {}
    for identity in (await session.scalars(select(Identity).where(
            Identity.mechanic_id.in_(ids), Identity.reachable))).all():
        assert identity.mechanic_id is not None
        best = chats.get(identity.mechanic_id)
        if best is None or CHANNEL_PREFERENCE.get(identity.channel, 9) < \
                CHANNEL_PREFERENCE.get(best.channel, 9):
            chats[identity.mechanic_id] = identity
    jobs: dict[int, str] = {mechanic_id: ref for mechanic_id, ref in (await session.execute(
        select(SessionRequest.mechanic_id, SessionRequest.ref).where(
            SessionRequest.status == "accepted", SessionRequest.mechanic_id.in_(ids)))).all()
        if mechanic_id is not None}
    jobs.update({mechanic_id: ref for mechanic_id, ref in (await session.execute(
        select(Consultation.mechanic_id, SessionRequest.ref)
        .join(SessionRequest, SessionRequest.id == Consultation.request_id)
        .where(Consultation.status.in_(("waiting", "live")),
               Consultation.mechanic_id.in_(ids)))).all()})
    windows: dict[int, list[Availability]] = {}
    for window in (await session.scalars(select(Availability).where(
            Availability.mechanic_id.in_(ids)))).all():
        windows.setdefault(window.mechanic_id, []).append(window)
    found = []
    for mechanic in mechanics:
        chat = chats.get(mechanic.id)
        reason = None
        if plan.senior_only and not mechanic.is_senior:
            reason = f"not senior ({plan.name} needs a senior mechanic)"
        elif mechanic.id in jobs:
            reason = f"busy with {jobs[mechanic.id]}"
        elif chat is None:
            reason = "no reachable chat linked"
        elif not mechanic.is_available:
            reason = "away"
        elif not in_window(windows.get(mechanic.id, []), mechanic.timezone, now):
            reason = "outside their working hours"
        found.append(Candidate(mechanic, chat, reason))
    return sorted(found, key=lambda c: not c.eligible)


async def cancel_unmatched(uow: UnitOfWork, runtime: Runtime, ref: str, actor: str,
                           now: datetime) -> SessionRequest | None:
    """An admin cancels a request nobody has taken: closed for a full refund (made after the
    commit by core.sweeps.refund_due), its open offers withdrawn, the customer told,
    audit-logged. None if it was no longer open (taken or closed a moment ago)."""
    from core.sweeps import withdraw_offers

    session = uow.session
    cancelled = (await session.execute(
        update(SessionRequest)
        .where(SessionRequest.ref == ref, SessionRequest.status.in_(OPEN_STATUSES))
        .values(SessionRequest.closing("cancelled", ADMIN_CANCELLED, now))
        .returning(SessionRequest.id))).scalar_one_or_none()
    if cancelled is None:
        return None
    request = await session.get(SessionRequest, cancelled, populate_existing=True)
    assert request is not None
    await withdraw_offers(uow, runtime, request, now)
    await tell(uow, await customer_identity(session, request),
               runtime.texts("admin_cancelled_customer", plan=runtime.config.plan(request.plan),
                             amount_cents=request.price_cents),
               now, key=f"admin_cancelled:{request.id}")
    session.add(AuditLog(actor=actor, action="cancel_request", subject=request.ref,
                         details={"refund": request.checkout_id is not None}, created_at=now))
    log.info("request=%s cancelled by %s for a refund", request.ref, actor)
    return request
