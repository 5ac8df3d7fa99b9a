"""Admins: alerts to their own channel (the admin site shows the same queue)."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.messages import Outbound
from core.models import Admin, OutboxItem
from core.runtime import Runtime
from core.sql import insert_ignore

log = logging.getLogger("autodoctor.admins")


async def alert_admins(session: AsyncSession, runtime: Runtime, key: str, text: str,
                       now: datetime) -> int:
    """Queue one alert per active admin with a notify channel; each key is sent once."""
    admins = (await session.scalars(select(Admin).where(
        Admin.is_active, Admin.notify_channel.is_not(None),
        Admin.notify_address.is_not(None)))).all()
    queued = 0
    for admin in admins:
        assert admin.notify_channel is not None and admin.notify_address is not None
        out = Outbound(channel=admin.notify_channel, address=admin.notify_address, text=text)
        if await insert_ignore(session, OutboxItem, {
                "dedupe_key": f"{key}:admin:{admin.id}", "channel": admin.notify_channel,
                "address": admin.notify_address, "payload": out.to_body(),
                "status": "pending", "next_attempt_at": now, "created_at": now,
                "attempts": 0}, ["dedupe_key"]) is not None:
            queued += 1
    log.info("alert %s queued for %s admins", key, queued)
    return queued
