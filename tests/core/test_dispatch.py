"""Dispatch: offers, the accept race, the one-job rule, release."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.flows import route
from core import dispatch
from core.config import with_changes
from core.engine import Engine, Handled
from core.messages import Inbound
from core.models import (
    Admin,
    AuditLog,
    Availability,
    Consultation,
    Identity,
    Mechanic,
    Offer,
    OutboxItem,
    SessionRequest,
)
from core.runtime import Runtime
from tests.factories import linked_mechanic, paid_request, sent_to
from tests.helpers import recording_statements


async def offer(runtime: Runtime, request: SessionRequest) -> int:
    async with runtime.transaction() as uow:
        fresh = await uow.session.get(SessionRequest, request.id)
        assert fresh is not None
        return await dispatch.offer_request(uow, runtime, fresh, runtime.clock.now())


async def status_of(runtime: Runtime, request: SessionRequest) -> tuple[str, int | None]:
    async with runtime.sessions() as s:
        fresh = await s.get(SessionRequest, request.id)
        assert fresh is not None
        return fresh.status, fresh.mechanic_id


async def tap_accept(engine: Engine, mechanic: object, ref: str) -> str:
    replies = await engine.receive(Inbound(channel=mechanic.channel,  # type: ignore[attr-defined]
                                           address=mechanic.address,  # type: ignore[attr-defined]
                                           action=f"accept:{ref}"))
    return "\n".join(r.text for r in replies)


async def test_offer_goes_to_every_eligible_mechanic_with_an_accept_button(
        runtime: Runtime) -> None:
    sam = await linked_mechanic(runtime, "Sam")
    ann = await linked_mechanic(runtime, "Ann", senior=True)
    request = await paid_request(runtime, "video15")
    assert await offer(runtime, request) == 2
    for mechanic in (sam, ann):
        texts = await sent_to(runtime, mechanic)
        assert texts[-1].startswith(f"New request {request.ref}: Standard Video (45 min, "
                                    "you earn $24.00)")
        assert "Vehicle: 2015 Honda Civic" in texts[-1]
    async with runtime.sessions() as s:
        item = await s.scalar(select(OutboxItem).where(OutboxItem.address == sam.address)
                              .order_by(OutboxItem.id.desc()))
        offers = (await s.scalars(select(Offer))).all()
    assert item is not None and item.payload["buttons"] == [
        {"label": "Accept", "payload": f"accept:{request.ref}"}]
    assert {o.mechanic_id for o in offers} == {sam.mechanic_id, ann.mechanic_id}
    # Offering again sends nothing twice.
    assert await offer(runtime, request) == 0


async def test_only_eligible_mechanics_are_offered(runtime: Runtime) -> None:
    junior = await linked_mechanic(runtime, "Junior")
    senior = await linked_mechanic(runtime, "Senior", senior=True)
    away = await linked_mechanic(runtime, "Away", senior=True)
    inactive = await linked_mechanic(runtime, "Inactive", senior=True)
    off_hours = await linked_mechanic(runtime, "Night", senior=True)
    on_hours = await linked_mechanic(runtime, "Day", senior=True)
    unreachable = await linked_mechanic(runtime, "Blocked", senior=True)
    busy = await linked_mechanic(runtime, "Busy", senior=True)
    now = runtime.clock.now()  # a Monday, 12:00 UTC
    async with runtime.sessions.begin() as s:
        await s.execute(update(Mechanic).where(Mechanic.id == away.mechanic_id)
                        .values(is_available=False))
        await s.execute(update(Mechanic).where(Mechanic.id == inactive.mechanic_id)
                        .values(is_active=False))
        s.add(Availability(mechanic_id=off_hours.mechanic_id, weekday=now.weekday(),
                           start_minute=0, end_minute=60))
        s.add(Availability(mechanic_id=on_hours.mechanic_id, weekday=now.weekday(),
                           start_minute=11 * 60, end_minute=13 * 60))
        blocked = await s.get(type(unreachable), unreachable.id)
        assert blocked is not None
        blocked.reachable = False
    job = await paid_request(runtime, "chat10", address="other")
    async with runtime.sessions.begin() as s:
        await s.execute(update(SessionRequest).where(SessionRequest.id == job.id)
                        .values(status="accepted", mechanic_id=busy.mechanic_id))
    request = await paid_request(runtime, "diagnostic")
    await offer(runtime, request)
    async with runtime.sessions() as s:
        offered = set((await s.scalars(select(Offer.mechanic_id).where(
            Offer.request_id == request.id))).all())
    assert offered == {senior.mechanic_id, on_hours.mechanic_id}
    assert junior.mechanic_id not in offered


async def test_no_eligible_mechanic_sends_request_to_admin_queue(runtime: Runtime) -> None:
    async with runtime.sessions.begin() as s:
        s.add(Admin(email="ops@example.com", password_hash="x", notify_channel="telegram",
                    notify_address="999"))
    request = await paid_request(runtime, "diagnostic")
    assert await offer(runtime, request) == 0
    assert (await status_of(runtime, request))[0] == "unattended"
    async with runtime.sessions() as s:
        alerts = (await s.scalars(select(OutboxItem).where(OutboxItem.address == "999"))).all()
    assert len(alerts) == 1 and request.ref in alerts[0].payload["text"]


async def tap(engine: Engine, mechanic: object, ref: str) -> Handled:
    return await engine.handle(Inbound(channel=mechanic.channel,  # type: ignore[attr-defined]
                                       address=mechanic.address,  # type: ignore[attr-defined]
                                       action=f"accept:{ref}"))


def taken_notices(texts: list[str], ref: str) -> int:
    """How often one person was told this request went to someone else."""
    return sum(f"{ref} was taken by another mechanic" in t
               or f"{ref} was already taken by another mechanic" in t for t in texts)


async def test_fifty_mechanics_tap_accept_at_once_exactly_one_wins(runtime: Runtime) -> None:
    # All fifty in one wave (the default offers the best 20 first).
    runtime.config = with_changes(runtime.config, dispatch={"wave_size": 50})
    mechanics = [await linked_mechanic(runtime, f"M{i}") for i in range(50)]
    request = await paid_request(runtime, "chat10")
    await offer(runtime, request)
    engine = Engine(runtime, route)
    answers = await asyncio.gather(*(tap(engine, m, request.ref) for m in mechanics))
    assert sorted(a.toast or "" for a in answers) == ["Accepted"] + ["Already taken"] * 49
    status, winner = await status_of(runtime, request)
    assert status == "accepted" and winner is not None
    winner_identity = next(m for m in mechanics if m.mechanic_id == winner)
    texts = await sent_to(runtime, winner_identity)
    assert any(t.startswith(f"It's yours: {request.ref}") for t in texts)
    # Every loser's offer was closed with "taken"; the customer heard once.
    async with runtime.sessions() as s:
        offers = (await s.scalars(select(Offer).where(Offer.request_id == request.id))).all()
    assert sorted(o.status for o in offers).count("taken") == 49
    # Each loser is told exactly once: by the closing edit of their offer if it was closed in
    # the transaction that answered their tap, else by a reply (a later batch).
    for loser in (m for m in mechanics if m.mechanic_id != winner):
        assert taken_notices(await sent_to(runtime, loser), request.ref) == 1
    customer_texts = await sent_to(runtime, type(mechanics[0])(channel="console", address="cust"))
    assert sum("accepted your Quick Chat request" in t for t in customer_texts) == 1


async def test_a_loser_is_answered_by_the_closing_notice_on_its_way_not_told_twice(
        runtime: Runtime) -> None:
    # Two engines: Ann's tap is handled after Sam's transaction committed. The notice closing
    # her offer is still in the outbox: with the toast, it is her answer.
    sam, ann = [await linked_mechanic(runtime, name, channel="telegram", address=address)
                for name, address in (("Sam", "501"), ("Ann", "502"))]
    request = await paid_request(runtime, "chat10")
    await offer(runtime, request)
    won = await tap(Engine(runtime, route), sam, request.ref)
    lost = await tap(Engine(runtime, route), ann, request.ref)
    assert (won.toast, lost.toast) == ("Accepted", "Already taken")
    assert lost.replies == []
    told = await sent_to(runtime, ann)
    assert told[-1] == f"Request {request.ref} was taken by another mechanic."
    assert taken_notices(told, request.ref) == 1
    # Delivered, and Ann (on a stale screen, or typing ACCEPT) taps again: now a reply.
    async with runtime.sessions.begin() as s:
        await s.execute(update(OutboxItem).values(status="sent"))
    late = await tap(Engine(runtime, route), ann, request.ref)
    assert late.toast == "Already taken"
    assert [r.text for r in late.replies] == [
        f"Sorry, {request.ref} was already taken by another mechanic."]

    # One batch, on the web (whose notices are delivered as they commit): the loser's tap,
    # handled in the winner's transaction, is answered by the closing edit alone.
    bob, eve = [await linked_mechanic(runtime, name) for name in ("Bob", "Eve")]
    again = await paid_request(runtime, "chat10", address="c2")
    await offer(runtime, again)
    engine = Engine(runtime, route)
    first, second = await asyncio.gather(*(tap(engine, m, again.ref) for m in (bob, eve)))
    assert (first.toast, second.toast) == ("Accepted", "Already taken")
    assert second.replies == []
    told = await sent_to(runtime, eve)
    assert told[-1] == f"Request {again.ref} was taken by another mechanic."
    assert taken_notices(told, again.ref) == 1


async def test_accept_race_across_two_app_instances(engine_factory: object, runtime: Runtime,
                                                    engine: AsyncEngine) -> None:
    other = Runtime.build(runtime.config, engine_factory(),  # type: ignore[operator]
                          runtime.payments, runtime.texts, runtime.clock)
    mechanics = [await linked_mechanic(runtime, f"X{i}", channel="telegram",
                                       address=str(700 + i)) for i in range(20)]
    request = await paid_request(runtime, "chat10")
    await offer(runtime, request)
    first, second = Engine(runtime, route), Engine(other, route)
    answers = await asyncio.gather(*(
        tap(first if i % 2 else second, m, request.ref) for i, m in enumerate(mechanics)))
    assert sorted(a.toast or "" for a in answers) == ["Accepted"] + ["Already taken"] * 19
    status, winner = await status_of(runtime, request)
    assert status == "accepted"
    # Losers of either process are told once: their offer's closing notice, still queued.
    for loser in (m for m in mechanics if m.mechanic_id != winner):
        assert taken_notices(await sent_to(runtime, loser), request.ref) == 1


async def test_a_mechanic_holding_a_job_cannot_accept_another(runtime: Runtime) -> None:
    sam = await linked_mechanic(runtime, "Sam")
    first = await paid_request(runtime, address="c1")
    second = await paid_request(runtime, address="c2")
    await offer(runtime, first)
    await offer(runtime, second)
    engine = Engine(runtime, route)
    await tap_accept(engine, sam, first.ref)
    reply = await tap_accept(engine, sam, second.ref)
    assert "already have a request in progress" in reply
    assert await status_of(runtime, second) == ("pending", None)
    assert "already yours" in await tap_accept(engine, sam, first.ref)


async def test_one_mechanic_tapping_two_offers_at_once_on_two_servers_wins_one(
        engine_factory: object, runtime: Runtime) -> None:
    # The same mechanic on two chats, answered by two processes: the read-check can pass in
    # both; the conditional UPDATE and the partial unique index leave exactly one job.
    other = Runtime.build(runtime.config, engine_factory(),  # type: ignore[operator]
                          runtime.payments, runtime.texts, runtime.clock)
    sam = await linked_mechanic(runtime, "Sam")
    async with runtime.sessions.begin() as s:
        s.add(Identity(channel="console", address="sam-laptop", mechanic_id=sam.mechanic_id))
    second_chat = Identity(channel="console", address="sam-laptop")
    engines = Engine(runtime, route), Engine(other, route)
    for round_no in range(5):
        first = await paid_request(runtime, address=f"a{round_no}")
        second = await paid_request(runtime, address=f"b{round_no}")
        await offer(runtime, first)
        await offer(runtime, second)
        await asyncio.gather(tap_accept(engines[0], sam, first.ref),
                             tap_accept(engines[1], second_chat, second.ref))
        statuses = sorted([(await status_of(runtime, first))[0],
                           (await status_of(runtime, second))[0]])
        assert statuses == ["accepted", "pending"]
        async with runtime.sessions.begin() as s:  # the session done: Sam is free again
            await s.execute(update(SessionRequest).where(SessionRequest.status == "accepted")
                            .values(status="completed"))
            await s.execute(update(Consultation).where(Consultation.status == "waiting")
                            .values(status="completed"))


@pytest.mark.parametrize("who", ["customer", "stranger", "unoffered mechanic"])
async def test_accept_payload_from_someone_not_offered_is_refused(runtime: Runtime,
                                                                  who: str) -> None:
    sam = await linked_mechanic(runtime, "Sam")
    request = await paid_request(runtime)
    await offer(runtime, request)
    engine = Engine(runtime, route)
    if who == "customer":
        reply = await engine.receive(Inbound(channel="console", address="cust",
                                             action=f"accept:{request.ref}"))
        assert "for mechanics only" in reply[0].text
    elif who == "stranger":
        reply = await engine.receive(Inbound(channel="web", address="v_forger",
                                             action=f"accept:{request.ref}"))
        assert "for mechanics only" in reply[0].text
    else:
        late = await linked_mechanic(runtime, "Late")
        assert "wasn't offered to you" in await tap_accept(engine, late, request.ref)
    assert await status_of(runtime, request) == ("pending", None)
    # Sam's offer is untouched: he can still take it.
    assert "It's yours" not in "\n".join(await sent_to(runtime, sam))
    await tap_accept(engine, sam, request.ref)
    assert await status_of(runtime, request) == ("accepted", sam.mechanic_id)


async def test_release_offers_the_request_again_to_others(runtime: Runtime) -> None:
    sam = await linked_mechanic(runtime, "Sam")
    ann = await linked_mechanic(runtime, "Ann")
    request = await paid_request(runtime)
    await offer(runtime, request)
    engine = Engine(runtime, route)
    await tap_accept(engine, sam, request.ref)
    runtime.clock.advance(60)  # type: ignore[attr-defined]
    reply = await engine.receive(Inbound(channel=sam.channel, address=sam.address,
                                         text="release"))
    assert f"You released {request.ref}" in reply[0].text
    assert await status_of(runtime, request) == ("pending", None)
    ann_texts = await sent_to(runtime, ann)
    assert sum(t.startswith(f"New request {request.ref}") for t in ann_texts) == 2
    assert sum(t.startswith(f"New request {request.ref}") for t in
               await sent_to(runtime, sam)) == 1
    await tap_accept(engine, ann, request.ref)
    assert any(t.startswith(f"It's yours: {request.ref}") for t in await sent_to(runtime, ann))
    assert await status_of(runtime, request) == ("accepted", ann.mechanic_id)
    async with runtime.sessions() as s:
        actions = (await s.scalars(select(AuditLog.action).order_by(AuditLog.id))).all()
    assert actions == ["accept", "release", "accept"]


async def test_mechanic_availability_commands(runtime: Runtime) -> None:
    sam = await linked_mechanic(runtime, "Sam")
    engine = Engine(runtime, route)
    say = lambda t: engine.receive(Inbound(channel=sam.channel, address=sam.address,  # noqa: E731
                                           text=t))
    assert "You're away" in (await say("away"))[0].text
    request = await paid_request(runtime)
    await offer(runtime, request)
    assert (await status_of(runtime, request))[0] == "unattended"
    assert "You're available" in (await say("available"))[0].text
    assert "Sam: available." in (await say("status"))[0].text
    later = await paid_request(runtime, address="c2", paid_at=runtime.clock.now()
                               + timedelta(seconds=1))
    assert await offer(runtime, later) == 1


async def test_mechanic_sets_working_hours_and_timezone_in_chat(runtime: Runtime) -> None:
    sam = await linked_mechanic(runtime, "Sam")
    engine = Engine(runtime, route)

    async def say(text: str) -> str:
        replies = await engine.receive(Inbound(channel=sam.channel, address=sam.address,
                                               text=text))
        return replies[0].text

    assert "no set hours" in await say("hours")
    reply = await say("hours mon-fri 9-17; sat 10:30-14")
    assert "Mon 09:00-17:00" in reply and "Fri 09:00-17:00" in reply
    assert "Sat 10:30-14:00" in reply and "Sun" not in reply
    assert "I don't know the day 'funday'" in await say("hours funday 9-17")
    assert "start must be before the end" in await say("hours mon 17-9")
    assert "not a timezone" in await say("timezone Mars/Olympus")
    assert "(America/New_York)" in await say("timezone America/New_York")
    # Monday 12:00 UTC is 07:00 in New York: outside 9-17 there, so no offer.
    request = await paid_request(runtime)
    assert await offer(runtime, request) == 0
    runtime.clock.advance(hours=3)  # type: ignore[attr-defined]
    later = await paid_request(runtime, address="c2")
    assert await offer(runtime, later) == 1
    assert "no set hours" in await say("hours clear")


async def test_join_code_typed_from_any_chat_links_the_mechanic(runtime: Runtime) -> None:
    from core.mechanics import invite_mechanic

    async with runtime.sessions.begin() as s:
        invitation = await invite_mechanic(s, runtime.config, "Ann", runtime.clock.now())
    engine = Engine(runtime, route)
    await engine.receive(Inbound(channel="sms", address="+15550100",
                                 text=f"join {invitation.invite_code.lower()}"))
    texts = await sent_to(runtime, Identity(channel="sms", address="+15550100"))
    assert texts[-1].startswith("Welcome, Ann!")
    again = await engine.receive(Inbound(channel="sms", address="+15550199",
                                         text=f"JOIN {invitation.invite_code}"))
    assert "isn't valid or was already used" in again[0].text
    status = await engine.receive(Inbound(channel="sms", address="+15550100", text="status"))
    assert status[0].text.startswith("Ann: available")


async def test_offering_to_many_mechanics_takes_as_many_statements_as_offering_to_a_few(
        runtime: Runtime, engine: AsyncEngine) -> None:
    # A paid request should reach 1,000 mechanics about as soon as it reaches 5: the offers
    # go out in multi-row statements, not a round trip (or five) per mechanic. One wave here.
    runtime.config = with_changes(runtime.config, dispatch={"wave_size": 1000})
    counts = []
    for round_no, how_many in enumerate((5, 40)):
        async with runtime.sessions.begin() as s:
            await s.execute(update(Mechanic).values(is_active=False))
        mechanics = [await linked_mechanic(runtime, f"M{round_no}.{i}") for i in range(how_many)]
        request = await paid_request(runtime, address=f"cust{round_no}")
        with recording_statements(engine) as statements:
            assert await offer(runtime, request) == how_many
        counts.append(len(statements))
        async with runtime.sessions() as s:
            offered = (await s.scalars(select(Offer).where(Offer.request_id == request.id))).all()
        assert {o.mechanic_id for o in offered} == {m.mechanic_id for m in mechanics}
        assert all(o.outbox_id is not None and o.status == "offered" for o in offered)
        for mechanic in mechanics[:3]:
            assert (await sent_to(runtime, mechanic))[-1].startswith(f"New request {request.ref}")
    # No row at a time on either database now; SQLite keeps a margin of one per mechanic.
    per_extra_mechanic = 1 if engine.dialect.name == "sqlite" else 0
    assert counts[1] - counts[0] <= per_extra_mechanic * 35, counts


async def test_closing_many_offers_writes_their_edits_linked_in_statements_of_one_shape(
        runtime: Runtime, engine: AsyncEngine) -> None:
    # The winner's tap edits every other offer; each edit's outbox row is written pointing at
    # its transcript row (messages first, then outbox rows: no UPDATE to link them), in
    # statements whose SQL does not depend on how many there are (so the database prepares
    # them once, instead of parsing a new statement for each count). One wave here.
    runtime.config = with_changes(runtime.config, dispatch={"wave_size": 1000})
    links, bulk = [], []
    for round_no, how_many in enumerate((3, 30)):
        async with runtime.sessions.begin() as s:
            await s.execute(update(Mechanic).values(is_active=False))
        mechanics = [await linked_mechanic(runtime, f"L{round_no}.{i}") for i in range(how_many)]
        request = await paid_request(runtime, address=f"cust{round_no}")
        await offer(runtime, request)
        with recording_statements(engine) as statements:
            said = await tap_accept(Engine(runtime, route), mechanics[0], request.ref)
        assert said == ""  # the winner's details come as their own message
        links.append([s for s in statements if s.startswith("UPDATE outbox SET message_id")])
        bulk.append({s for s in statements
                     if s.startswith(('INSERT INTO "messages"', 'INSERT INTO "outbox"'))})
        async with runtime.sessions() as s:
            edits = (await s.scalars(select(OutboxItem).where(
                OutboxItem.dedupe_key.like(f"offer-closed:{request.id}:%")))).all()
        assert len(edits) == how_many and all(e.message_id is not None for e in edits)
        for mechanic in mechanics[1:3]:
            assert f"Request {request.ref} was taken by another mechanic." in await sent_to(
                runtime, mechanic)
    assert links == [[], []], links
    if engine.dialect.name == "postgresql":
        # So are the multi-row INSERTs of transcript and outbox rows (arrays, not VALUES).
        assert bulk[0] and bulk[0] == bulk[1], bulk
