"""The customer intake through the engine, as a customer experiences it."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.flows import route
from core.engine import Engine
from core.messages import Inbound
from core.models import Checkout, Conversation, Customer, Intake, Message, OutboxItem
from core.runtime import Runtime
from tests.helpers import Chat, joined, recording_statements

GOOD_VIN = "1HGCM82633A004352"


@pytest.fixture
def engine_(runtime: Runtime) -> Engine:
    return Engine(runtime, route)


@pytest.fixture
def chat(engine_: Engine) -> Chat:
    return Chat(engine_)


async def intake_of(runtime: Runtime) -> Intake:
    async with runtime.sessions() as s:
        intake = await s.scalar(select(Intake).order_by(Intake.id.desc()).limit(1))
        assert intake is not None
        return intake


async def test_full_intake_with_vin_ends_with_payment_link(chat: Chat, runtime: Runtime) -> None:
    greeting = joined(await chat.send("hi"))
    assert "Which kind of help" in greeting and "$" not in greeting  # the tiers are buttons
    # No LiveKit here: said before anyone picks a video tier.
    assert "video tiers are held as a text chat" in greeting
    assert [b.label for b in chat.received[-1].buttons][:2] == [
        "Quick Chat · 30 min · $9.99", "Standard Video · 45 min · $29.99"]
    assert [b.payload for b in chat.received[-1].buttons] == [
        "plan:chat10", "plan:video15", "plan:diagnostic"]
    assert "first name" in joined(await chat.tap("Standard Video"))
    assert "VIN" in joined(await chat.send("Dana"))
    reply = joined(await chat.send(GOOD_VIN))
    assert "2003 Honda" in reply and "odometer" in reply
    assert "problem" in joined(await chat.send("84,000 miles"))
    assert "Photos" in joined(await chat.send("Grinding noise from the front left wheel "
                                              "when braking"))
    summary = joined(await chat.tap("Skip"))
    # No LiveKit in this configuration: said before payment (tests/rooms covers video on).
    assert "Tier: Standard Video ($29.99, 45 min, held as a text chat: video is not " \
           "available right now)" in summary
    assert f"Vehicle: 2003 Honda (VIN {GOOD_VIN})" in summary
    assert "Mileage: 84,000 mi" in summary
    assert "Problem: Grinding noise from the front left wheel when braking" in summary
    await chat.tap("Confirm and pay")  # the terms, agreed to before the link
    replies = await chat.tap("I agree")
    assert "Pay $29.99" in replies[-1].link.label  # type: ignore[union-attr]
    url = replies[-1].link.url  # type: ignore[union-attr]
    assert url.startswith("http://127.0.0.1:8080/pay/co_")

    intake = await intake_of(runtime)
    assert (intake.status, intake.plan, intake.vin, intake.vehicle_year, intake.vehicle_make,
            intake.odometer, intake.odometer_unit) == (
        "awaiting_payment", "video15", GOOD_VIN, 2003, "Honda", 84000, "mi")
    async with runtime.sessions() as s:
        checkout = await s.scalar(select(Checkout).where(Checkout.intake_id == intake.id))
    assert checkout is not None
    assert (checkout.amount_cents, checkout.currency, checkout.status) == (2999, "usd", "open")
    assert url.endswith(checkout.ref)

    # While waiting, any message brings the same link back, not a second checkout.
    again = await chat.send("hello?")
    assert again[-1].link is not None and again[-1].link.url == url


@pytest.mark.parametrize(("said", "plan"), [
    ("2", "video15"), ("video", "video15"), ("Standard", "video15"), ("standard video", "video15"),
    ("1", "chat10"), ("quick chat", "chat10"), ("3", "diagnostic"), ("Full diagnostic",
                                                                      "diagnostic"),
])
async def test_free_text_picks_the_tier(chat: Chat, runtime: Runtime, said: str,
                                        plan: str) -> None:
    await chat.send("hi")
    reply = joined(await chat.send(said))
    assert "first name" in reply
    assert (await intake_of(runtime)).plan == plan


async def test_unclear_tier_is_asked_again_with_choices(chat: Chat, runtime: Runtime) -> None:
    await chat.send("hi")
    reply = joined(await chat.send("the cheap one maybe"))
    assert "didn't catch" in reply and len(chat.received[-1].buttons) == 3
    assert (await intake_of(runtime)).plan is None


async def test_year_make_model_without_vin(chat: Chat, runtime: Runtime) -> None:
    await chat.send("hi")
    await chat.send("1")
    await chat.send("Dana")
    assert "year, make and model" in joined(await chat.tap("No VIN"))
    assert "all three" in joined(await chat.send("Honda"))
    assert "odometer" in joined(await chat.send("2015 Honda Civic"))
    intake = await intake_of(runtime)
    assert (intake.vehicle_year, intake.vehicle_make, intake.vehicle_model, intake.vin) == (
        2015, "Honda", "Civic", None)


@pytest.mark.parametrize(("vin", "expected"), [
    ("1HGCM82633A00435", "exactly 17 characters; this one has 16"),
    ("1HGCM82633A0043521", "exactly 17 characters; this one has 18"),
    ("1HGCM82633AOO4352", "never contains the letters I, O or Q (this one has O)"),
    ("1HGCM82633A0Q4352", "(this one has Q)"),
    ("1HGCM82643A004352", "check digit (9th character) is 4 but should be"),
])
async def test_invalid_vin_gets_a_specific_reply_and_a_way_out(chat: Chat, vin: str,
                                                               expected: str) -> None:
    await chat.send("hi")
    await chat.send("1")
    await chat.send("Dana")
    reply = await chat.send(vin)
    assert "doesn't look right" in reply[-1].text
    assert expected in reply[-1].text
    assert [b.payload for b in reply[-1].buttons] == ["vehicle:no_vin"]
    # Retrying with a good VIN works.
    assert "odometer" in joined(await chat.send(GOOD_VIN))


async def test_problem_must_be_a_real_description(chat: Chat, runtime: Runtime) -> None:
    await chat.send("hi")
    await chat.send("1")
    await chat.send("Dana")
    await chat.send(GOOD_VIN)
    await chat.tap("Skip")
    assert "say a bit more" in joined(await chat.send("brakes"))
    assert (await intake_of(runtime)).problem is None
    await chat.send("The brakes squeal loudly every morning")
    assert (await intake_of(runtime)).problem == "The brakes squeal loudly every morning"


async def _to_summary(chat: Chat) -> None:
    await chat.send("hi")
    await chat.send("2")
    await chat.send("Dana")
    await chat.send(GOOD_VIN)
    await chat.send("130k km")
    await chat.send("Engine stalls at idle after it warms up")
    await chat.send("skip")


async def test_summary_fields_can_be_corrected_one_by_one(chat: Chat, runtime: Runtime) -> None:
    await _to_summary(chat)
    assert "Mileage: 130,000 km" in chat.last
    await chat.tap("Change problem")
    summary = joined(await chat.send("Engine stalls at idle and the battery light flickers"))
    assert "Problem: Engine stalls at idle and the battery light flickers" in summary
    await chat.tap("Change tier")
    summary = joined(await chat.send("quick chat"))
    assert "Tier: Quick Chat ($9.99, 30 min)" in summary
    await chat.tap("Change vehicle")
    summary = joined(await chat.send("2019 Toyota RAV4 Hybrid"))
    assert "Vehicle: 2019 Toyota RAV4 Hybrid" in summary
    await chat.tap("Change mileage")
    assert "Mileage: not given" in joined(await chat.tap("Skip"))
    await chat.send("confirm")
    await chat.send("agree")
    intake = await intake_of(runtime)
    assert (intake.status, intake.plan, intake.vehicle_model) == (
        "awaiting_payment", "chat10", "RAV4 Hybrid")


async def test_help_and_status_at_any_step(chat: Chat) -> None:
    await chat.send("hi")
    await chat.send("1")
    await chat.send("Dana")
    help_reply = joined(await chat.send("help"))
    assert '"cancel request"' in help_reply and "VIN" in help_reply  # and the question again
    assert "we're at: your vehicle" in joined(await chat.send("status"))


async def test_cancel_before_payment_drops_intake_and_link(chat: Chat, runtime: Runtime) -> None:
    await _to_summary(chat)
    await chat.tap("Confirm and pay")
    await chat.tap("I agree")
    assert "nothing was charged" in joined(await chat.send("cancel"))
    intake = await intake_of(runtime)
    assert intake.status == "cancelled"
    async with runtime.sessions() as s:
        statuses = (await s.scalars(select(Checkout.status))).all()
    assert statuses == ["expired"]
    assert "nothing to cancel" in joined(await chat.send("cancel"))


async def test_start_over_begins_a_fresh_intake(chat: Chat, runtime: Runtime) -> None:
    await chat.send("hi")
    await chat.send("2")
    first = await intake_of(runtime)
    reply = joined(await chat.send("start over"))
    assert "start again" in reply and len(chat.received[-1].buttons) == 3
    second = await intake_of(runtime)
    assert second.id != first.id and second.plan is None
    async with runtime.sessions() as s:
        assert (await s.get(Intake, first.id)).status == "cancelled"  # type: ignore[union-attr]


async def test_hostile_input_is_stored_as_text(chat: Chat, runtime: Runtime) -> None:
    await chat.send("hi")
    await chat.send("1")
    await chat.send("Dana")
    await chat.send(GOOD_VIN)
    await chat.tap("Skip")
    hostile = ("<script>alert('x')</script> brakes \x00\x07 fail \u202e on hills "
               + "x" * 10_000)
    await chat.send(hostile)
    intake = await intake_of(runtime)
    cleaned = hostile.replace("\x00", "").replace("\x07", "")
    assert intake.problem == cleaned
    async with runtime.sessions() as s:
        stored = (await s.scalars(select(Message.text).where(Message.direction == "in")
                                  .order_by(Message.id.desc()).limit(1))).one()
    assert stored == cleaned
    assert "Photos" in chat.last


async def test_lone_surrogates_are_stored_replaced_not_failed(engine_: Engine,
                                                              runtime: Runtime) -> None:
    # Python's json module decodes "\ud800" to a lone surrogate (a Telegram update's text or
    # a sender's name could carry one); no UTF-8 column can hold it, so unreplaced it failed
    # the message (the sender got no reply). It is stored as U+FFFD.
    await engine_.receive(Inbound(channel="console", address="surrogate", text="hi",
                                  display_name="Ann \ud83d"))
    replies = await engine_.receive(Inbound(channel="console", address="surrogate",
                                            text="plan \udc00 1 \U0001f697"))
    assert replies
    async with runtime.sessions() as s:
        stored = (await s.scalars(select(Message.text).where(Message.direction == "in")
                                  .order_by(Message.id.desc()).limit(1))).one()
        names = (await s.scalars(select(Customer.display_name))).all()
    assert stored == "plan \ufffd 1 \U0001f697"
    assert names == ["Ann \ufffd"]


async def test_messages_from_one_person_are_handled_in_order(engine_: Engine,
                                                             runtime: Runtime) -> None:
    chat = Chat(engine_, address="fast-typer")
    await chat.send("hi")
    # Sent at the same moment: the plan, the VIN, the mileage, the problem, "skip".
    answers = ["2", "Dana", GOOD_VIN, "90000", "Car pulls to the right when braking hard",
               "skip"]
    await asyncio.gather(*(chat.send(a) for a in answers))
    async with runtime.sessions() as s:
        inbound = (await s.scalars(select(Message.text).where(Message.direction == "in")
                                   .order_by(Message.id))).all()
        conversation = (await s.scalars(select(Conversation))).one()
    assert inbound[1:] == answers
    assert conversation.step == "summary"


async def test_duplicate_provider_message_is_processed_once(chat: Chat,
                                                            runtime: Runtime) -> None:
    await chat.send("hi", provider_id="m1")
    assert await chat.send("hi", provider_id="m1") == []
    async with runtime.sessions() as s:
        assert len((await s.scalars(select(Message).where(Message.direction == "in"))).all()) == 1


async def test_conversation_survives_a_restart(runtime: Runtime) -> None:
    await Chat(Engine(runtime, route), address="p").send("hi")
    await Chat(Engine(runtime, route), address="p").send("2")
    await Chat(Engine(runtime, route), address="p").send("Dana")
    reply = await Chat(Engine(runtime, route), address="p").send(GOOD_VIN)
    assert "odometer" in joined(reply)


async def test_every_reply_is_in_the_transcript_and_queued_for_its_provider(
        engine_: Engine, runtime: Runtime) -> None:
    widget = Chat(engine_, channel="web", address="v_visitor")
    telegram = Chat(engine_, channel="telegram", address="4242")
    for chat in (widget, telegram):
        await chat.send("hi")
        await chat.send("1")
    async with runtime.sessions() as s:
        out = {(m.channel, m.id) for m in (await s.scalars(
            select(Message).where(Message.direction == "out"))).all()}
        items = (await s.scalars(select(OutboxItem))).all()
    assert len(out) == len(widget.received) + len(telegram.received) == 4
    # The widget reads its replies from the transcript; Telegram's wait in the outbox.
    assert {(i.channel, i.message_id) for i in items} == {o for o in out if o[0] == "telegram"}
    assert {i.status for i in items} == {"pending"}


async def test_summary_and_first_confirm_need_no_lookups(chat: Chat, runtime: Runtime,
                                                         engine: AsyncEngine) -> None:
    # The summary's file count is kept as files are attached, and an intake never confirmed
    # has no checkout to look for: neither step reads the database for it.
    await chat.send("hi")
    await chat.tap("Quick Chat")
    await chat.send("Dana")
    await chat.send(GOOD_VIN)
    await chat.send("84000")
    await chat.send("Grinding noise from the front left wheel when braking")
    with recording_statements(engine) as statements:
        summary = joined(await chat.tap("Skip"))
        await chat.tap("Confirm and pay")
        link = (await chat.tap("I agree"))[-1].link
    assert "Photos/files: 0" in summary and link is not None
    # (Not counted: drawing the new rows' ids, UnitOfWork.new_id: on PostgreSQL a block
    # from the sequence, once per IdPool.BLOCK; on SQLite the largest id, once per
    # transaction.)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")
             and "nextval" not in s and 'max("id")' not in s]
    # Only the engine's own lookup of the sender, once per message (PostgreSQL: after the
    # statement that locks the conversation), and at "Confirm and pay" the one look-up of
    # the customer's acceptances of the terms.
    per_message = 2 if engine.dialect.name == "postgresql" else 1
    terms = [s for s in reads if "FROM terms_acceptances" in s]
    assert len(terms) == 1 and len(reads) == 3 * per_message + 1, reads
    assert all("FROM identities" in s or "FROM conversations JOIN identities" in s
               for s in reads if s not in terms), reads

    # Once confirmed, the checkout is looked for: the same link again, not a second one.
    again = await chat.send("hello?")
    assert again[-1].link is not None and again[-1].link.url == link.url
    async with runtime.sessions() as s:
        assert len((await s.scalars(select(Checkout))).all()) == 1


@pytest.mark.parametrize(("said", "reading"), [
    ("120k", (120000, "mi")), ("120 k miles", (120000, "mi")),
    ("about 120,000 km", (120000, "km")), ("roughly 85k on the clock", (85000, "mi")),
    ("~90000 mi", (90000, "mi")), ("120 thousand miles", (120000, "mi"))])
def test_mileage_as_people_write_it(said: str, reading: tuple[int, str]) -> None:
    from core.intake import parse_odometer

    assert parse_odometer(said) == reading


@pytest.mark.parametrize(("problem", "enough"), [
    ("Battery dies overnight", True), ("It won't start", True), ("brakes", False),
    ("car broken", False)])
def test_a_problem_in_a_few_clear_words_is_enough(problem: str, enough: bool) -> None:
    from core.intake import problem_is_described

    assert problem_is_described(problem) is enough
