"""A consultation's clock, run by the sweep: warnings at 5 and 1 minutes left, the end at 0.

Each step is a conditional UPDATE … RETURNING, and each notice carries a dedupe key, so
several processes sweeping at once send every warning once and end every session once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from core.consultations import complete, tell_both
from core.messages import Button
from core.models import Consultation
from core.runtime import Runtime
from core.store.uow import UnitOfWork

log = logging.getLogger("autodoctor.timers")

WARNINGS = (5, 1)  # minutes left


async def warn(uow: UnitOfWork, runtime: Runtime, now: datetime, minutes: int) -> int:
    """Warn both sides of every live session with `minutes` or less left, once."""
    changed = (await uow.session.scalars(
        update(Consultation)
        .where(Consultation.status == "live",
               Consultation.ends_at <= now + timedelta(minutes=minutes),
               Consultation.ends_at > now,
               or_(Consultation.warned_minutes.is_(None),
                   Consultation.warned_minutes > minutes))
        .values(warned_minutes=minutes)
        .returning(Consultation).execution_options(populate_existing=True))).all()
    extension = runtime.config.extensions
    for consultation in changed:
        assert consultation.ends_at is not None
        buttons: tuple[Button, ...] = ()
        if minutes == WARNINGS[0]:
            buttons = (Button(runtime.texts("label", key="extend",
                                            minutes=extension.minutes),
                              f"extend:{consultation.id}"),
                       Button(runtime.texts("label", key="end"), f"end:{consultation.id}"))
        text = runtime.texts("time_left", minutes=minutes, extension=extension)
        await tell_both(uow, consultation, now,
                        f"warn:{consultation.id}:{minutes}:{consultation.ends_at.timestamp():.0f}",
                        text, runtime.texts("time_left", minutes=minutes, extension=None),
                        customer_buttons=buttons)
    return len(changed)


async def time_up(uow: UnitOfWork, runtime: Runtime, now: datetime) -> int:
    """Complete every live session whose time has run out."""
    due = (await uow.session.scalars(select(Consultation.id).where(
        Consultation.status == "live", Consultation.ends_at <= now))).all()
    ended = 0
    for consultation_id in due:
        if await complete(uow, runtime, consultation_id, "time_up", now) is not None:
            ended += 1
    return ended
