"""Mechanics: the roster with channels, availability, ratings, earnings and payout status;
inviting one (links and a QR code of the Telegram deep link); active and senior switches."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import segno
from aiohttp import web
from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from admin_web.accounts import actor, audit
from admin_web.web import ADMIN, now_of, number, render, runtime_of, see_other, svg, url
from core.mechanics import invitation, invite_mechanic, new_invite
from core.models import (
    Availability,
    Consultation,
    Identity,
    Mechanic,
    MechanicInvite,
    Payout,
    SessionRequest,
)

log = logging.getLogger("autodoctor.admin")

_PHONE = re.compile(r"\+[1-9]\d{6,14}")


@dataclass
class MechanicRow:
    mechanic: Mechanic
    chats: list[Identity] = field(default_factory=list)
    windows: int = 0
    job: str | None = None
    rating: float | None = None
    ratings: int = 0
    completed: int = 0
    payouts: dict[str, int] = field(default_factory=dict)

    @property
    def payout_status(self) -> str:
        m = self.mechanic
        if m.payouts_enabled:
            return "ready"
        return "onboarding" if m.stripe_account_id else "not set up"


async def roster(session: AsyncSession) -> list[MechanicRow]:
    """Every mechanic, active first, with what the list shows of them."""
    rows = {m.id: MechanicRow(m) for m in (await session.scalars(
        select(Mechanic).order_by(Mechanic.is_active.desc(), Mechanic.name, Mechanic.id)))}
    for identity in (await session.scalars(select(Identity).where(
            Identity.mechanic_id.is_not(None)).order_by(Identity.id))):
        if identity.mechanic_id in rows:
            rows[identity.mechanic_id].chats.append(identity)
    for mechanic_id, count in (await session.execute(
            select(Availability.mechanic_id, func.count()).group_by(Availability.mechanic_id))):
        if mechanic_id in rows:
            rows[mechanic_id].windows = int(count or 0)
    for busy_id, ref in (await session.execute(
            select(SessionRequest.mechanic_id, SessionRequest.ref)
            .where(SessionRequest.status == "accepted"))):
        if busy_id is not None and busy_id in rows:
            rows[busy_id].job = ref
    for mechanic_id, average, count, done in (await session.execute(
            select(Consultation.mechanic_id, func.avg(Consultation.rating),
                   func.count(Consultation.rating),
                   func.sum(case((Consultation.status == "completed", 1), else_=0)))
            .group_by(Consultation.mechanic_id))):
        if mechanic_id in rows:
            row = rows[mechanic_id]
            row.rating = round(float(average), 1) if average is not None else None
            row.ratings, row.completed = int(count), int(done or 0)
    for mechanic_id, status, cents in (await session.execute(
            select(Payout.mechanic_id, Payout.status, func.sum(Payout.amount_cents))
            .group_by(Payout.mechanic_id, Payout.status))):
        if mechanic_id in rows:
            rows[mechanic_id].payouts[status] = int(cents or 0)
    return list(rows.values())


async def mechanics(request: web.Request) -> web.Response:
    async with runtime_of(request).readers() as session:
        rows = await roster(session)
    return render(request, "mechanics.html", rows=rows)


async def mechanic_detail(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    mechanic_id = number(request.match_info["id"])
    async with runtime.readers() as session:
        mechanic = await session.get(Mechanic, mechanic_id) if mechanic_id else None
        if mechanic is None:
            raise web.HTTPNotFound()
        row = next(r for r in await roster(session) if r.mechanic.id == mechanic.id)
        invites = (await session.scalars(select(MechanicInvite).where(
            MechanicInvite.mechanic_id == mechanic.id, MechanicInvite.used_at.is_(None))
            .order_by(MechanicInvite.id.desc()))).all()
        windows = (await session.scalars(select(Availability).where(
            Availability.mechanic_id == mechanic.id)
            .order_by(Availability.weekday, Availability.start_minute))).all()
    links = [invitation(runtime.config, mechanic.id, invite.code, invite.created_at)
             for invite in invites]
    return render(request, "mechanic.html", row=row, mechanic=mechanic, windows=windows,
                  invites=[(link, svg(segno.make(link.telegram_link, error="m").svg_inline(
                      scale=4, dark="#1b2330", title=f"Telegram link for {mechanic.name}")))
                      for link in links])


async def invite(request: web.Request) -> web.Response:
    """A new mechanic and a single-use invite (or another invite for one who exists)."""
    runtime, admin, now = runtime_of(request), request[ADMIN], now_of(request)
    form = await request.post()
    existing = number(request.match_info.get("id"))
    name = str(form.get("name", "")).strip()
    phone = str(form.get("phone", "")).strip() or None
    if existing is None and not name:
        return see_other(request, url(request, "mechanics"), "Give the mechanic's name.",
                         "error")
    if phone is not None and not _PHONE.fullmatch(phone):
        return see_other(request, url(request, "mechanics"), "The phone number must be in "
                         "E.164 form, e.g. +15551234567.", "error")
    async with runtime.transaction() as uow:
        session = uow.session
        if existing is not None:
            if await session.get(Mechanic, existing) is None:
                raise web.HTTPNotFound()
            made = await new_invite(session, runtime.config, existing, now)
        else:
            made = await invite_mechanic(session, runtime.config, name, now,
                                         senior=form.get("senior") == "on", phone=phone)
        audit(session, actor(admin), "invite", f"mechanic:{made.mechanic_id}", now,
              name=name or None, senior=form.get("senior") == "on")
    return see_other(request, url(request, "mechanic", id=str(made.mechanic_id)),
                     "Invite made: send the mechanic one of the links below. Each invite "
                     "links one chat, once.")


async def switch(request: web.Request) -> web.Response:
    """Turn a mechanic's `active` or `senior` flag on or off."""
    runtime, admin, now = runtime_of(request), request[ADMIN], now_of(request)
    mechanic_id = number(request.match_info["id"])
    flag = request.match_info["flag"]
    column = {"active": Mechanic.is_active, "senior": Mechanic.is_senior}.get(flag)
    value = (await request.post()).get("on") == "1"
    if mechanic_id is None or column is None:
        raise web.HTTPNotFound()
    async with runtime.transaction() as uow:
        session = uow.session
        mechanic = await session.get(Mechanic, mechanic_id)
        if mechanic is None:
            raise web.HTTPNotFound()
        await session.execute(update(Mechanic).where(Mechanic.id == mechanic_id)
                              .values({column: value}))
        audit(session, actor(admin), f"mechanic_{flag}", f"mechanic:{mechanic_id}", now,
              on=value)
        job = await session.scalar(select(SessionRequest.ref).where(
            SessionRequest.mechanic_id == mechanic_id, SessionRequest.status == "accepted"))
    log.info("mechanic=%s %s=%s by admin=%s", mechanic_id, flag, value, admin.id)
    words = {("active", True): "is active again: new requests are offered to them",
             ("active", False): "is deactivated: no new requests are offered to them",
             ("senior", True): "is senior: Full Diagnostic requests are offered to them",
             ("senior", False): "is no longer senior"}[(flag, value)]
    extra = f" They keep {job} until it ends." if job and flag == "active" and not value \
        else ""
    return see_other(request, url(request, "mechanic", id=str(mechanic_id)),
                     f"{mechanic.name} {words}.{extra}")
