"""The audit log: every admin action and login (and the mechanics' accepts), filterable."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from aiohttp import web
from sqlalchemy import ColumnElement, func, select

from admin_web.web import (
    PAGE_ROWS,
    day,
    day_end,
    day_start,
    number,
    render,
    runtime_of,
    text_filter,
)
from core.models import Admin, AuditLog


@dataclass(frozen=True)
class AuditFilter:
    actor: str = ""
    action: str = ""
    subject: str = ""
    since: date | None = None
    until: date | None = None
    before: int | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> AuditFilter:
        return cls(actor=text_filter(query.get("actor"), 64),
                   action=text_filter(query.get("action"), 64),
                   subject=text_filter(query.get("subject"), 64),
                   since=day(query.get("since")), until=day(query.get("until")),
                   before=number(query.get("before")))

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.actor:
            found.append(func.lower(AuditLog.actor).contains(self.actor.lower(),
                                                             autoescape=True))
        if self.action:
            found.append(AuditLog.action == self.action)
        if self.subject:
            found.append(func.lower(AuditLog.subject).contains(self.subject.lower(),
                                                               autoescape=True))
        if self.since:
            found.append(AuditLog.created_at >= day_start(self.since))
        if self.until:
            found.append(AuditLog.created_at < day_end(self.until))
        if self.before is not None:
            found.append(AuditLog.id < self.before)
        return found


async def audit_log(request: web.Request) -> web.Response:
    found = AuditFilter.from_query(request.query)
    async with runtime_of(request).readers() as session:
        entries = (await session.scalars(select(AuditLog).where(*found.conditions())
                                         .order_by(AuditLog.id.desc()).limit(PAGE_ROWS))).all()
        actions = (await session.scalars(select(AuditLog.action).distinct()
                                         .order_by(AuditLog.action))).all()
        admins = {f"admin:{admin_id}": email for admin_id, email in (await session.execute(
            select(Admin.id, Admin.email))).all()}
    query = {k: v for k, v in request.query.items() if k != "before"}
    older = {**query, "before": str(entries[-1].id)} if len(entries) == PAGE_ROWS else None
    return render(request, "audit.html", entries=entries, filter=found, actions=actions,
                  admins=admins, older=older, query=query)
