"""GET /f/{token}: a file sent in a session, for the person the link was made for.
GET /s/{token}: a customer's session record (intake, transcript, files, notes, receipt).

Both links are signed (core.links) and expire; a forged, expired or foreign token gets a
clear 403 page, never the file or the record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from sqlalchemy import select

from core.consultations import file_url, first_name
from core.dispatch.offers import OPEN_STATUSES
from core.files import blob_path
from core.links import verify
from core.models import (
    Checkout,
    Consultation,
    Extension,
    File,
    Identity,
    Intake,
    Mechanic,
    Message,
    Offer,
    Refund,
    SessionRequest,
)
from core.runtime import Runtime

log = logging.getLogger("autodoctor.channels.web")

HERE = Path(__file__).resolve().parent
_pages = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                            autoescape=True)
_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                       "img-src 'self'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Cache-Control": "private, no-store"}


def _refused(reason: str) -> web.Response:
    html = _pages.get_template("refused.html").render(reason=reason)
    return web.Response(text=html, status=403, content_type="text/html", headers=_HEADERS)


class Records:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def file(self, request: web.Request) -> web.StreamResponse:
        config = self.runtime.config
        grant = verify(config.secrets.secret_key, "f", request.match_info["token"],
                       self.runtime.clock.now())
        if grant is None or not grant.viewer.startswith("i") or \
                not grant.viewer[1:].isdigit():
            return _refused("This file link is not valid or has expired. Ask in the chat "
                            "for the file again.")
        viewer = int(grant.viewer[1:])
        async with self.runtime.readers() as session:
            record = await session.get(File, grant.subject)
            allowed = record is not None and await _may_open(session, record, viewer)
        if record is None or not allowed:
            log.warning("file link refused file=%s viewer=%s", grant.subject, viewer)
            return _refused("This file is not shared with you.")
        path = blob_path(config, record.sha256)
        if not path.is_file():
            return _refused("This file is no longer stored.")
        name = (record.original_name or record.public_id).replace('"', "")
        ascii_name = name.encode("ascii", "replace").decode()
        return web.FileResponse(path, headers={
            **_HEADERS, "Content-Type": record.content_type,
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Content-Disposition": f'inline; filename="{ascii_name}"'})

    async def record(self, request: web.Request) -> web.Response:
        config = self.runtime.config
        now = self.runtime.clock.now()
        grant = verify(config.secrets.secret_key, "s", request.match_info["token"], now)
        if grant is None or not grant.viewer.startswith("c"):
            return _refused("This session link is not valid or has expired. Say \"history\" "
                            "in the chat for a fresh one.")
        async with self.runtime.readers() as session:
            page = await _record_page(session, self.runtime, grant.subject, grant.viewer, now)
        if page is None:
            return _refused("This session record is not yours.")
        html = _pages.get_template("record.html").render(**page)
        return web.Response(text=html, content_type="text/html", headers=_HEADERS)


async def _may_open(session: Any, record: File, viewer: int) -> bool:
    """The uploader, either side of the session it was sent in, the mechanic of a session
    for the intake it belongs to, or a mechanic (the chat it was offered on) holding an open
    offer of that intake's request."""
    if record.uploaded_by_identity_id == viewer:
        return True
    sides = (Consultation.customer_identity_id == viewer) | \
        (Consultation.mechanic_identity_id == viewer)
    if record.consultation_id is not None and await session.scalar(select(Consultation.id).where(
            Consultation.id == record.consultation_id, sides)) is not None:
        return True
    if record.intake_id is None:
        return False
    if await session.scalar(
            select(Offer.id).join(SessionRequest, SessionRequest.id == Offer.request_id)
            .where(SessionRequest.intake_id == record.intake_id,
                   SessionRequest.status.in_(OPEN_STATUSES), Offer.status == "offered",
                   Offer.identity_id == viewer).limit(1)) is not None:
        return True
    return await session.scalar(
        select(Consultation.id).join(SessionRequest, SessionRequest.id == Consultation.request_id)
        .where(SessionRequest.intake_id == record.intake_id, sides).limit(1)) is not None


@dataclass(frozen=True)
class _Line:
    who: str
    text: str
    at: datetime
    files: list[dict[str, str]]


async def _record_page(session: Any, runtime: Runtime, consultation_id: int, viewer: str,
                       now: datetime) -> dict[str, Any] | None:
    consultation = await session.get(Consultation, consultation_id)
    if consultation is None or viewer != f"c{consultation.customer_id}":
        return None
    request = await session.get(SessionRequest, consultation.request_id)
    intake = await session.get(Intake, request.intake_id) if request else None
    mechanic = await session.get(Mechanic, consultation.mechanic_id)
    if request is None or intake is None:
        return None
    customer_chat = consultation.customer_identity_id
    mechanic_name = first_name(mechanic.name if mechanic else None, "Mechanic")
    files = {f.public_id: f for f in (await session.scalars(select(File).where(
        (File.consultation_id == consultation.id) | (File.intake_id == intake.id)))).all()}
    lines: list[_Line] = []
    messages = (await session.scalars(
        select(Message).where(Message.consultation_id == consultation.id,
                              Message.direction == "in").order_by(Message.id))).all()
    customer_name = None
    if customer_chat is not None:
        chat = await session.get(Identity, customer_chat)
        customer_name = first_name(chat.display_name if chat else None, "You")
    for message in messages:
        who = (customer_name or "You") if message.identity_id == customer_chat \
            else mechanic_name
        attached = [_file_link(runtime, files[p], customer_chat, now)
                    for p in (message.body or {}).get("attachments", []) if p in files]
        lines.append(_Line(who, message.text, message.created_at, attached))
    checkout = await session.get(Checkout, request.checkout_id) if request.checkout_id else None
    extensions = (await session.scalars(select(Extension).where(
        Extension.consultation_id == consultation.id, Extension.status == "paid"))).all()
    refund = await session.scalar(select(Refund).where(Refund.checkout_id == checkout.id)) \
        if checkout is not None else None
    plan = runtime.config.plan(consultation.plan)
    return {"consultation": consultation, "request": request, "intake": intake, "plan": plan,
            "mechanic_name": mechanic_name, "lines": lines,
            "photos": [_file_link(runtime, f, customer_chat, now) for f in files.values()
                       if f.intake_id == intake.id],
            "checkout": checkout, "extensions": extensions, "refund": refund,
            "currency": runtime.config.billing.currency.upper()}


def _file_link(runtime: Runtime, record: File, viewer: int | None,
               now: datetime) -> dict[str, str]:
    url = file_url(runtime.config, record.id, viewer, now) if viewer is not None else ""
    return {"name": record.original_name or record.public_id, "url": url,
            "content_type": record.content_type}
