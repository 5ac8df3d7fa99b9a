"""Admins: alerts to their own channel (the admin site shows the same queue)."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select

from core.messages import Outbound
from core.models import Admin
from core.outbox import outbox_row
from core.runtime import Runtime
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.admins")


async def alert_admins(uow: UnitOfWork, runtime: Runtime, key: str, text: str,
                       now: datetime) -> int:
    """Queue one alert per active admin with a notify channel; each key is sent once."""
    admins = (await uow.session.scalars(select(Admin).where(
        Admin.is_active, Admin.notify_channel.is_not(None),
        Admin.notify_address.is_not(None)))).all()
    rows = []
    for admin in admins:
        assert admin.notify_channel is not None and admin.notify_address is not None
        out = Outbound(channel=admin.notify_channel, address=admin.notify_address, text=text)
        rows.append(outbox_row(None, f"{key}:admin:{admin.id}", out, out.to_body(), now))
    queued = len(await uow.add_keyed_outbox(rows))
    log.info("alert %s queued for %s admins", key, queued)
    return queued
