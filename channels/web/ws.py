"""The widget WebSocket (GET /ws/widget): the README's JSON protocol, nothing more.

Replies are not sent from the request that caused them: every bot message is a transcript row,
and each open socket pushes the rows newer than the last one it sent. So a reconnect with
`resume_after` replays exactly what was missed, and nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSMsgType, web
from sqlalchemy import select

from channels.web import frames
from channels.web.frames import (
    CHANNEL,
    ProtocolError,
    issued_by_us,
    new_visitor_token,
    visitor_address,
)
from channels.web.guards import INVITE_TRIES_PER_SOCKET, Guards
from channels.web.sent import RecentIds
from core.engine import Engine
from core.hub import Mailbox
from core.mechanics import redeem_invite
from core.messages import Inbound
from core.models import Identity, Message
from core.runtime import Runtime
from core.store.records import MessageRow

log = logging.getLogger("autodoctor.channels.web")

REPLAY_BATCH = 200
# How late a transaction may commit a message with a lower id than one already sent (ids are
# taken at insert, not at commit) and still reach an open or reconnecting widget. The widget
# tells messages apart by id, so reading this far back shows nothing twice.
LATE_COMMIT_GRACE = timedelta(seconds=30)
RESTART = 1012  # a drain's close code ("service restart"): reconnect now, elsewhere


class Origins:
    """The sites allowed to embed the widget: our own, plus [widget] allowed_origins."""

    def __init__(self, runtime: Runtime) -> None:
        self.allowed = {_origin(o) for o in runtime.config.widget.allowed_origins}
        self.allowed.add(_origin(runtime.config.public_url))

    def allows(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: the Origin check guards browsers against other sites
        # Not the request's own Host header: a page on another site can name any Host.
        return _origin(origin) in self.allowed


class WidgetSocket:
    """Serves GET /ws/widget."""

    def __init__(self, runtime: Runtime, engine: Engine, guards: Guards) -> None:
        self.runtime = runtime
        self.engine = engine
        cfg = runtime.config.widget
        self.max_frame = cfg.max_frame_bytes
        self.max_text = cfg.max_text_chars
        self.guards = guards
        self.origins = Origins(runtime)
        self.open: set[web.WebSocketResponse] = set()
        # Set by a drain (restart_all): a socket opened after it is closed at once.
        self.restarting = False

    async def close_all(self, app: web.Application) -> None:
        """On shutdown: tell every widget to reconnect later (1001), so nothing is cut mid-way."""
        for ws in list(self.open):
            await ws.close(code=1001, message=b"server restarting")

    async def restart_all(self) -> int:
        """The drain: close every socket with 1012; widget.js reconnects at once (another
        process behind a proxy) and resends what was not acknowledged, handled once."""
        self.restarting, sockets = True, list(self.open)
        await asyncio.gather(*(ws.close(code=RESTART, message=b"service restart")
                               for ws in sockets), return_exceptions=True)
        return len(sockets)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.origins.allows(request):
            log.warning("widget socket refused origin=%r", request.headers.get("Origin"))
            raise web.HTTPForbidden(text="This site is not allowed to open the chat widget.")
        # aiohttp itself closes (1009) only far above our own limit; below it we answer
        # an oversized frame with an error frame and keep the connection.
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=max(4 * self.max_frame, 1 << 20))
        await ws.prepare(request)
        if self.restarting:  # upgraded just as the drain began
            await ws.close(code=RESTART, message=b"service restart")
            return ws
        self.open.add(ws)
        connection = _Connection(self, ws, self.guards.address_of(request))
        try:
            await connection.run()
        finally:
            self.open.discard(ws)
            await connection.close()
        return ws


def _origin(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


class _Connection:
    def __init__(self, server: WidgetSocket, ws: web.WebSocketResponse, client: str) -> None:
        self.server = server
        self.runtime = server.runtime
        self.ws = ws
        self.client = client  # the client's IP address
        self.invite_tries = 0
        # The visitor's address once a hello went through; their identity and mailbox once
        # they have one (a new visitor's first message makes it).
        self.address: str | None = None
        self.identity_id: int | None = None
        self.last_sent = 0
        self.sent = RecentIds()
        self.mailbox: Mailbox | None = None
        self.pusher: asyncio.Task[None] | None = None
        self.send_lock = asyncio.Lock()
        # One push at a time (the pusher's, or the handler's own after a message): each sends
        # what it took in id order, and two must not interleave.
        self.push_lock = asyncio.Lock()
        self.closing = False

    async def run(self) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    await self.on_frame(msg.data)
                except ProtocolError as exc:
                    await self.error(exc.code, str(exc))
                except Exception:
                    log.exception("widget frame failed identity=%s", self.identity_id)
                    await self.error("internal", "Something went wrong on our side and your "
                                                 "message was not processed. Please send it "
                                                 "again.")
            elif msg.type == WSMsgType.BINARY:
                await self.error("binary_not_supported",
                                 "Send JSON text frames; upload files with POST /widget/upload.")
            elif msg.type == WSMsgType.ERROR:
                log.info("widget socket error: %s", self.ws.exception())

    async def close(self) -> None:
        if self.pusher is not None and self.mailbox is not None:
            # Let the pusher finish what it is sending rather than cutting a query in half.
            self.closing = True
            self.mailbox.event.set()
            try:
                await asyncio.wait_for(asyncio.shield(self.pusher), 5)
            except (TimeoutError, asyncio.CancelledError):
                self.pusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.pusher
        self._stop_pushing()

    def _stop_pushing(self) -> None:
        if self.pusher is not None and not self.pusher.done():
            self.pusher.cancel()
        if self.identity_id is not None and self.mailbox is not None:
            self.runtime.hub.unsubscribe(self.identity_id, self.mailbox)
        self.identity_id, self.mailbox, self.pusher = None, None, None

    async def send_json(self, frame: dict[str, Any]) -> None:
        async with self.send_lock:
            if not self.ws.closed:
                # orjson: UTF-8 as it is, like json.dumps(ensure_ascii=False), in a 20th of
                # the time; the bytes go out as the TEXT frame they are.
                await self.ws.send_frame(orjson.dumps(frame), WSMsgType.TEXT)

    async def error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})

    async def on_frame(self, data: str) -> None:
        # UTF-8 takes at most 4 bytes a character: only a long frame needs encoding to tell.
        if len(data) * 4 > self.server.max_frame and len(data.encode()) > self.server.max_frame:
            raise ProtocolError("frame_too_large",
                                f"That message is too large (the limit is "
                                f"{self.server.max_frame} bytes).")
        try:
            frame = orjson.loads(data)
        except ValueError:  # orjson.JSONDecodeError is one
            raise ProtocolError("bad_json", "Frames must be JSON objects.") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise ProtocolError("bad_frame", 'Frames must be JSON objects with a "type".')
        kind = frame["type"]
        if kind == "hello":
            await self.on_hello(frame)
            return
        if kind not in ("message", "action"):
            raise ProtocolError("unknown_type", f"Unknown frame type {kind[:40]!r}; expected "
                                                "hello, message or action.")
        if self.address is None:
            # Until a hello has gone through (a refused invite, a hello that failed: the
            # client may say hello again).
            raise ProtocolError("hello_required", 'Send {"type": "hello"} first.')
        if not self.server.guards.messages.allow(self.address):
            raise ProtocolError("rate_limited", "You're sending messages very quickly; please "
                                                "wait a few seconds and try again.")
        inbound = (frames.message(frame, self.address, self.server.max_text, self.client)
                   if kind == "message" else frames.action(frame, self.address, self.client))
        await self._hand_in(inbound)
        acknowledged = frames.client_id(frame)
        if acknowledged is not None:
            await self.send_json({"type": "ack", "client_id": acknowledged})

    async def on_hello(self, frame: dict[str, Any]) -> None:
        if self.address is not None:
            raise ProtocolError("already_started", "This connection already said hello.")
        hello = frames.hello(frame)
        token, resume_after = hello.token, hello.resume_after
        identity = await self._identity(visitor_address(token)) if token else None
        secret = self.runtime.config.secrets.secret_key
        if identity is None and not (token and issued_by_us(token, secret)):
            # Unknown: a new visitor (a token of ours without a record yet is kept: its
            # visitor was greeted and has written nothing since).
            token, resume_after = new_visitor_token(secret), None
        assert token is not None
        address = visitor_address(token)
        if hello.invite is not None:
            # An invite refused leaves the connection as it was: hello may be sent again.
            identity = await self._link_mechanic(hello.invite, address)
        self.address = address
        await self.send_json({"type": "welcome", "visitor": token})
        try:
            if identity is not None:
                await self._start_pushing(identity.id, resume_after or 0)
        except BaseException:
            self._stop_pushing()
            self.address = None  # ready for another hello
            raise
        if identity is None:
            # A first visit: greeted without a record yet; the first real message makes the
            # customer (anonymous visits cost nothing to keep).
            await self._greet()

    async def _greet(self) -> None:
        greeting = self.runtime.greeting
        if greeting is None:
            return
        text, buttons = greeting()
        await self.send_json({"type": "message", "id": None, "text": text,
                              "buttons": [{"label": b.label, "payload": b.payload}
                                          for b in buttons], "link": None})

    async def _link_mechanic(self, code: str, address: str) -> Identity:
        guards = self.server.guards
        if self.invite_tries >= INVITE_TRIES_PER_SOCKET or not guards.may_try_invite(self.client):
            raise ProtocolError("too_many_attempts", "Too many invite codes tried; please wait "
                                                     "and use the link you were sent.")
        async with self.runtime.transaction() as uow:
            mechanic = await redeem_invite(uow, self.runtime, code, CHANNEL, address,
                                           self.runtime.clock.now())
        if mechanic is None:
            self.invite_tries += 1
            guards.invite_failed(self.client, code)
            raise ProtocolError("invalid_invite", "That mechanic invite is unknown, expired or "
                                                  "was already used on another device.")
        identity = await self._identity(address)
        assert identity is not None
        return identity

    async def _identity(self, address: str) -> Identity | None:
        async with self.runtime.readers() as session:
            return await session.scalar(select(Identity).where(Identity.channel == CHANNEL,
                                                               Identity.address == address))

    async def _start_pushing(self, identity_id: int, after: int,
                             first: Sequence[MessageRow] | None = None) -> None:
        """Send what is new (`first` if given, else read from the database), then keep
        sending what is committed for this identity."""
        # Subscribe before reading, so a message committed in between still reaches us.
        self.identity_id = identity_id
        self.mailbox = self.runtime.hub.subscribe(identity_id)
        self.last_sent = after
        if first is None:
            await self.push_new(late=False)
        else:
            await self.push_rows(first)
        self.pusher = asyncio.create_task(self._push_forever())

    async def _push_forever(self) -> None:
        assert self.mailbox is not None
        failures = 0
        while True:
            await self.mailbox.event.wait()
            if self.closing or self.ws.closed:
                return
            rows, reread = self.mailbox.take()
            try:
                await self._push(rows, reread or failures > 0)
                failures = 0
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception:
                # The database was busy or briefly away: nothing is lost (the transcript holds
                # it); read it again shortly instead of leaving the socket silent.
                failures += 1
                log.warning("widget push failed identity=%s (try %s)", self.identity_id,
                            failures, exc_info=failures == 1)
                await asyncio.sleep(min(5.0, 0.1 * 2 ** failures))
                self.mailbox.event.set()

    async def _push(self, rows: Sequence[Message | MessageRow], reread: bool) -> None:
        async with self.push_lock:
            if reread:
                await self.push_new()
            else:
                await self.push_rows(rows)

    async def _hand_in(self, inbound: Inbound) -> None:
        """Hand a message to the engine and send what its transaction committed for this
        person (the replies, and whatever else came meanwhile) from here, not by waking the
        pusher for it."""
        mailbox = self.mailbox
        if mailbox is None:
            await self._first_message(inbound)
            return
        mailbox.hold()
        try:
            await self.server.engine.handle(inbound)
        finally:
            rows, reread = mailbox.release()
            if rows or reread:
                try:
                    await self._push(rows, reread)
                except Exception:  # noqa: BLE001 - nothing is lost: the pusher reads it again
                    log.warning("widget push failed identity=%s; the pusher tries again",
                                self.identity_id, exc_info=True)
                    mailbox.deliver(None)

    async def _first_message(self, inbound: Inbound) -> None:
        """A new visitor's first message: it makes their records (limited per client
        address), and from then on their messages are pushed."""
        if not self.server.guards.new_visitors.allow(self.client):
            raise ProtocolError("rate_limited", "Too many new chats from your network; please "
                                                "try again in a while.")
        handled = await self.server.engine.handle(inbound)
        if handled.identity_id is None:
            return  # a repeated frame
        # Nothing else can be there for a person met with this message: their replies are in
        # hand. Someone known already (another tab wrote first) may have more: read.
        await self._start_pushing(handled.identity_id, 0,
                                  handled.reply_rows if handled.first_contact else None)

    async def push_rows(self, rows: Sequence[Message | MessageRow]) -> None:
        """Send rows this process has just committed, skipping any already sent (a database
        read may have found them first). A row may have a lower id than one already sent:
        ids are taken when a row is written, not when its transaction commits."""
        for row in sorted(rows, key=lambda r: r.id or 0):
            if row.direction == "out" and row.id not in self.sent:
                await self._send_row(row)

    async def push_new(self, *, late: bool = True) -> None:
        """Send every bot message not yet sent, in id order, from the database: those after
        the last one sent and, with `late`, any committed lately with a lower id (see
        push_rows). A reconnecting widget's replay starts after its resume_after only: the
        protocol does not say which earlier ones it has."""
        since = self.runtime.clock.now() - LATE_COMMIT_GRACE
        async with self.runtime.readers() as session:
            while True:
                wanted = Message.id > self.last_sent
                if late:
                    wanted = wanted | (Message.created_at >= since)
                rows = (await session.scalars(
                    select(Message).where(Message.identity_id == self.identity_id,
                                          Message.direction == "out", wanted)
                    .order_by(Message.id).limit(REPLAY_BATCH))).all()
                for row in rows:
                    if row.id not in self.sent:
                        await self._send_row(row)
                if len(rows) < REPLAY_BATCH:
                    return
                late = False  # the next pages: after the last one sent

    async def _send_row(self, row: Message | MessageRow) -> None:
        assert row.id is not None  # committed
        body = row.body or {}
        frame: dict[str, Any] = {"type": "message", "id": row.id, "text": row.text,
                                 "buttons": body.get("buttons", []), "link": body.get("link")}
        if body.get("files"):
            frame["files"] = [{"name": f["name"], "content_type": f["content_type"],
                               "url": f["url"]} for f in body["files"]]
        await self.send_json(frame)
        self.sent.remember(row.id)
        self.last_sent = max(self.last_sent, row.id)
