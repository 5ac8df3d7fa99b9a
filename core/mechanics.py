"""Mechanics: invites and linking a channel address to a mechanic."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Identity, Mechanic, MechanicInvite

log = logging.getLogger("autodoctor.mechanics")


async def redeem_invite(session: AsyncSession, code: str, channel: str, address: str,
                        now: datetime) -> Mechanic | None:
    """Bind (channel, address) to the invited mechanic; None if the code is unknown or used.

    Single use: the conditional UPDATE claims the invite, so two redemptions cannot both win.
    Redeeming again from the address it was first used on is fine (a reloaded console).
    """
    invite = await session.scalar(select(MechanicInvite).where(MechanicInvite.code == code))
    if invite is None:
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
    log.info("mechanic=%s linked channel=%s identity=%s", invite.mechanic_id, channel,
             identity.id)
    return mechanic
