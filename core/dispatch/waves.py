"""Offers in waves: which eligible mechanics are offered a request first, and how many offers
a channel can take before the next wave."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Config
from core.models import Consultation, Identity, Mechanic, Offer, OutboxItem
from core.store.uow import UnitOfWork

# Acceptances within this count towards a mechanic's standing.
RECENT = timedelta(days=30)
# A mechanic nobody has rated yet ranks as if rated this (below proven good ones, not last).
NEUTRAL_RATING = 4.0
# An offer costs its own message now and, once someone accepts, its "taken" edit.
MESSAGES_PER_OFFER = 2
# PostgreSQL: waves of all processes count a channel's pending messages one at a time, so two
# of them cannot both fill the same room (SQLite's writers are one at a time anyway).
BUDGET_LOCK = 0x0FFE25A7E5


@dataclass(frozen=True)
class Standing:
    """What ranks a mechanic for an offer."""

    mechanic_id: int
    considering: int  # open offers of other requests they hold now
    rating: float | None  # average of their sessions' ratings; None when never rated
    accepted_recently: int  # requests they accepted within RECENT
    idle_since: datetime  # their last session's end (or start), else when they joined


def rank(standings: Iterable[Standing]) -> list[Standing]:
    """Best first: those not considering another request's offer, then higher rating (to a
    tenth), then more recent acceptances, then the longest idle, then the longest-standing."""
    # Considering another offer first: otherwise the same best few get every request at once,
    # past their chat's 1 message a second, and can take only one of them.
    def key(s: Standing) -> tuple[bool, float, int, datetime, int]:
        rating = NEUTRAL_RATING if s.rating is None else round(s.rating, 1)
        return (s.considering > 0, -rating, -s.accepted_recently, s.idle_since, s.mechanic_id)
    return sorted(standings, key=key)


async def standings(session: AsyncSession, mechanics: list[Mechanic],
                    now: datetime) -> list[Standing]:
    """The standing of each of these mechanics, in four grouped reads."""
    ids = [m.id for m in mechanics]
    considering = {mechanic_id: int(count) for mechanic_id, count in (await session.execute(
        select(Offer.mechanic_id, func.count())
        .where(Offer.mechanic_id.in_(ids), Offer.status == "offered")
        .group_by(Offer.mechanic_id))).all()}
    ratings = {mechanic_id: float(avg) for mechanic_id, avg in (await session.execute(
        select(Consultation.mechanic_id, func.avg(Consultation.rating))
        .where(Consultation.mechanic_id.in_(ids), Consultation.rating.is_not(None))
        .group_by(Consultation.mechanic_id))).all()}
    accepted = {mechanic_id: int(count) for mechanic_id, count in (await session.execute(
        select(Offer.mechanic_id, func.count())
        .where(Offer.mechanic_id.in_(ids), Offer.status == "accepted",
               Offer.answered_at >= now - RECENT)
        .group_by(Offer.mechanic_id))).all()}
    last_job = {mechanic_id: max(t for t in (started, ended) if t is not None)
                for mechanic_id, started, ended in (await session.execute(
                    select(Consultation.mechanic_id, func.max(Consultation.created_at),
                           func.max(Consultation.ended_at))
                    .where(Consultation.mechanic_id.in_(ids))
                    .group_by(Consultation.mechanic_id))).all()}
    return [Standing(m.id, considering.get(m.id, 0), ratings.get(m.id), accepted.get(m.id, 0),
                     last_job.get(m.id, m.created_at)) for m in mechanics]


async def offer_room(uow: UnitOfWork, config: Config, channels: set[str]) -> dict[str, int]:
    """Offers each rate-limited channel can still take in this wave: what it sends in one
    wave_seconds, less the messages already pending for it, MESSAGES_PER_OFFER an offer."""
    rates = {c: r for c, r in config.rate_limits.provider_rates().items() if c in channels}
    if not rates:
        return {}
    if uow.is_postgresql:
        await uow.session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                  {"key": BUDGET_LOCK})
    pending = {channel: int(count) for channel, count in (await uow.session.execute(
        select(OutboxItem.channel, func.count())
        .where(OutboxItem.status == "pending", OutboxItem.channel.in_(rates))
        .group_by(OutboxItem.channel))).all()}
    seconds = config.dispatch.wave_seconds
    return {c: max(0, int(rate * seconds) - pending.get(c, 0)) // MESSAGES_PER_OFFER
            for c, rate in rates.items()}


async def next_wave(uow: UnitOfWork, config: Config, waiting: list[tuple[Mechanic, Identity]],
                    now: datetime) -> list[tuple[Mechanic, Identity]]:
    """The best wave_size of the mechanics still waiting for an offer, within each channel's
    room; the others wait for the next wave."""
    if not waiting:
        return []
    chats = {mechanic.id: (mechanic, identity) for mechanic, identity in waiting}
    room = await offer_room(uow, config, {identity.channel for _, identity in waiting})
    wave: list[tuple[Mechanic, Identity]] = []
    for standing in rank(await standings(uow.session, [m for m, _ in waiting], now)):
        if len(wave) >= config.dispatch.wave_size:
            break
        mechanic, identity = chats[standing.mechanic_id]
        left = room.get(identity.channel)
        if left is not None:
            if left <= 0:
                continue
            room[identity.channel] = left - 1
        wave.append((mechanic, identity))
    return wave
