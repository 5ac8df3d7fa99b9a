"""Video rooms over LiveKit's real wire format (the stand-in), on both databases: made once at
the match, deleted at the end, retried through an outage without losing the match."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.clock import ManualClock
from core.models import Consultation, Message, SessionRequest
from core.room_sweep import rooms_due
from core.runtime import Runtime
from core.sweeps import run_sweeps
from core.video import read_join_token
from tests.core.test_consultations import Session, consultation_of, matched, received
from tests.core.test_dispatch import offer
from tests.factories import linked_mechanic, paid_request
from tests.helpers import Chat
from tests.standins.livekit_api import LiveKitStandin


async def join_links(runtime: Runtime, identity_id: int) -> list[str]:
    """The join-link buttons one chat was sent."""
    async with runtime.sessions() as s:
        bodies = (await s.scalars(select(Message.body).where(
            Message.identity_id == identity_id, Message.direction == "out")
            .order_by(Message.id))).all()
    urls = [(body.get("link") or {}).get("url", "") for body in bodies]
    return [url for url in urls if "/v/" in url]


async def test_a_matched_video_request_gets_one_room_and_each_side_its_own_link(
        video_runtime: Runtime, livekit_api: LiveKitStandin) -> None:
    session = await matched(video_runtime, "video15")
    consultation = await consultation_of(video_runtime, session.request)
    name = f"{session.request.ref}-{consultation.id}"
    assert (consultation.room_name, consultation.room_status) == (name, "ready")
    assert list(livekit_api.rooms) == [name]
    (create,) = livekit_api.methods("CreateRoom")
    assert create.encoding == "application/protobuf"  # the SDK's own Twirp client
    assert create.grants is not None and create.grants.room_create
    assert create.request["maxParticipants"] == 4  # two people and [video] max_observers
    assert create.request["emptyTimeout"] == 1860
    assert json.loads(create.request["metadata"]) == {
        "ref": session.request.ref, "tier": "video15", "consultation": consultation.id}
    # Each side: one link, naming them and this consultation.
    now = video_runtime.clock.now()
    customer_link, = await join_links(video_runtime, session.customer_identity)
    mechanic_link, = await join_links(video_runtime, session.mechanic.id)
    assert customer_link != mechanic_link
    for url, viewer in ((customer_link, f"c{consultation.customer_id}"),
                        (mechanic_link, f"m{consultation.mechanic_id}")):
        found = read_join_token(video_runtime.config, url.rsplit("/v/", 1)[1], now)
        assert found is not None
        grant, who = found
        assert (grant.subject, who.code) == (consultation.id, viewer)
    customer_saw = "\n".join(await session.customer_saw())
    assert "starting when you join the video call" in customer_saw
    assert "Your video room is ready" in customer_saw
    assert "Video is delayed" not in customer_saw


async def test_an_accept_delivered_twice_makes_one_room(
        video_runtime: Runtime, livekit_api: LiveKitStandin) -> None:
    from bot.flows import route
    from core.engine import Engine

    sam = await linked_mechanic(video_runtime, "Sam Lee", channel="telegram", address="501")
    request = await paid_request(video_runtime, "video15")
    await offer(video_runtime, request)
    bot = Engine(video_runtime, route)
    tap = Chat(bot, "telegram", "501")
    # Telegram delivers the same callback twice, then the mechanic taps again.
    await tap.send(action=f"accept:{request.ref}", provider_id="cb-1")
    await tap.send(action=f"accept:{request.ref}", provider_id="cb-1")
    await tap.send(action=f"accept:{request.ref}", provider_id="cb-2")
    # Two processes sweeping at once find nothing left to make.
    await asyncio.gather(rooms_due(video_runtime), rooms_due(video_runtime))
    await run_sweeps(video_runtime)
    assert len(livekit_api.methods("CreateRoom")) == 1 and len(livekit_api.rooms) == 1
    consultation = await consultation_of(video_runtime, request)
    assert consultation.room_status == "ready"
    assert len(await join_links(video_runtime, sam.id)) == 1


async def test_a_pending_room_made_by_two_processes_at_once_is_made_and_announced_once(
        video_runtime: Runtime, livekit_api: LiveKitStandin) -> None:
    livekit_api.outage = 1  # the match's own attempt fails: the room is left pending
    session = await matched(video_runtime, "video15")
    video_runtime.clock.advance(60)  # type: ignore[attr-defined]
    first, second = await asyncio.gather(rooms_due(video_runtime), rooms_due(video_runtime))
    assert first.opened + second.opened == 1
    assert livekit_api.created() == 1 and len(livekit_api.rooms) == 1
    assert len(await join_links(video_runtime, session.customer_identity)) == 1


async def _end_by_button(session: Session, clock: ManualClock) -> None:
    await session.customer.send("end")
    await session.customer.tap("Yes, end it")


async def _end_by_timer(session: Session, clock: ManualClock) -> None:
    clock.advance(minutes=46)
    await run_sweeps(session.runtime)


async def _end_by_emergency(session: Session, clock: ManualClock) -> None:
    await session.sam.send("emergency")


@pytest.mark.parametrize("ending", [_end_by_button, _end_by_timer, _end_by_emergency],
                         ids=["button", "timer", "emergency"])
async def test_the_room_is_deleted_when_the_session_ends(
        video_runtime: Runtime, livekit_api: LiveKitStandin, clock: ManualClock,
        ending: object) -> None:
    session = await matched(video_runtime, "video15")
    await session.customer.send("I'm at the car, joining the video now")
    consultation = await consultation_of(video_runtime, session.request)
    assert consultation.status == "live" and list(livekit_api.rooms) == [consultation.room_name]
    await ending(session, clock)  # type: ignore[operator]
    consultation = await consultation_of(video_runtime, session.request)
    assert consultation.status in ("completed", "cancelled")
    assert livekit_api.rooms == {}  # everyone in it is disconnected
    (delete,) = livekit_api.methods("DeleteRoom")
    assert delete.request == {"room": consultation.room_name}
    assert consultation.room_status == "closed"
    await run_sweeps(video_runtime)
    assert len(livekit_api.methods("DeleteRoom")) == 1  # not again


async def test_a_livekit_outage_keeps_the_match_tells_both_once_and_retries(
        video_runtime: Runtime, livekit_api: LiveKitStandin, clock: ManualClock) -> None:
    livekit_api.outage = 1000
    session = await matched(video_runtime, "video15")
    async with video_runtime.sessions() as s:
        request = await s.get(SessionRequest, session.request.id)
    assert request is not None and request.status == "accepted"
    consultation = await consultation_of(video_runtime, session.request)
    assert (consultation.status, consultation.room_status) == ("waiting", "pending")
    assert consultation.room_attempts == 1
    assert consultation.room_retry_at == clock.now() + timedelta(seconds=5)
    for _ in range(4):  # the sweep keeps trying, each time a little later
        clock.advance(300)
        assert (await run_sweeps(video_runtime)).rooms_failed == 1
    consultation = await consultation_of(video_runtime, session.request)
    assert consultation.room_attempts == 5 and consultation.room_status == "pending"
    for saw in (await session.customer_saw(), await session.sam_saw()):
        assert sum("Video is delayed" in t for t in saw) == 1, saw
    # Meanwhile the chat works, and the customer's first message starts the session.
    await session.customer.send("Hello? The video isn't here yet")
    assert "Customer: Hello? The video isn't here yet" in await session.sam_saw()
    livekit_api.outage = 0
    clock.advance(300)
    assert (await run_sweeps(video_runtime)).rooms_opened == 1
    consultation = await consultation_of(video_runtime, session.request)
    assert consultation.room_status == "ready" and consultation.status == "live"
    assert len(await join_links(video_runtime, session.customer_identity)) == 1
    assert any("Your session is under way" in t for t in await session.customer_saw())


async def test_a_deletion_that_fails_is_retried_by_the_sweep(
        video_runtime: Runtime, livekit_api: LiveKitStandin, clock: ManualClock) -> None:
    session = await matched(video_runtime, "video15")
    livekit_api.outage = 1
    await session.sam.send("end")
    consultation = await consultation_of(video_runtime, session.request)
    assert consultation.status == "completed" and consultation.room_status == "ready"
    assert livekit_api.rooms != {}
    stats = await run_sweeps(video_runtime)
    assert stats.rooms_closed == 1 and livekit_api.rooms == {}
    assert (await consultation_of(video_runtime, session.request)).room_status == "closed"


async def test_a_room_already_gone_counts_as_deleted(
        video_runtime: Runtime, livekit_api: LiveKitStandin) -> None:
    session = await matched(video_runtime, "video15")
    livekit_api.rooms.clear()  # LiveKit closed it itself (empty for too long)
    await session.sam.send("end")
    assert (await consultation_of(video_runtime, session.request)).room_status == "closed"


async def test_without_livekit_a_video_tier_runs_as_a_chat_session_and_says_so(
        runtime: Runtime) -> None:
    session = await matched(runtime, "video15")
    consultation = await consultation_of(runtime, session.request)
    assert consultation.room_name is None and consultation.room_status is None
    customer_saw = "\n".join(await session.customer_saw())
    assert "Video is not available right now, so your session is held here as a text " \
           "chat" in customer_saw
    assert "held as a text chat" in "\n".join(await session.sam_saw())
    assert await join_links(runtime, session.customer_identity) == []
    await session.customer.send("Hi, chat it is")
    assert (await consultation_of(runtime, session.request)).status == "live"
    assert (await run_sweeps(runtime)).rooms_opened == 0


async def test_a_chat_tier_gets_no_room(video_runtime: Runtime,
                                        livekit_api: LiveKitStandin) -> None:
    session = await matched(video_runtime, "chat10")
    assert (await consultation_of(video_runtime, session.request)).room_name is None
    assert livekit_api.calls == []
    assert not any("video" in t.lower() for t in await received(
        video_runtime, session.customer_identity))


async def test_consultations_of_other_tiers_and_states_are_not_touched(
        video_runtime: Runtime, livekit_api: LiveKitStandin) -> None:
    await matched(video_runtime, "video15")
    async with video_runtime.sessions() as s:
        rooms = (await s.scalars(select(Consultation.room_status))).all()
    assert rooms == ["ready"]
    assert (await rooms_due(video_runtime)).opened == 0


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_the_room_sweep_reads_through_indexes(
        video_runtime: Runtime, livekit_api: LiveKitStandin, clock: ManualClock,
        engine: AsyncEngine) -> None:
    from bot.flows import route
    from core.engine import Engine
    from tests.core.test_dispatch import tap_accept
    from tests.helpers import recording_executions, scans

    bot = Engine(video_runtime, route)

    async def match(n: int, plan: str) -> Chat:
        sam = await linked_mechanic(video_runtime, f"Mech{n}", channel="console",
                                    address=f"m{n}")
        request = await paid_request(video_runtime, plan, address=f"c{n}")
        await offer(video_runtime, request)
        await tap_accept(bot, sam, request.ref)
        return Chat(bot, "console", f"m{n}")

    # Sessions of every kind around: ended ones with their rooms closed, a chat one.
    for n in range(3):
        await (await match(n, "video15")).send("end")
    await match(3, "chat10")
    livekit_api.outage = 1
    pending = await match(4, "video15")
    clock.advance(60)
    with recording_executions(engine) as runs:
        opened = await rooms_due(video_runtime)
        await pending.send("end")
        await rooms_due(video_runtime)
    assert opened.opened == 1 and livekit_api.rooms == {}
    assert any("consultations" in sql and "room_status" in sql for sql, _ in runs)
    found = await scans(engine, runs)
    assert found == [], "\n".join(f"{line}: {sql}" for sql, line in found)
