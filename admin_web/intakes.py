"""Intakes: search and filters, one intake in full, closing an unpaid one, CSV of the list."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from aiohttp import web
from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from admin_web.accounts import actor, audit
from admin_web.web import (
    ADMIN,
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
    text_filter,
    url,
)
from core.models import (
    Checkout,
    Consultation,
    Customer,
    File,
    Identity,
    Intake,
    SessionRequest,
)

log = logging.getLogger("autodoctor.admin")

STATUSES = ("draft", "awaiting_payment", "paid", "cancelled", "expired")
# What an admin may set: an unpaid intake may be closed; a paid one follows its request
# (cancel the request, or the session, instead).
CHANGES = {"draft": ("cancelled", "expired"), "awaiting_payment": ("cancelled", "expired")}


@dataclass(frozen=True)
class IntakeFilter:
    q: str = ""
    status: str | None = None
    plan: str | None = None
    since: date | None = None
    until: date | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str], plans: list[str]) -> IntakeFilter:
        return cls(q=text_filter(query.get("q")), status=choice(query.get("status"), STATUSES),
                   plan=choice(query.get("tier"), plans), since=day(query.get("since")),
                   until=day(query.get("until")))

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.status:
            found.append(Intake.status == self.status)
        if self.plan:
            found.append(Intake.plan == self.plan)
        if self.since:
            found.append(Intake.created_at >= day_start(self.since))
        if self.until:
            found.append(Intake.created_at < day_end(self.until))
        if self.q:
            words = self.q.lower()
            matches = [func.lower(column).contains(words, autoescape=True) for column in (
                Intake.vin, Intake.vehicle_make, Intake.vehicle_model, Intake.problem,
                Customer.display_name, SessionRequest.ref)]
            if self.q.isdigit():
                matches.append(Intake.id == int(self.q))
            found.append(or_(*matches))
        return found


@dataclass(frozen=True)
class IntakeRow:
    intake: Intake
    customer: str
    request_ref: str | None
    request_status: str | None
    files: int

    @property
    def vehicle(self) -> str:
        i = self.intake
        return " ".join(str(p) for p in (i.vehicle_year, i.vehicle_make, i.vehicle_model) if p)


async def intake_rows(session: AsyncSession, found: IntakeFilter,
                      limit: int | None = PAGE_ROWS) -> list[IntakeRow]:
    """Intakes matching the filter, newest first."""
    query = (select(Intake, Customer.display_name, SessionRequest.ref, SessionRequest.status)
             .outerjoin(Customer, Customer.id == Intake.customer_id)
             .outerjoin(SessionRequest, SessionRequest.intake_id == Intake.id)
             .where(*found.conditions())
             .order_by(Intake.created_at.desc(), Intake.id.desc()))
    if limit is not None:
        query = query.limit(limit)
    found_rows = (await session.execute(query)).all()
    counts: dict[int, int] = {}
    if found_rows:
        counts = {intake_id: int(n) for intake_id, n in (await session.execute(
            select(File.intake_id, func.count()).where(
                File.intake_id.in_({row[0].id for row in found_rows}))
            .group_by(File.intake_id))).all() if intake_id is not None}
    return [IntakeRow(intake, customer or "", ref, status, counts.get(intake.id, 0))
            for intake, customer, ref, status in found_rows]


async def intakes(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    found = IntakeFilter.from_query(request.query, list(runtime.config.plans))
    async with runtime.readers() as session:
        rows = await intake_rows(session, found)
    return render(request, "intakes.html", rows=rows, filter=found, statuses=STATUSES,
                  plans=runtime.config.plans, query=dict(request.query),
                  csv_url=url(request, "intakes_csv", dict(request.query)))


async def intakes_csv(request: web.Request) -> web.Response:
    from admin_web.csv_export import intakes_csv as make_csv
    from admin_web.web import csv_response

    runtime = runtime_of(request)
    found = IntakeFilter.from_query(request.query, list(runtime.config.plans))
    async with runtime.readers() as session:
        text = make_csv(await intake_rows(session, found, limit=None))
    return csv_response(text, f"intakes-{now_of(request):%Y%m%d-%H%M}.csv")


async def intake_detail(request: web.Request) -> web.Response:
    runtime = runtime_of(request)
    intake_id = number(request.match_info["id"])
    async with runtime.readers() as session:
        intake = await session.get(Intake, intake_id) if intake_id else None
        if intake is None:
            raise web.HTTPNotFound()
        customer = await session.get(Customer, intake.customer_id)
        chats = (await session.scalars(select(Identity).where(
            Identity.customer_id == intake.customer_id).order_by(Identity.id))).all()
        files = (await session.scalars(select(File).where(File.intake_id == intake.id)
                                       .order_by(File.id))).all()
        checkouts = (await session.scalars(select(Checkout).where(
            Checkout.intake_id == intake.id).order_by(Checkout.id))).all()
        ask = await session.scalar(select(SessionRequest).where(
            SessionRequest.intake_id == intake.id))
        consultations = (await session.scalars(select(Consultation).where(
            Consultation.request_id == ask.id).order_by(Consultation.id))).all() \
            if ask is not None else []
    return render(request, "intake.html", intake=intake, customer=customer, chats=chats,
                  files=files, checkouts=checkouts, ask=ask, consultations=consultations,
                  changes=CHANGES.get(intake.status, ()),
                  plan=runtime.config.plans.get(intake.plan or ""))


async def intake_status(request: web.Request) -> web.Response:
    """Close an unpaid intake (cancelled or expired); its open payment links stop working."""
    runtime, admin, now = runtime_of(request), request[ADMIN], now_of(request)
    intake_id = number(request.match_info["id"])
    status = str((await request.post()).get("status", ""))
    back = url(request, "intake", id=str(intake_id or 0))
    allowed = [old for old, new in CHANGES.items() if status in new]
    if intake_id is None or not allowed:
        return see_other(request, back, f"An intake can't be set to {status[:40]!r} here.",
                         "error")
    async with runtime.transaction() as uow:
        session = uow.session
        old = await session.scalar(select(Intake.status).where(Intake.id == intake_id))
        changed = (await session.execute(
            update(Intake).where(Intake.id == intake_id, Intake.status.in_(allowed))
            .values(status=status, updated_at=now).returning(Intake.id))).scalar_one_or_none()
        expired: list[Checkout] = []
        if changed is not None:
            expired = list((await session.scalars(
                update(Checkout).where(Checkout.intake_id == intake_id,
                                       Checkout.status == "open")
                .values(status="expired").returning(Checkout))).all())
            audit(session, actor(admin), "intake_status", str(intake_id), now, old=old,
                  new=status)
    if changed is None:
        return see_other(request, back, f"Intake {intake_id} is {old or 'missing'} now, so it "
                         "was not changed.", "error")
    close = getattr(runtime.payments, "expire_checkout", None)
    for checkout in expired if close is not None else []:
        try:
            await close(checkout)  # type: ignore[misc]  # the provider's page closes too
        except Exception:
            log.exception("checkout=%s could not be closed at the provider", checkout.ref)
    log.info("intake=%s %s -> %s by admin=%s", intake_id, old, status, admin.id)
    return see_other(request, back, f"Intake {intake_id} is now {status}.")
