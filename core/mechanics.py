"""Mechanics: invites and linking a channel address to a mechanic."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Config
from core.models import Identity, Mechanic, MechanicInvite
from core.outbox import tell
from core.runtime import Runtime
from core.shapes import INVITE_CODE, fits
from core.store.uow import UnitOfWork

# No 0/O/1/I/L: codes are typed from SMS by hand.
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


@dataclass(frozen=True)
class Invitation:
    mechanic_id: int
    invite_code: str
    telegram_link: str
    sms_join: str
    web_link: str
    expires_at: str  # ISO 8601, UTC


def invitation(config: Config, mechanic_id: int, code: str, created_at: datetime
               ) -> Invitation:
    expires = created_at + timedelta(days=config.invites.ttl_days)
    return Invitation(
        mechanic_id=mechanic_id, invite_code=code,
        telegram_link=f"https://t.me/{config.telegram.bot_username}?start=m_{code}",
        sms_join=f"JOIN {code}",
        web_link=f"{config.public_url.rstrip('/')}/m/{code}",
        expires_at=expires.isoformat(timespec="minutes"))


async def invite_mechanic(session: AsyncSession, config: Config, name: str, now: datetime,
                          *, senior: bool = False, phone: str | None = None) -> Invitation:
    """Create a mechanic and a single-use invite to link one chat to them."""
    mechanic = Mechanic(name=name.strip()[:200], is_senior=senior, phone=phone, created_at=now)
    session.add(mechanic)
    await session.flush()
    return await new_invite(session, config, mechanic.id, now)


async def new_invite(session: AsyncSession, config: Config, mechanic_id: int,
                     now: datetime) -> Invitation:
    """Another single-use invite for a mechanic (a new phone, a lost link)."""
    code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(8))
    session.add(MechanicInvite(code=code, mechanic_id=mechanic_id, created_at=now))
    await session.flush()
    log.info("mechanic=%s invited", mechanic_id)
    return invitation(config, mechanic_id, code, now)

log = logging.getLogger("autodoctor.mechanics")


async def redeem_invite(uow: UnitOfWork, runtime: Runtime, code: str, channel: str,
                        address: str, now: datetime) -> Mechanic | None:
    """Bind (channel, address) to the invited mechanic; None if the code is unknown, used or
    expired ([invites] ttl_days).

    Single use: the conditional UPDATE claims the invite, so two redemptions cannot both win.
    Redeeming again from the address it was first used on is fine (a reloaded console).
    """
    session = uow.session
    code = code.strip().upper()
    if not fits(INVITE_CODE, code):
        return None  # no invite has such a code (a NUL or a lone surrogate could not be looked up)
    invite = await session.scalar(select(MechanicInvite).where(MechanicInvite.code == code))
    if invite is None:
        return None
    if invite.used_at is None and \
            invite.created_at + timedelta(days=runtime.config.invites.ttl_days) <= now:
        log.info("mechanic=%s invite expired unused", invite.mechanic_id)
        return None
    identity = await session.scalar(select(Identity).where(Identity.channel == channel,
                                                           Identity.address == address))
    if invite.used_at is not None:
        if identity is not None and identity.id == invite.used_by_identity_id:
            return await session.get(Mechanic, invite.mechanic_id)
        return None
    claimed = await session.execute(
        update(MechanicInvite).where(MechanicInvite.id == invite.id,
                                     MechanicInvite.used_at.is_(None))
        .values(used_at=now).returning(MechanicInvite.id))
    if claimed.scalar_one_or_none() is None:
        return None
    if identity is None:
        identity = Identity(channel=channel, address=address, mechanic_id=invite.mechanic_id,
                            created_at=now)
        session.add(identity)
    else:
        identity.mechanic_id = invite.mechanic_id
        identity.customer_id = None
    await session.flush()
    invite.used_by_identity_id = identity.id
    mechanic = await session.get(Mechanic, invite.mechanic_id)
    assert mechanic is not None
    await tell(uow, identity, runtime.texts("linked", name=mechanic.name), now,
               key=f"linked:{invite.id}")
    log.info("mechanic=%s linked channel=%s identity=%s", invite.mechanic_id, channel,
             identity.id)
    return mechanic
