"""Timeouts with an injected clock; two sweeps racing notify once."""

from __future__ import annotations

import asyncio

from sqlalchemy import select, update

from bot.flows import route
from core.clock import ManualClock
from core.engine import Engine
from core.messages import Inbound
from core.models import Admin, Consultation, Identity, Offer, OutboxItem, SessionRequest
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.core.test_dispatch import offer, status_of, tap_accept
from tests.factories import linked_mechanic, paid_request, sent_to

CUSTOMER = Identity(channel="console", address="cust")


async def add_admin(runtime: Runtime) -> None:
    async with runtime.sessions.begin() as s:
        s.add(Admin(email="ops@example.com", password_hash="x", notify_channel="telegram",
                    notify_address="999"))


async def admin_alerts(runtime: Runtime) -> list[str]:
    async with runtime.sessions() as s:
        rows = (await s.scalars(select(OutboxItem).where(OutboxItem.address == "999"))).all()
    return [r.payload["text"] for r in rows]


async def test_pending_for_five_minutes_becomes_unattended(runtime: Runtime,
                                                           clock: ManualClock) -> None:
    await add_admin(runtime)
    await linked_mechanic(runtime, "Sam")
    request = await paid_request(runtime)
    await offer(runtime, request)
    clock.advance(299)
    assert (await run_sweeps(runtime)).unattended == 0
    clock.advance(2)
    assert (await run_sweeps(runtime)).unattended == 1
    assert (await status_of(runtime, request))[0] == "unattended"
    assert len(await admin_alerts(runtime)) == 1
    assert request.ref in (await admin_alerts(runtime))[0]
    assert any("coordinator" in t for t in await sent_to(runtime, CUSTOMER))
    # An unattended request can still be accepted from the original offer.
    engine = Engine(runtime, route)
    sam = Identity(channel="web", address="mech-Sam")
    await tap_accept(engine, sam, request.ref)
    assert (await status_of(runtime, request))[0] == "accepted"


async def test_two_sweeps_racing_notify_each_person_once(runtime: Runtime, clock: ManualClock,
                                                         engine_factory: object) -> None:
    await add_admin(runtime)
    other = Runtime.build(runtime.config, engine_factory(),  # type: ignore[operator]
                          runtime.payments, runtime.texts, clock)
    requests = [await paid_request(runtime, address=f"c{i}") for i in range(5)]
    clock.advance(301)
    first, second = await asyncio.gather(run_sweeps(runtime), run_sweeps(other))
    assert first.unattended + second.unattended == 5
    assert len(await admin_alerts(runtime)) == 5
    clock.advance(7200)
    first, second = await asyncio.gather(run_sweeps(runtime), run_sweeps(other))
    assert first.expired + second.expired == 5
    for i, request in enumerate(requests):
        assert (await status_of(runtime, request))[0] == "expired"
        texts = await sent_to(runtime, Identity(channel="console", address=f"c{i}"))
        assert sum("refunded in full" in t for t in texts) == 1
        assert sum("coordinator" in t for t in texts) == 1


async def test_unmatched_for_two_hours_expires_and_offers_are_withdrawn(
        runtime: Runtime, clock: ManualClock) -> None:
    sam = await linked_mechanic(runtime, "Sam")
    request = await paid_request(runtime)
    await offer(runtime, request)
    clock.advance(7199)
    await run_sweeps(runtime)
    assert (await status_of(runtime, request))[0] == "unattended"
    clock.advance(2)
    assert (await run_sweeps(runtime)).expired == 1
    assert (await status_of(runtime, request))[0] == "expired"
    assert f"Request {request.ref} is no longer available." in await sent_to(runtime, sam)
    async with runtime.sessions() as s:
        assert (await s.scalars(select(Offer.status))).all() == ["withdrawn"]
    engine = Engine(runtime, route)
    assert "no longer available" in await tap_accept(engine, sam, request.ref)
    # The customer asking afterwards hears it expired.
    reply = await engine.receive(Inbound(channel="console", address="cust", text="status"))
    assert "no mechanic could take your Quick Chat request" in reply[0].text
    assert "refunded in full" in reply[0].text


async def test_no_show_cancels_frees_mechanic_and_offers_a_new_match(
        runtime: Runtime, clock: ManualClock) -> None:
    sam = await linked_mechanic(runtime, "Sam")
    ann = await linked_mechanic(runtime, "Ann")
    request = await paid_request(runtime)
    await offer(runtime, request)
    engine = Engine(runtime, route)
    await tap_accept(engine, sam, request.ref)
    clock.advance(1801)
    assert (await run_sweeps(runtime)).no_show == 1
    assert (await status_of(runtime, request))[0] == "cancelled"
    assert any("didn't show up" in t for t in await sent_to(runtime, sam))
    async with runtime.sessions() as s:
        item = (await s.scalars(select(OutboxItem).where(OutboxItem.address == "cust")
                                .order_by(OutboxItem.id.desc()))).first()
    assert item is not None and item.payload["buttons"] == [
        {"label": "Match me again", "payload": f"rematch:{request.ref}"}]
    # Sam is free again, and the customer's tap offers the request anew.
    reply = await engine.receive(Inbound(channel="console", address="cust",
                                         action=f"rematch:{request.ref}"))
    assert "another mechanic" in reply[0].text
    assert (await status_of(runtime, request)) == ("pending", None)
    assert sum(t.startswith(f"New request {request.ref}") for t in
               await sent_to(runtime, ann)) == 2


async def test_a_customer_who_writes_after_the_match_is_not_a_no_show(
        runtime: Runtime, clock: ManualClock) -> None:
    sam = await linked_mechanic(runtime, "Sam")
    request = await paid_request(runtime)
    await offer(runtime, request)
    engine = Engine(runtime, route)
    await tap_accept(engine, sam, request.ref)
    clock.advance(60)
    await engine.receive(Inbound(channel="console", address="cust", text="I'm here!"))
    clock.advance(1800)
    swept = await run_sweeps(runtime)
    # Not a no-show: the session went live with that message and ran its 30 minutes.
    assert (swept.no_show, swept.completed) == (0, 1)
    assert (await status_of(runtime, request))[0] == "completed"


async def test_another_customer_writing_does_not_excuse_a_no_show(
        runtime: Runtime, clock: ManualClock) -> None:
    # Whether the customer wrote since the match is asked of that customer's own messages:
    # someone else's chatter (here another matched customer's) must not keep a mechanic
    # waiting on a customer who never came.
    sam = await linked_mechanic(runtime, "Sam")
    ann = await linked_mechanic(runtime, "Ann")
    absent = await paid_request(runtime, address="absent")
    present = await paid_request(runtime, address="present")
    engine = Engine(runtime, route)
    await offer(runtime, absent)
    await tap_accept(engine, sam, absent.ref)
    await offer(runtime, present)
    await tap_accept(engine, ann, present.ref)
    clock.advance(60)
    await engine.receive(Inbound(channel="console", address="present", text="I'm here!"))
    clock.advance(1800)
    assert (await run_sweeps(runtime)).no_show == 1
    assert (await status_of(runtime, absent))[0] == "cancelled"
    assert (await status_of(runtime, present))[0] == "completed"  # its 30 minutes ran out
    assert any("didn't show up" in t for t in await sent_to(runtime, sam))
    assert not any("didn't show up" in t for t in await sent_to(runtime, ann))


async def test_orphaned_waiting_consultation_is_cancelled(runtime: Runtime,
                                                          clock: ManualClock) -> None:
    sam = await linked_mechanic(runtime, "Sam")
    request = await paid_request(runtime)
    async with runtime.sessions.begin() as s:
        s.add(Consultation(request_id=request.id, customer_id=request.customer_id,
                           mechanic_id=sam.mechanic_id, plan="chat10", status="waiting"))
        await s.execute(update(SessionRequest).where(SessionRequest.id == request.id)
                        .values(status="expired"))
    assert (await run_sweeps(runtime)).orphaned == 1
    async with runtime.sessions() as s:
        assert (await s.scalars(select(Consultation.status))).all() == ["cancelled"]
