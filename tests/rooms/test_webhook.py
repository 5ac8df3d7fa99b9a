"""POST /webhooks/livekit, signed with livekit-api's own token code (as LiveKit signs them),
into the whole app, on both databases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from core.clock import ManualClock
from core.config import Config
from core.models import AuditLog, InboundEvent, SessionRequest
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.core.test_consultations import Session, consultation_of, matched
from tests.standins.livekit_api import WEBHOOK_PATH, LiveKitStandin

MakeClient = Callable[..., Awaitable[TestClient]]


async def _setup(video_runtime: Runtime, video_config: Config,
                 make_client: MakeClient) -> tuple[Session, TestClient, str, str]:
    session = await matched(video_runtime, "video15")
    consultation = await consultation_of(video_runtime, session.request)
    assert consultation.room_name is not None
    client = await make_client(video_config)
    return (session, client, consultation.room_name, f"c{consultation.customer_id}")


async def _count(runtime: Runtime, model: Any) -> int:
    async with runtime.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_the_customer_joining_the_room_starts_the_session_and_its_timer(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient,
        livekit_api: LiveKitStandin, clock: ManualClock) -> None:
    session, client, room, customer = await _setup(video_runtime, video_config, make_client)
    response = await livekit_api.send_webhook(client, "participant_joined", room,
                                              identity=customer)
    assert response.status == 200, await response.text()
    assert (await response.json())["outcome"] == "processed"
    consultation = await consultation_of(video_runtime, session.request)
    assert consultation.status == "live" and consultation.started_at == clock.now()
    assert consultation.ends_at == clock.now() + timedelta(minutes=45)
    for saw in (await session.customer_saw(), await session.sam_saw()):
        assert sum("The session has started: 45 minutes" in t for t in saw) == 1
    # The no-show clock has stopped: half an hour later the session is still on.
    clock.advance(minutes=31)
    assert (await run_sweeps(video_runtime)).no_show == 0
    async with video_runtime.sessions() as s:
        request = await s.get(SessionRequest, session.request.id)
    assert request is not None and request.status == "accepted"


async def test_the_mechanic_joining_first_does_not_start_the_clock(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient,
        livekit_api: LiveKitStandin) -> None:
    session, client, room, _customer = await _setup(video_runtime, video_config, make_client)
    consultation = await consultation_of(video_runtime, session.request)
    response = await livekit_api.send_webhook(client, "participant_joined", room,
                                              identity=f"m{consultation.mechanic_id}")
    assert response.status == 200
    assert (await consultation_of(video_runtime, session.request)).status == "waiting"
    async with video_runtime.sessions() as s:
        audit = (await s.scalars(select(AuditLog).where(
            AuditLog.action == "video.participant_joined"))).one()
    assert audit.subject == session.request.ref and audit.details["started"] is False


async def test_a_bad_or_missing_signature_is_refused_and_changes_nothing(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient,
        livekit_api: LiveKitStandin) -> None:
    session, client, room, customer = await _setup(video_runtime, video_config, make_client)
    body, headers = livekit_api.webhook("participant_joined", room, identity=customer)
    forged_body, forged = livekit_api.webhook("participant_joined", room, identity=customer,
                                              secret="not-the-api-secret-but-just-as-long-as-one")
    attempts = [
        (body, {"Content-Type": headers["Content-Type"]}),  # no signature
        (forged_body, forged),  # signed with another secret
        (body.replace(room, room + "x"), headers),  # the body changed after signing
        (body, {**headers, "Authorization": "garbage"}),
    ]
    for data, sent in attempts:
        response = await client.post(WEBHOOK_PATH, data=data, headers=sent)
        assert response.status == 401, await response.text()
    assert (await consultation_of(video_runtime, session.request)).status == "waiting"
    assert await _count(video_runtime, InboundEvent) == 0
    assert await _count(video_runtime, AuditLog) == 1  # only the accept's own entry


async def test_a_replayed_event_has_one_effect(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient,
        livekit_api: LiveKitStandin, clock: ManualClock) -> None:
    session, client, room, customer = await _setup(video_runtime, video_config, make_client)
    body, headers = livekit_api.webhook("participant_joined", room, identity=customer,
                                        event_id="EV_replayed")
    outcomes = []
    for _ in range(3):
        response = await client.post(WEBHOOK_PATH, data=body, headers=headers)
        outcomes.append((await response.json())["outcome"])
        clock.advance(1)
    assert outcomes == ["processed", "duplicate", "duplicate"]
    consultation = await consultation_of(video_runtime, session.request)
    assert consultation.started_at == clock.now() - timedelta(seconds=3)
    assert sum("The session has started" in t for t in await session.sam_saw()) == 1
    async with video_runtime.sessions() as s:
        joined = (await s.scalars(select(AuditLog).where(
            AuditLog.action == "video.participant_joined"))).all()
    assert len(joined) == 1 and joined[0].details["started"] is True


async def test_departures_and_the_rooms_end_are_recorded(
        video_runtime: Runtime, video_config: Config, make_client: MakeClient,
        livekit_api: LiveKitStandin) -> None:
    session, client, room, customer = await _setup(video_runtime, video_config, make_client)
    for event in ("participant_joined", "participant_left", "room_finished"):
        response = await livekit_api.send_webhook(
            client, event, room, identity=customer if event != "room_finished" else "")
        assert (await response.json())["outcome"] == "processed"
    ignored = await livekit_api.send_webhook(client, "track_published", room,
                                             identity=customer)
    assert (await ignored.json())["outcome"] == "ignored"
    async with video_runtime.sessions() as s:
        rows = (await s.execute(select(AuditLog.actor, AuditLog.action, AuditLog.subject)
                                .where(AuditLog.actor == "livekit")
                                .order_by(AuditLog.id))).all()
    ref = session.request.ref
    assert [tuple(r) for r in rows] == [("livekit", "video.participant_joined", ref),
                                        ("livekit", "video.participant_left", ref),
                                        ("livekit", "video.room_finished", ref)]


async def test_without_livekit_there_is_no_webhook(make_client: MakeClient,
                                                   config: Config) -> None:
    client = await make_client(config)
    response = await client.post(WEBHOOK_PATH, data="{}")
    assert response.status in (404, 405)
