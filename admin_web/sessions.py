"""Requests and sessions: every consultation, filtered; one with its transcript and files;
ending or cancelling one; the sweeps run now; observing a live video session."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from aiohttp import web
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_web.accounts import actor, audit
from admin_web.queue import refund_now
from admin_web.web import (
    ADMIN,
    HEADERS,
    PAGE_ROWS,
    choice,
    day,
    day_end,
    day_start,
    now_of,
    number,
    render,
    runtime_of,
    see_other,
    url,
)
from core.consultations import cancel_for_emergency, complete, minutes_of
from core.errors import CoreError
from core.files import blob_path
from core.models import (
    Consultation,
    Customer,
    File,
    Identity,
    Intake,
    Mechanic,
    Message,
    SessionRequest,
)
from core.sweeps import run_sweeps
from core.video import observer_link

STATUSES = ("waiting", "live", "completed", "cancelled")


@dataclass(frozen=True)
class SessionFilter:
    status: str | None = None
    plan: str | None = None
    mechanic_id: int | None = None
    since: date | None = None
    until: date | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str], plans: list[str]) -> SessionFilter:
        return cls(status=choice(query.get("status"), STATUSES),
                   plan=choice(query.get("tier"), plans),
                   mechanic_id=number(query.get("mechanic")),
                   since=day(query.get("since")), until=day(query.get("until")))

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.status:
            found.append(Consultation.status == self.status)
        if self.plan:
            found.append(Consultation.plan == self.plan)
        if self.mechanic_id is not None:
            found.append(Consultation.mechanic_id == self.mechanic_id)
        if self.since:
            found.append(Consultation.created_at >= day_start(self.since))
        if self.until:
            found.append(Consultation.created_at < day_end(self.until))
        return found


@dataclass(frozen=True)
class SessionRow:
    consultation: Consultation
    request: SessionRequest
    mechanic: str
    customer: str

    def time_left(self, now: datetime) -> timedelta | None:
        ends = self.consultation.ends_at
        return ends - now if ends is not None and self.consultation.status == "live" else None


async def session_rows(session: AsyncSession, found: SessionFilter,
                       limit: int | None = PAGE_ROWS) -> list[SessionRow]:
    """Consultations matching the filter, newest first."""
    query = (select(Consultation, SessionRequest, Mechanic.name, Customer.display_name)
             .join(SessionRequest, SessionRequest.id == Consultation.request_id)
             .outerjoin(Mechanic, Mechanic.id == Consultation.mechanic_id)
             .outerjoin(Customer, Customer.id == Consultation.customer_id)
             .where(*found.conditions())
             .order_by(Consultation.created_at.desc(), Consultation.id.desc()))
    if limit is not None:
        query = query.limit(limit)
    return [SessionRow(c, r, mechanic or "", customer or "")
            for c, r, mechanic, customer in (await session.execute(query)).all()]


async def sessions(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    found = SessionFilter.from_query(request.query, list(runtime.config.plans))
    async with runtime.readers() as session:
        rows = await session_rows(session, found)
        mechanics = (await session.execute(select(Mechanic.id, Mechanic.name)
                                           .order_by(Mechanic.name))).all()
    return render(request, "sessions.html", rows=rows, filter=found, statuses=STATUSES,
                  plans=runtime.config.plans, mechanics=mechanics,
                  query=dict(request.query))


async def session_rows_fragment(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    found = SessionFilter.from_query(request.query, list(runtime.config.plans))
    async with runtime.readers() as session:
        rows = await session_rows(session, found)
    return render(request, "sessions_rows.html", rows=rows)


async def _consultation(session: AsyncSession, request: web.Request) -> Consultation:
    consultation_id = number(request.match_info["id"])
    found = await session.get(Consultation, consultation_id) if consultation_id else None
    if found is None:
        raise web.HTTPNotFound()
    return found


async def session_detail(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    async with runtime.readers() as session:
        consultation = await _consultation(session, request)
        ask = await session.get(SessionRequest, consultation.request_id)
        assert ask is not None
        intake = await session.get(Intake, ask.intake_id)
        mechanic = await session.get(Mechanic, consultation.mechanic_id)
        customer = await session.get(Customer, consultation.customer_id)
        chats = {i.id: i for i in (await session.scalars(select(Identity).where(
            Identity.id.in_({consultation.customer_identity_id,
                             consultation.mechanic_identity_id} - {None})))).all()}
        lines = (await session.scalars(select(Message).where(
            Message.consultation_id == consultation.id, Message.direction == "in")
            .order_by(Message.id))).all()
        files = (await session.scalars(select(File).where(
            (File.consultation_id == consultation.id) | (File.intake_id == ask.intake_id))
            .order_by(File.id))).all()
    who = {consultation.customer_identity_id: customer.display_name if customer else "Customer",
           consultation.mechanic_identity_id: mechanic.name if mechanic else "Mechanic"}
    return render(request, "session.html", consultation=consultation, ask=ask, intake=intake,
                  mechanic=mechanic, customer=customer, chats=chats, lines=lines, who=who,
                  files=files, plan=runtime.config.plan(consultation.plan),
                  minutes=minutes_of(runtime, consultation),
                  # A session under way whose video room is made (core.video.observer_link).
                  observable=consultation.status in ("waiting", "live")
                  and consultation.room_status == "ready")


async def end_session(request: web.Request) -> web.Response:
    """Complete a session under way now (as if either side ended it): paid out as usual."""
    runtime, admin, now = runtime_of(request), request[ADMIN], now_of(request)
    async with runtime.transaction() as uow:
        consultation = await _consultation(uow.session, request)
        ended = await complete(uow, runtime, consultation.id, "admin_ended", now)
        if ended is not None:
            audit(uow.session, actor(admin), "end_session", str(consultation.id), now)
    back = url(request, "session", id=str(consultation.id))
    if ended is None:
        return see_other(request, back, "That session was no longer under way.", "error")
    return see_other(request, back, "The session is ended; both sides were told.")


async def cancel_session(request: web.Request) -> web.Response:
    """Cancel a session under way: both told, the customer refunded in full."""
    runtime, admin, now = runtime_of(request), request[ADMIN], now_of(request)
    async with runtime.transaction() as uow:
        consultation = await _consultation(uow.session, request)
        cancelled = await cancel_for_emergency(uow, runtime, consultation, now,
                                               reason="admin_cancelled_session")
        if cancelled:
            audit(uow.session, actor(admin), "cancel_session", str(consultation.id), now)
    back = url(request, "session", id=str(consultation.id))
    if not cancelled:
        return see_other(request, back, "That session was no longer under way.", "error")
    refund = await refund_now(runtime, now)
    return see_other(request, back, f"The session is cancelled; both sides were told. {refund}")


async def sweeps(request: web.Request) -> web.Response:
    """Run every timeout now (what the scheduler does every few seconds)."""
    runtime, admin, now = runtime_of(request), request[ADMIN], now_of(request)
    stats = await run_sweeps(runtime, now)
    counts = {name: value for name, value in vars(stats).items()}
    async with runtime.transaction() as uow:
        audit(uow.session, actor(admin), "run_sweeps", None, now, **counts)
    done = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in counts.items())
    return see_other(request, url(request, "sessions"), f"Sweeps run: {done}.")


async def observe(request: web.Request) -> web.StreamResponse:
    """Watch a live video session: to its room, hidden and subscribe-only (core.video)."""
    runtime, now, admin = runtime_of(request), now_of(request), request[ADMIN]
    async with runtime.readers() as session:
        consultation = await _consultation(session, request)
        ask = await session.get(SessionRequest, consultation.request_id)
        assert ask is not None
        try:
            if runtime.rooms is None:
                raise CoreError("this server has no video rooms (LIVEKIT_URL, LIVEKIT_API_KEY "
                                "and LIVEKIT_API_SECRET are not set)")
            link = await observer_link(session, runtime.config, ask.ref, now,
                                       admin_id=admin.id)
        except CoreError as why:
            return render(request, "error.html", status=409, heading="Nothing to observe",
                          lines=[f"{str(why)[:1].upper()}{str(why)[1:]}."])
    async with runtime.transaction() as uow:
        audit(uow.session, actor(admin), "observe", str(consultation.id), now)
    return see_other(request, link.url)


async def file(request: web.Request) -> web.StreamResponse:
    """A file sent in an intake or a session, for admins."""
    runtime = runtime_of(request)
    async with runtime.readers() as session:
        record = await session.scalar(select(File).where(
            File.public_id == request.match_info["public_id"][:40]))
    path = blob_path(runtime.config, record.sha256) if record is not None else None
    if record is None or path is None or not path.is_file():
        raise web.HTTPNotFound()
    name = (record.original_name or record.public_id).replace('"', "")
    return web.FileResponse(path, headers={
        **HEADERS, "Content-Type": record.content_type,
        "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self'",
        "Content-Disposition": f'inline; filename="{name.encode("ascii", "replace").decode()}"'})


async def sessions_csv(request: web.Request) -> web.Response:
    from admin_web.csv_export import sessions_csv as make_csv
    from admin_web.web import csv_response

    runtime = runtime_of(request)
    found = SessionFilter.from_query(request.query, list(runtime.config.plans))
    async with runtime.readers() as session:
        text = make_csv(await session_rows(session, found, limit=None))
    return csv_response(text, f"sessions-{now_of(request):%Y%m%d-%H%M}.csv")
