"""Opening and closing video rooms, after the commits that call for them.

The match marks a video consultation's room 'pending' in its own transaction; LiveKit is
called only after that commit (right after it by the flow that matched, and on every sweep
until it works), never inside a transaction. Once a room is made, both people are sent their
join links; if LiveKit cannot be reached, both are told once that video is delayed, and the
sweep keeps trying. A session that has ended (button, timer, emergency, no-show) has its
room deleted, so nobody stays connected past the time paid for. Every step is a conditional
UPDATE and every notice keyed, so several processes may do this at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, text, update

from core.consultations import ACTIVE, participants, tell_both
from core.messages import Link
from core.models import Consultation, SessionRequest
from core.outbox import tell
from core.runtime import Runtime
from core.video import Viewer, join_url, room_spec

log = logging.getLogger("autodoctor.video")

# A room LiveKit would not make is tried again after 5 s, 10 s, 20 s … at most 5 minutes
# (and no sooner than the next sweep).
RETRY_FIRST_SECONDS = 5
RETRY_MAX_SECONDS = 300
_NOT_CLOSED = ("pending", "ready")
# The partial index ix_consultations_room_open, in its own words (with bound values SQLite's
# planner cannot tell that a query stays within it, and would read every consultation).
_ROOM_OPEN = text("consultations.room_status IN ('pending', 'ready')")


@dataclass
class RoomStats:
    opened: int = 0
    closed: int = 0
    failed: int = 0


async def rooms_due(runtime: Runtime, now: datetime | None = None) -> RoomStats:
    """Make the rooms of matched video sessions, and delete those of sessions that ended."""
    stats = RoomStats()
    port = runtime.rooms
    if port is None:
        return stats
    now = now or runtime.clock.now()
    async with runtime.readers() as session:
        to_open = (await session.execute(
            select(Consultation.id, Consultation.room_name, Consultation.plan,
                   SessionRequest.ref)
            .join(SessionRequest, SessionRequest.id == Consultation.request_id)
            .where(_ROOM_OPEN, Consultation.room_status == "pending",
                   Consultation.status.in_(ACTIVE),
                   or_(Consultation.room_retry_at.is_(None),
                       Consultation.room_retry_at <= now)))).all()
    for consultation_id, name, plan, ref in to_open:
        assert name is not None
        try:
            await port.create_room(room_spec(runtime.config, name, ref, plan, consultation_id))
        except Exception as exc:  # noqa: BLE001 - any failure: tell them, try again later
            log.warning("consultation=%s room=%s could not be made (%s); will retry",
                        consultation_id, name, _describe(exc))
            await _not_made(runtime, consultation_id, now)
            stats.failed += 1
            continue
        if await _made(runtime, consultation_id, now):
            stats.opened += 1
    # After opening: a room made just as its session ended is deleted at once.
    async with runtime.readers() as session:
        to_close = (await session.execute(
            select(Consultation.id, Consultation.room_name)
            .where(_ROOM_OPEN, Consultation.status.not_in(ACTIVE)))).all()
    for consultation_id, name in to_close:
        assert name is not None
        try:
            # Also when it was still pending: a room made but not yet recorded is not left.
            await port.delete_room(name)
        except Exception as exc:  # noqa: BLE001 - tried again on the next sweep
            log.warning("consultation=%s room=%s could not be deleted (%s); will retry",
                        consultation_id, name, _describe(exc))
            stats.failed += 1
            continue
        async with runtime.transaction() as uow:
            done = (await uow.session.execute(
                update(Consultation)
                .where(Consultation.id == consultation_id,
                       Consultation.room_status.in_(_NOT_CLOSED))
                .values(room_status="closed", room_retry_at=None)
                .returning(Consultation.id))).scalar_one_or_none()
        if done is not None:
            stats.closed += 1
            log.info("consultation=%s room=%s deleted", consultation_id, name)
    return stats


def rooms_after_commit(runtime: Runtime,
                       after_commit: list[Callable[[], Awaitable[object]]]) -> None:
    """Open or close rooms once the caller's transaction has committed (a match, an end):
    LiveKit is never called inside a transaction, and the sweep retries what fails."""
    if runtime.rooms is None:
        return

    async def rooms() -> RoomStats:
        return await rooms_due(runtime, runtime.clock.now())

    after_commit.append(rooms)


async def _made(runtime: Runtime, consultation_id: int, now: datetime) -> bool:
    """pending → ready, and each side sent their own join link. False if another process did
    it first, or the session ended meanwhile (its room is deleted next)."""
    async with runtime.transaction() as uow:
        consultation = (await uow.session.scalars(
            update(Consultation)
            .where(Consultation.id == consultation_id, Consultation.room_status == "pending",
                   Consultation.status.in_(ACTIVE))
            .values(room_status="ready", room_retry_at=None)
            .returning(Consultation).execution_options(populate_existing=True))
        ).one_or_none()
        if consultation is None:
            return False
        config, texts = runtime.config, runtime.texts
        plan = config.plan(consultation.plan)
        both = await participants(uow.session, consultation)
        label = texts("label", key="join_video")
        minutes = plan.minutes + consultation.extra_minutes
        for role, chat, person in (("customer", both.customer, consultation.customer_id),
                                   ("mechanic", both.mechanic, consultation.mechanic_id)):
            url = join_url(config, consultation.id, Viewer(role, person), now)
            await tell(uow, chat, texts("video_ready", role=role, plan=plan, minutes=minutes,
                                        live=consultation.status == "live"),
                       now, key=f"video:{consultation.id}:{role}",
                       consultation_id=consultation.id, link=Link(label, url))
    log.info("consultation=%s room=%s ready; join links sent", consultation_id,
             consultation.room_name)
    return True


async def _not_made(runtime: Runtime, consultation_id: int, now: datetime) -> None:
    """One more failed attempt, the next one later; both told once that video is delayed."""
    async with runtime.transaction() as uow:
        consultation = (await uow.session.scalars(
            update(Consultation)
            .where(Consultation.id == consultation_id, Consultation.room_status == "pending")
            .values(room_attempts=Consultation.room_attempts + 1)
            .returning(Consultation).execution_options(populate_existing=True))
        ).one_or_none()
        if consultation is None:
            return
        wait = min(RETRY_FIRST_SECONDS * 2 ** (consultation.room_attempts - 1),
                   RETRY_MAX_SECONDS)
        consultation.room_retry_at = now + timedelta(seconds=wait)
        text = runtime.texts("video_delayed")
        await tell_both(uow, consultation, now, f"video_delayed:{consultation.id}", text, text)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"
