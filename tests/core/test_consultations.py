"""Consultations through the engine, as the two people live them (both databases): the match,
the relay, the clock, the end, notes, rating, payout, emergencies and extensions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import event, select

from bot.flows import route
from core.clock import ManualClock
from core.engine import Engine
from core.models import (
    Checkout,
    Consultation,
    Extension,
    Identity,
    Message,
    Payout,
    Refund,
    SessionRequest,
)
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.core.test_dispatch import offer, tap_accept
from tests.factories import linked_mechanic, paid_request
from tests.helpers import Chat


async def received(runtime: Runtime, identity_id: int) -> list[str]:
    """What one chat was sent, oldest first (the transcript: console and widget chats are
    delivered from it)."""
    async with runtime.sessions() as s:
        return list((await s.scalars(select(Message.text).where(
            Message.identity_id == identity_id, Message.direction == "out")
            .order_by(Message.id))).all())


async def consultation_of(runtime: Runtime, request: SessionRequest) -> Consultation:
    async with runtime.sessions() as s:
        found = await s.scalar(select(Consultation).where(
            Consultation.request_id == request.id).order_by(Consultation.id.desc()))
    assert found is not None
    return found


class Session:
    """A matched customer and mechanic, both on the console channel."""

    def __init__(self, runtime: Runtime, engine: Engine, request: SessionRequest,
                 mechanic: Identity, customer_id: int) -> None:
        self.runtime, self.request, self.mechanic = runtime, request, mechanic
        self.customer = Chat(engine, "console", "cust")
        self.sam = Chat(engine, mechanic.channel, mechanic.address)
        self.customer_identity = customer_id

    async def customer_saw(self) -> list[str]:
        return await received(self.runtime, self.customer_identity)

    async def sam_saw(self) -> list[str]:
        return await received(self.runtime, self.mechanic.id)


async def matched(runtime: Runtime, plan: str = "chat10", name: str = "Sam Lee",
                  senior: bool = False) -> Session:
    sam = await linked_mechanic(runtime, name, senior=senior, channel="console",
                                address="sam-console")
    request = await paid_request(runtime, plan)
    await offer(runtime, request)
    engine = Engine(runtime, route)
    await tap_accept(engine, sam, request.ref)
    async with runtime.sessions() as s:
        customer = await s.scalar(select(Identity.id).where(Identity.address == "cust"))
    assert customer is not None
    return Session(runtime, engine, request, sam, customer)


async def test_the_match_opens_a_waiting_session_and_tells_both_how_to_start(
        runtime: Runtime) -> None:
    session = await matched(runtime)
    consultation = await consultation_of(runtime, session.request)
    assert consultation.status == "waiting"
    assert consultation.mechanic_identity_id == session.mechanic.id
    assert consultation.customer_identity_id == session.customer_identity
    customer_saw = await session.customer_saw()
    assert any("Sam, a certified mechanic" in t and "Write here to start" in t
               and "30 minutes" in t for t in customer_saw), customer_saw
    assert "Sam Lee" not in "\n".join(customer_saw)  # first name only
    details = [t for t in await session.sam_saw() if t.startswith("It's yours")]
    assert len(details) == 1 and "Grinding noise" in details[0]
    assert "starts when" in details[0]


async def test_both_sides_talk_through_the_relay_in_order_and_commands_stay_out(
        runtime: Runtime, clock: ManualClock) -> None:
    session = await matched(runtime)
    assert await session.customer.send("Hi, the noise starts when I brake hard") == []
    consultation = await consultation_of(runtime, session.request)
    assert consultation.status == "live" and consultation.started_at == clock.now()
    assert consultation.ends_at == clock.now() + timedelta(minutes=30)
    for n in range(3):
        await session.sam.send(f"Question {n}: front or rear?")
    await session.customer.send("Front, I think")
    sam_saw = await session.sam_saw()
    customer_saw = await session.customer_saw()
    assert "Customer: Hi, the noise starts when I brake hard" in sam_saw
    assert sam_saw.index("Customer: Front, I think") > sam_saw.index(
        "Customer: Hi, the noise starts when I brake hard")
    relayed = [t for t in customer_saw if t.startswith("Sam: ")]
    assert relayed == [f"Sam: Question {n}: front or rear?" for n in range(3)]
    assert sum("The session has started: 30 minutes" in t for t in customer_saw) == 1
    assert sum("The session has started" in t for t in sam_saw) == 1
    # Commands are answered, not relayed.
    (status,) = await session.customer.send("status")
    assert "30 minutes left" in status.text
    (helped,) = await session.sam.send("help")
    assert "emergency" in helped.text
    assert not any("status" in t or "help" in t for t in await session.sam_saw()
                   if t.startswith("Customer:"))
    # The transcript keeps both sides' messages under the consultation.
    async with runtime.sessions() as s:
        inbound = (await s.scalars(select(Message.text).where(
            Message.consultation_id == consultation.id, Message.direction == "in")
            .order_by(Message.id))).all()
    assert inbound[0] == "Hi, the noise starts when I brake hard" and len(inbound) == 5


async def test_a_relayed_line_looks_up_nobody_beyond_the_batch_lookup(
        runtime: Runtime) -> None:
    """The other side's chat is read with the sender, by the one lookup every batch makes: a
    relayed line costs no query of its own for either side (bench/relay.py measured two
    `SELECT identities ... WHERE id = ?` per line before, four times an intake frame's CPU)."""
    session = await matched(runtime)
    await session.customer.send("Hi, the noise starts when I brake hard")
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    # A listener on this test's own engine instance only.
    event.listen(runtime.engine.sync_engine, "before_cursor_execute", seen)
    try:
        await session.sam.send("Front or rear?")
        await session.customer.send("Front, I think")
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", seen)
    identity_reads = [s for s in statements
                      if "FROM identities" in s and "identities.id =" in s.replace("\n", " ")]
    assert identity_reads == []
    assert "Customer: Front, I think" in await session.sam_saw()
    assert "Sam: Front or rear?" in await session.customer_saw()


async def test_the_clock_warns_twice_ends_the_session_and_frees_the_mechanic(
        runtime: Runtime, clock: ManualClock, engine_factory: Callable[..., object]) -> None:
    other = Runtime.build(runtime.config, engine_factory(),  # type: ignore[arg-type]
                          runtime.payments, runtime.texts, runtime.clock)
    session = await matched(runtime)
    await session.customer.send("Hello")
    clock.advance(minutes=25, seconds=1)
    first, second = await asyncio.gather(run_sweeps(runtime), run_sweeps(other))
    assert first.warned + second.warned == 1
    clock.advance(minutes=4)
    first, second = await asyncio.gather(run_sweeps(runtime), run_sweeps(other))
    assert first.warned + second.warned == 1
    customer_saw = await session.customer_saw()
    assert sum("5 minutes left" in t for t in customer_saw) == 1
    assert sum("1 minute left" in t for t in customer_saw) == 1
    assert sum("5 minutes left" in t for t in await session.sam_saw()) == 1
    clock.advance(minutes=1)
    first, second = await asyncio.gather(run_sweeps(runtime), run_sweeps(other))
    assert first.completed + second.completed == 1
    consultation = await consultation_of(runtime, session.request)
    assert (consultation.status, consultation.end_reason) == ("completed", "time_up")
    assert any("Time's up" in t and "How was it?" in t for t in await session.customer_saw())
    assert any("write your notes" in t for t in await session.sam_saw())
    async with runtime.sessions() as s:
        request = await s.get(SessionRequest, session.request.id)
        payouts = (await s.scalars(select(Payout))).all()
    assert request is not None and request.status == "completed"
    assert [(p.amount_cents, p.fee_cents) for p in payouts] == [(800, 199)]
    # Free again: the next paid request is offered to Sam.
    nxt = await paid_request(runtime, address="next-customer")
    assert await offer(runtime, nxt) == 1


async def test_notes_go_to_the_customer_who_rates_and_reviews(runtime: Runtime) -> None:
    session = await matched(runtime)
    await session.customer.send("Hello")
    (confirm,) = await session.customer.send("end")
    assert "End the session now?" in confirm.text
    await session.customer.tap("Yes, end it")
    consultation = await consultation_of(runtime, session.request)
    assert (consultation.status, consultation.end_reason) == ("completed", "customer_ended")
    (thanks,) = await session.sam.send("Worn front pads; replace them within a week.")
    assert "sent to the customer" in thanks.text
    assert any(t.startswith("Notes from Sam:") and "Worn front pads" in t
               for t in await session.customer_saw())
    # The rating buttons came with the end's notice (not a reply to this chat's message).
    (rated,) = await session.customer.send(action=f"rate:{consultation.id}:4")
    assert "4/5" in rated.text
    (again,) = await session.customer.send("5")
    assert "changed to 5/5" in again.text
    (reviewed,) = await session.customer.send("Quick and clear, thanks!")
    assert "review is saved" in reviewed.text
    consultation = await consultation_of(runtime, session.request)
    assert (consultation.rating, consultation.review) == (5, "Quick and clear, thanks!")
    assert consultation.mechanic_notes == "Worn front pads; replace them within a week."
    (history,) = await session.customer.send("history")
    assert session.request.ref in history.text and "/s/" in history.text
    (earned,) = await session.sam.send("earnings")
    assert "1 completed session" in earned.text and "5.0/5" in earned.text


async def test_a_full_diagnostic_report_is_asked_for_in_three_parts(runtime: Runtime) -> None:
    session = await matched(runtime, "diagnostic", senior=True)
    await session.customer.send("Hello")
    await session.sam.send("end")
    assert "findings" in "\n".join(await session.sam_saw())
    assert "recommended repairs" in (await session.sam.send("Misfire on cylinder 3"))[0].text
    assert "cost range" in (await session.sam.send("1. Coil pack 2. Plugs"))[0].text
    assert "sent to the customer" in (await session.sam.send("$250 to $400"))[0].text
    notes = [t for t in await session.customer_saw() if t.startswith("Notes from Sam")]
    assert len(notes) == 1
    assert "Findings: Misfire on cylinder 3" in notes[0] and "Rough cost: $250 to $400" in notes[0]
    consultation = await consultation_of(runtime, session.request)
    assert consultation.report == {"findings": "Misfire on cylinder 3",
                                   "repairs": "1. Coil pack 2. Plugs", "cost": "$250 to $400"}


async def test_an_emergency_cancels_and_refunds_the_customer_in_full(runtime: Runtime) -> None:
    session = await matched(runtime)
    await session.customer.send("Hello")
    await session.sam.send("emergency")
    consultation = await consultation_of(runtime, session.request)
    assert (consultation.status, consultation.end_reason) == ("cancelled", "emergency")
    async with runtime.sessions() as s:
        request = await s.get(SessionRequest, session.request.id)
    assert request is not None and request.close_reason == "emergency"
    assert any("emergency" in t and "refunded in full" in t
               for t in await session.customer_saw())
    # paid_request has no checkout: a real payment is refunded by the sweep (billing tests).
    await session.customer.send("anyone there?")
    assert not any(t.startswith("Customer: anyone") for t in await session.sam_saw())


async def test_an_extension_paid_lengthens_the_session_and_the_payout(
        runtime: Runtime, clock: ManualClock) -> None:
    from billing.payments import mark_paid

    session = await matched(runtime)
    await session.customer.send("Hello")
    clock.advance(minutes=25, seconds=1)
    await run_sweeps(runtime)
    warning = [t for t in await session.customer_saw() if "5 minutes left" in t]
    assert warning and "Add 15 minutes" in warning[0]
    consultation = await consultation_of(runtime, session.request)
    (link,) = await session.customer.send(action=f"extend:{consultation.id}")
    assert link.link is not None and "/pay/co_" in link.link.url
    ref = link.link.url.rsplit("/", 1)[1]
    async with runtime.transaction() as uow:
        assert await mark_paid(uow, runtime, ref, clock.now()) is None
    consultation = await consultation_of(runtime, session.request)
    assert consultation.extra_minutes == 15
    assert consultation.ends_at is not None and consultation.started_at is not None
    assert consultation.ends_at - consultation.started_at == timedelta(minutes=45)
    assert any("15 more minutes added" in t for t in await session.sam_saw())
    clock.advance(minutes=10)  # past the plan's 30 minutes: still live
    assert (await run_sweeps(runtime)).completed == 0
    clock.advance(minutes=10)
    assert (await run_sweeps(runtime)).completed == 1
    async with runtime.sessions() as s:
        payout = await s.scalar(select(Payout))
        extension = await s.scalar(select(Extension))
        checkout = await s.scalar(select(Checkout).where(Checkout.ref == ref))
    assert extension is not None and extension.status == "paid"
    assert checkout is not None and checkout.status == "paid"
    assert payout is not None and (payout.amount_cents, payout.fee_cents) == (1599, 399)


async def test_an_extension_paid_after_the_end_is_refunded(runtime: Runtime,
                                                           clock: ManualClock) -> None:
    from billing.payments import mark_paid

    session = await matched(runtime)
    await session.customer.send("Hello")
    (link,) = await session.customer.send("more time")
    assert link.link is not None
    await session.sam.send("end")
    async with runtime.transaction() as uow:
        await mark_paid(uow, runtime, link.link.url.rsplit("/", 1)[1], clock.now())
    stats = await run_sweeps(runtime)
    async with runtime.sessions() as s:
        extension = await s.scalar(select(Extension))
        refund = await s.scalar(select(Refund))
    assert extension is not None and extension.status == "late"
    assert stats.refunded == 1 and refund is not None and refund.amount_cents == 999


async def test_a_stale_or_forged_session_button_changes_nothing(runtime: Runtime) -> None:
    session = await matched(runtime)
    await session.customer.send("Hello")
    consultation = await consultation_of(runtime, session.request)
    (refused,) = await session.customer.send(action=f"end:{consultation.id + 99}:confirm")
    assert "another session" in refused.text
    (refused,) = await session.sam.send(action=f"extend:{consultation.id}")
    assert "another session" in refused.text
    assert (await consultation_of(runtime, session.request)).status == "live"


async def test_an_emergency_refunds_the_real_payment_and_the_rating_shows_next_time(
        runtime: Runtime, clock: ManualClock) -> None:
    from billing.payments import mark_paid
    from tests.billing.helpers import awaiting_payment

    sam = await linked_mechanic(runtime, "Sam Lee", channel="console", address="sam-console")
    bought = await awaiting_payment(runtime, "chat10", channel="console", address="payer")
    async with runtime.transaction() as uow:
        request = await mark_paid(uow, runtime, bought.checkout.ref, clock.now())
    assert request is not None
    engine = Engine(runtime, route)
    await tap_accept(engine, sam, request.ref)
    await Chat(engine, "console", "payer").send("Hello?")
    await Chat(engine, "console", "sam-console").send("emergency")  # refunded right after
    assert (await run_sweeps(runtime)).refunded == 0  # ...so the sweep has nothing left
    async with runtime.sessions() as s:
        refund = await s.scalar(select(Refund))
        checkout = await s.get(Checkout, bought.checkout.id)
    assert refund is not None and refund.reason == "emergency"
    assert refund.amount_cents == 999 and checkout is not None and checkout.status == "refunded"

    # Sam's average rating shows to the next customer he is matched with.
    session = await matched(runtime, name="Sam Lee")
    await session.customer.send("Hi")
    await session.sam.send("end")
    consultation = await consultation_of(runtime, session.request)
    await session.customer.send(action=f"rate:{consultation.id}:4")
    nxt = await paid_request(runtime, address="third")
    await offer(runtime, nxt)
    await tap_accept(engine, session.mechanic, nxt.ref)
    async with runtime.sessions() as s:
        third = await s.scalar(select(Identity.id).where(Identity.address == "third"))
    assert any("rated 4.0/5 by 1 customer)" in t for t in await received(runtime, third))
