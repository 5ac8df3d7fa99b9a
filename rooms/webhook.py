"""POST /webhooks/livekit: verified with livekit-api's WebhookReceiver, each event once.

LiveKit signs a webhook with a JWT (our API key and secret) in the Authorization header whose
sha256 claim is the body's hash. A missing or bad signature is a 401 that changes nothing.
The customer's `participant_joined` starts the session (the video tiers' "join": the no-show
clock stops, the timer starts); joins, departures and the room's end are recorded in the
audit log. Each event id is taken in once (inbound_events, provider "livekit").
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from livekit import api
from sqlalchemy import select

from core.consultations import start_session
from core.db import insert_ignore
from core.models import AuditLog, Consultation, InboundEvent, SessionRequest
from core.runtime import Runtime
from core.video import Viewer

log = logging.getLogger("autodoctor.rooms.webhook")

RECORDED = ("participant_joined", "participant_left", "room_started", "room_finished")
MAX_BODY_BYTES = 256 * 1024


class LiveKitWebhook:
    def __init__(self, runtime: Runtime) -> None:
        secrets = runtime.config.secrets
        self.runtime = runtime
        self._receiver = api.WebhookReceiver(
            api.TokenVerifier(secrets.livekit_api_key, secrets.livekit_api_secret))

    async def handle(self, request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return web.json_response({"error": "too large"}, status=413)
        body = (await request.read())[:MAX_BODY_BYTES].decode("utf-8", "replace")
        auth = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        try:
            # The receiver raises plain Exceptions (and jwt's, and protobuf's): all mean the
            # request is not LiveKit's.
            event = self._receiver.receive(body, auth)
        except Exception as exc:  # noqa: BLE001
            log.warning("livekit webhook rejected: %s", type(exc).__name__)
            return web.json_response({"error": "invalid signature"}, status=401)
        if not event.id or not event.event:
            return web.json_response({"error": "no event id"}, status=400)
        outcome = await process_event(self.runtime, event)
        return web.json_response({"received": True, "outcome": outcome})


async def process_event(runtime: Runtime, event: Any) -> str:
    """Apply one verified event: 'processed', 'duplicate' or 'ignored'."""
    if event.event not in RECORDED:
        return "ignored"
    room = event.room.name
    identity = event.participant.identity if event.HasField("participant") else ""
    async with runtime.transaction() as uow:
        session = uow.session
        now = runtime.clock.now()
        fresh = await insert_ignore(session, InboundEvent, {
            "provider": "livekit", "event_id": event.id[:255], "received_at": now},
            ["provider", "event_id"])
        if fresh is None:
            log.info("livekit event=%s %s duplicate ignored", event.id, event.event)
            return "duplicate"
        consultation = await session.scalar(
            select(Consultation).where(Consultation.room_name == room[:100]))
        if consultation is None:
            log.info("livekit event=%s %s room=%s is none of ours", event.id, event.event,
                     room)
            return "ignored"
        ref = await session.scalar(select(SessionRequest.ref).where(
            SessionRequest.id == consultation.request_id))
        started = False
        if event.event == "participant_joined" and \
                identity == Viewer("customer", consultation.customer_id).code:
            started = await start_session(uow, runtime, consultation, now)
        session.add(AuditLog(actor="livekit", action=f"video.{event.event}", subject=ref or room,
                             details={"room": room, "identity": identity[:64],
                                      "started": started}, created_at=now))
    log.info("livekit event=%s %s room=%s identity=%s%s", event.id, event.event, room,
             identity, " session started" if started else "")
    return "processed"
