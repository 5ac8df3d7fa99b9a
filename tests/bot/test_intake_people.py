"""The intake's questions about the person: their first name (not asked when the channel
gives one) and their agreement to the terms before the payment link (asked again for a new
version)."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import select

from bot.flows import route
from core.clock import ManualClock
from core.config import with_changes
from core.engine import Engine
from core.messages import Inbound
from core.models import Checkout, Customer, Identity, TermsAcceptance
from core.names import clean_name, first_name_of
from core.runtime import Runtime
from tests.helpers import Chat, joined

GOOD_VIN = "1HGCM82633A004352"


@pytest.fixture
def engine_(runtime: Runtime) -> Engine:
    return Engine(runtime, route)


async def to_summary(chat: Chat, name: str | None = "Dana") -> None:
    """From the first message to the summary; `name` answers the name question (None: the
    channel gave one, so it is not asked)."""
    await chat.send("hi")
    await chat.send("1")
    if name is not None:
        await chat.send(name)
    await chat.send(GOOD_VIN)
    await chat.send("84000")
    await chat.send("Grinding noise from the front left wheel when braking")
    await chat.send("skip")
    assert "Here's your request" in chat.last


async def acceptances(runtime: Runtime) -> list[TermsAcceptance]:
    async with runtime.sessions() as s:
        return list((await s.scalars(select(TermsAcceptance).order_by(TermsAcceptance.id))).all())


async def test_the_widget_asks_the_first_name_and_keeps_it(engine_: Engine,
                                                           runtime: Runtime) -> None:
    chat = Chat(engine_, channel="web", address="v_named")
    await chat.send("hi")
    assert "What's your first name?" in joined(await chat.send("1"))
    # Not a name: a VIN, a phone number, a hidden direction override, a sentence. (Control
    # characters never reach the flows: the engine removes them from every message.)
    for said in (GOOD_VIN, "+1 555 123 4567", "Ann\u202e", "my car makes a noise when I brake"):
        assert "couldn't read that as a first name" in joined(await chat.send(said))
    reply = joined(await chat.send("  ann  "))
    assert "Nice to meet you, Ann!" in reply and "VIN" in reply
    async with runtime.sessions() as s:
        identity = await s.scalar(select(Identity).where(Identity.address == "v_named"))
        assert identity is not None and identity.display_name == "Ann"
        customer = await s.get(Customer, identity.customer_id)
        assert customer is not None and customer.display_name == "Ann"
    await chat.send(GOOD_VIN)
    await chat.send("84000")
    await chat.send("Grinding noise from the front left wheel when braking")
    assert "Name: Ann" in joined(await chat.send("skip"))
    # Corrected from the summary.
    assert "first name" in joined(await chat.tap("Change name"))
    assert "Name: Mary-Jane" in joined(await chat.send("Mary-Jane"))
    # A second intake does not ask again.
    await chat.send("cancel request")
    await chat.send("start")
    assert "VIN" in joined(await chat.send("2"))


async def test_telegram_first_name_is_used_and_not_asked(engine_: Engine,
                                                         runtime: Runtime) -> None:
    async def send(text: str) -> str:
        return joined(await engine_.receive(Inbound(
            channel="telegram", address="777", text=text, display_name="Alice Driver")))

    await send("hi")
    reply = await send("1")
    assert "first name" not in reply and "VIN" in reply
    await send(GOOD_VIN)
    await send("84000")
    await send("Grinding noise from the front left wheel when braking")
    assert "Name: Alice\n" in await send("skip")


async def test_a_telegram_profile_without_a_usable_name_is_asked(engine_: Engine) -> None:
    replies = []
    for text in ("hi", "1"):
        replies = await engine_.receive(Inbound(channel="telegram", address="778", text=text,
                                                display_name="\U0001f697\U0001f697"))
    assert "What's your first name?" in joined(replies)


@pytest.mark.parametrize(("raw", "name"), [
    ("ann", "Ann"), ("Mary-Jane", "Mary-Jane"), ("O'Neil", "O'Neil"), ("José", "José"),
    ("  Ann   Marie ", "Ann Marie"), ("my name is sam", "Sam"), ("I'm Lee", "Lee"),
    (GOOD_VIN, None), ("84000", None), ("+15551234567", None), ("Bob2", None),
    ("http://example.com", None), ("a\u202eb", None), ("skip", None), ("", None),
    ("x" * 41, None), ("one two three four", None), ("\U0001f642", None)])
def test_names_are_checked(raw: str, name: str | None) -> None:
    assert clean_name(raw) == name


def test_a_profile_gives_its_first_word() -> None:
    assert first_name_of("Alice Driver") == "Alice"
    assert first_name_of(None) is None and first_name_of("1234") is None


async def test_terms_are_asked_before_the_payment_link(engine_: Engine, runtime: Runtime,
                                                       clock: ManualClock) -> None:
    chat = Chat(engine_, address="terms-tap")
    await to_summary(chat)
    (ask,) = await chat.tap("Confirm and pay")
    assert "advice, not an inspection" in ask.text and "changed" not in ask.text
    assert [b.label for b in ask.buttons] == ["I agree"]
    assert ask.link is not None and ask.link.url == "http://127.0.0.1:8080/terms"
    async with runtime.sessions() as s:
        assert (await s.scalars(select(Checkout))).all() == []  # no link yet
    # Anything else is not agreeing: asked again, still no link.
    (again,) = await chat.send("what?")
    assert "agree" in again.text and again.link is None and again.buttons
    assert await acceptances(runtime) == []
    clock.advance(60)
    replies = await chat.tap("I agree")
    assert replies[-1].link is not None and "Pay $9.99" in replies[-1].link.label
    (accepted,) = await acceptances(runtime)
    assert (accepted.version, accepted.channel, accepted.client_address, accepted.accepted_at) \
        == (runtime.config.terms.version, "console", None, clock.now())


async def test_typing_agree_accepts_and_a_new_version_asks_again(engine_: Engine,
                                                                  runtime: Runtime) -> None:
    chat = Chat(engine_, address="terms-typed")
    await to_summary(chat)
    await chat.tap("Confirm and pay")
    assert (await chat.send("Agree"))[-1].link is not None
    # A second request on the same version: straight to the link.
    await chat.send("cancel request")
    await to_summary(chat, name=None)
    assert (await chat.tap("Confirm and pay"))[-1].link is not None
    assert len(await acceptances(runtime)) == 1

    # The terms change: the next confirm asks again, and the new version is recorded.
    bumped = dataclasses.replace(runtime, config=with_changes(
        runtime.config, terms={"version": "2099-01-01"}))
    chat = Chat(Engine(bumped, route), address="terms-typed")
    await chat.send("cancel request")
    await to_summary(chat, name=None)
    (ask,) = await chat.tap("Confirm and pay")
    assert ask.text.startswith("Our terms have changed") and ask.link is not None
    # A button for the old version no longer agrees.
    (stale,) = await chat.send(action=f"terms:agree:{runtime.config.terms.version}")
    assert stale.link is not None and "terms" in stale.text and stale.buttons
    assert (await chat.tap("I agree"))[-1].link is not None
    assert [a.version for a in await acceptances(runtime)] == [
        runtime.config.terms.version, "2099-01-01"]
