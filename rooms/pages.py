"""GET /v/{token}: the video join page, and what it asks this service for.

The token (core.video) names one consultation and one viewer. The page fetches a LiveKit
access token (POST /v/{token}/join), polls the session's state and chat (GET .../state), and
sends chat lines and the End button through the conversation engine as the person's own chat
(POST .../messages, .../end): so what is written beside the video is relayed, kept in the
transcript and reaches the other side wherever they are. A forged, expired or foreign token
gets a clear 403 page and no room.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import jinja2
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.consultations import ACTIVE, first_name, minutes_of
from core.engine import Engine
from core.messages import Inbound
from core.models import Admin, Consultation, Identity, Mechanic, Message, SessionRequest
from core.runtime import Runtime
from core.video import Viewer, participant_identity, read_join_token, session_over_for_good

log = logging.getLogger("autodoctor.rooms.pages")

HERE = Path(__file__).resolve().parent
_pages = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                            autoescape=True)
_NO_STORE = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
             "Cache-Control": "private, no-store"}
_REFUSED_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"
MAX_LINES = 200


@runtime_checkable
class TokenMinter(Protocol):
    """What the page needs of the video provider (rooms.livekit.LiveKitRooms)."""

    url: str

    def participant_token(self, room: str, viewer: Viewer, name: str,
                          ttl_minutes: int) -> str: ...


@dataclass(frozen=True)
class Seat:
    """A valid join link's consultation, as its viewer sees it."""

    consultation: Consultation
    viewer: Viewer
    ref: str
    name: str  # the viewer's first name (shown to the others in the room)
    other_name: str
    chat: Identity | None  # the viewer's own chat (None for an observer, or a chat gone)

    @property
    def active(self) -> bool:
        return self.consultation.status in ACTIVE


def refused(reason: str) -> web.Response:
    html = _pages.get_template("refused.html").render(reason=reason)
    return web.Response(text=html, status=403, content_type="text/html",
                        headers={**_NO_STORE, "Content-Security-Policy": _REFUSED_CSP})


class JoinPages:
    def __init__(self, runtime: Runtime, engine: Engine, rooms: TokenMinter | None,
                 client_ok: bool) -> None:
        self.runtime, self.engine, self.rooms = runtime, engine, rooms
        self.client_ok = client_ok
        self._csp = _page_csp(rooms.url if rooms is not None else "")

    async def _seat(self, request: web.Request) -> Seat | web.Response:
        now = self.runtime.clock.now()
        found = read_join_token(self.runtime.config, request.match_info["token"], now)
        if found is None:
            return refused("This video link is not valid or has expired. Ask in your chat "
                           "for the session's status, or contact support.")
        grant, viewer = found
        async with self.runtime.readers() as session:
            seat = await _seat_of(session, grant.subject, viewer)
        if seat is None:
            log.warning("join link refused consultation=%s viewer=%s", grant.subject,
                        viewer.code)
            return refused("This video link is not for you.")
        if session_over_for_good(self.runtime.config, seat.consultation.ended_at, now):
            return refused("This video session is over. Your chat has the session's "
                           "record and notes.")
        return seat

    async def page(self, request: web.Request) -> web.Response:
        seat = await self._seat(request)
        if isinstance(seat, web.Response):
            return seat
        config = self.runtime.config
        plan = config.plan(seat.consultation.plan)
        settings = {"base": f"/v/{request.match_info['token']}", "role": seat.viewer.role,
                    "name": seat.name, "other": seat.other_name, "ref": seat.ref,
                    "video": self.rooms is not None and seat.consultation.room_name is not None,
                    "client": self.client_ok, "can_write": seat.chat is not None}
        html = _pages.get_template("join.html").render(
            seat=seat, plan=plan, settings=_script_json(settings),
            minutes=minutes_of(self.runtime, seat.consultation))
        return web.Response(text=html, content_type="text/html", headers={
            **_NO_STORE, "Content-Security-Policy": self._csp,
            "Permissions-Policy": "camera=(self), microphone=(self), display-capture=(self)"})

    async def state(self, request: web.Request) -> web.Response:
        seat = await self._seat(request)
        if isinstance(seat, web.Response):
            return _json_refusal(seat)
        try:
            after = max(0, int(request.query.get("after", "0")))
        except ValueError:
            after = 0
        now = self.runtime.clock.now()
        async with self.runtime.readers() as session:
            consultation = await session.get(Consultation, seat.consultation.id)
            assert consultation is not None
            lines = await _lines(session, consultation, seat, after)
        left = None
        if consultation.status == "live" and consultation.ends_at is not None:
            left = max(0, int((consultation.ends_at - now).total_seconds()))
        return web.json_response({
            "status": consultation.status, "over": consultation.status not in ACTIVE,
            "seconds_left": left, "minutes": minutes_of(self.runtime, consultation),
            "room": consultation.room_status, "lines": lines}, headers=_NO_STORE)

    async def join(self, request: web.Request) -> web.Response:
        """A short-lived LiveKit access token for this person and this room only."""
        seat = await self._seat(request)
        if isinstance(seat, web.Response):
            return _json_refusal(seat)
        consultation = seat.consultation
        if not seat.active:
            return _error(410, "over", "This session is over.")
        if self.rooms is None or consultation.room_name is None:
            return _error(409, "no_video", "This session is held as a text chat.")
        if consultation.room_status != "ready":
            return _error(409, "not_ready", "The video room is being prepared.")
        token = self.rooms.participant_token(consultation.room_name, seat.viewer, seat.name,
                                             self.runtime.config.video.token_minutes)
        log.info("consultation=%s viewer=%s video token minted", consultation.id,
                 seat.viewer.code)
        return web.json_response({"url": self.rooms.url, "token": token,
                                  "room": consultation.room_name,
                                  "identity": participant_identity(seat.viewer)},
                                 headers=_NO_STORE)

    async def message(self, request: web.Request) -> web.Response:
        """A chat line written beside the video: handled as if written in the person's chat."""
        seat = await self._seat(request)
        if isinstance(seat, web.Response):
            return _json_refusal(seat)
        body = await _json_body(request)
        raw = body.get("text")
        text = raw if isinstance(raw, str) else ""
        client_id = str(body.get("client_id") or "")[:64]
        if not text.strip() or len(text) > self.runtime.config.widget.max_text_chars:
            return _error(400, "bad_text", "Write a message (up to "
                          f"{self.runtime.config.widget.max_text_chars} characters).")
        return await self._as_chat(seat, text=text, key=f"m:{client_id}" if client_id else None)

    async def end(self, request: web.Request) -> web.Response:
        seat = await self._seat(request)
        if isinstance(seat, web.Response):
            return _json_refusal(seat)
        return await self._as_chat(seat, action=f"end:{seat.consultation.id}:confirm",
                                   key="end")

    async def _as_chat(self, seat: Seat, *, text: str = "", action: str | None = None,
                       key: str | None) -> web.Response:
        if seat.chat is None:
            return _error(403, "read_only", "You can watch this session, not write in it.")
        if not seat.active:
            return _error(410, "over", "This session is over.")
        provider_id = f"v:{seat.consultation.id}:{seat.viewer.code}:{key}" if key else None
        handled = await self.engine.handle(Inbound(
            channel=seat.chat.channel, address=seat.chat.address, text=text, action=action,
            provider_id=provider_id))
        return web.json_response({"ok": True, "duplicate": handled.duplicate},
                                 headers=_NO_STORE)


async def _seat_of(session: AsyncSession, consultation_id: int, viewer: Viewer) -> Seat | None:
    consultation = await session.get(Consultation, consultation_id)
    if consultation is None:
        return None
    mechanic = await session.get(Mechanic, consultation.mechanic_id)
    customer_chat = await session.get(Identity, consultation.customer_identity_id) \
        if consultation.customer_identity_id else None
    mechanic_name = first_name(mechanic.name if mechanic else None, "Mechanic")
    customer_name = first_name(customer_chat.display_name if customer_chat else None,
                               "Customer")
    ref = await session.scalar(select(SessionRequest.ref).where(
        SessionRequest.id == consultation.request_id)) or ""
    if viewer.role == "customer" and viewer.id == consultation.customer_id:
        return Seat(consultation, viewer, ref, customer_name, mechanic_name, customer_chat)
    if viewer.role == "mechanic" and viewer.id == consultation.mechanic_id:
        chat = await session.get(Identity, consultation.mechanic_identity_id) \
            if consultation.mechanic_identity_id else None
        return Seat(consultation, viewer, ref, mechanic_name, customer_name, chat)
    if viewer.role == "observer":
        # o0: an operator's link from the command line; else an active admin's.
        if viewer.id != 0 and not await session.scalar(
                select(Admin.is_active).where(Admin.id == viewer.id)):
            return None
        return Seat(consultation, viewer, ref, "Observer", customer_name, None)
    return None


async def _lines(session: AsyncSession, consultation: Consultation, seat: Seat,
                 after: int) -> list[dict[str, Any]]:
    """What the two wrote in the session (the relayed chat), after message id `after`."""
    rows = (await session.scalars(
        select(Message).where(Message.consultation_id == consultation.id,
                              Message.direction == "in", Message.id > after)
        .order_by(Message.id).limit(MAX_LINES))).all()
    customer_side = seat.name if seat.viewer.role == "customer" else seat.other_name
    mechanic_side = seat.name if seat.viewer.role == "mechanic" else seat.other_name
    if seat.viewer.role == "observer":
        mechanic = await session.get(Mechanic, consultation.mechanic_id)
        mechanic_side = first_name(mechanic.name if mechanic else None, "Mechanic")
    lines = []
    for row in rows:
        from_customer = row.identity_id == consultation.customer_identity_id
        files = len((row.body or {}).get("attachments", []))
        text = row.text or (f"sent {files} file{'s' if files != 1 else ''}" if files else "")
        lines.append({"id": row.id, "who": customer_side if from_customer else mechanic_side,
                      "mine": seat.chat is not None and row.identity_id == seat.chat.id,
                      "text": text, "at": _hhmm(row.created_at)})
    return lines


def _script_json(value: dict[str, Any]) -> str:
    """JSON that can stand inside a <script> element (no "</script>" can close it)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026")


def _hhmm(at: datetime) -> str:
    return at.strftime("%H:%M")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status,
                             headers=_NO_STORE)


def _json_refusal(page: web.Response) -> web.Response:
    return _error(page.status, "refused", "This video link is not valid for you.")


def _page_csp(livekit_url: str) -> str:
    """Scripts from this service only; connections to it and to the LiveKit server (and, on
    LiveKit Cloud, its regional servers)."""
    connect = ["'self'"]
    parts = urlsplit(livekit_url)
    if parts.hostname:
        host = parts.netloc
        secure = parts.scheme in ("https", "wss")
        connect += [f"{'wss' if secure else 'ws'}://{host}",
                    f"{'https' if secure else 'http'}://{host}"]
        if parts.hostname.endswith(".livekit.cloud"):
            connect += ["wss://*.livekit.cloud", "https://*.livekit.cloud"]
    return ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; media-src 'self' blob: mediastream:; "
            f"connect-src {' '.join(connect)}; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'none'")
