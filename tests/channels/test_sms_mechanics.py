"""Mechanics by SMS (JOIN, reply codes, availability) and an SMS customer in a consultation
with a mechanic on the web console, over Twilio's wire format and the widget's WebSocket."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from channels.sms_render import encoding
from core.models import Consultation, SessionRequest
from core.runtime import Runtime
from tests.channels.test_consultation_channels import upload
from tests.channels.test_local_loop import invite
from tests.channels.test_sms import (  # noqa: F401 - fixtures
    ALICE,
    GOOD_VIN,
    JPEG,
    PROBLEM,
    Phones,
    phones,
    twilio_api,
)
from tests.channels.test_telegram import offer
from tests.channels.test_widget_ws import PNG, Widget
from tests.factories import paid_request
from tests.helpers import pay_offline
from tests.standins.twilio_api import SentMessage

SAM, ANN, BOB = "+15552220001", "+15552220002", "+15552220003"


async def join(service: Phones, runtime: Runtime, number: str, name: str) -> None:
    code = await invite(runtime, name)
    (welcome,) = await service.text(number, f"JOIN {code}")
    assert welcome.startswith(f"Welcome, {name}!")


async def test_mechanics_accept_by_reply_code_and_a_stale_or_foreign_code_is_refused(
        phones: Phones, runtime: Runtime) -> None:  # noqa: F811 - the fixture
    await join(phones, runtime, SAM, "Sam")
    await join(phones, runtime, ANN, "Ann")
    request = await paid_request(runtime)
    assert await offer(runtime, request) == 2
    await phones.deliver()
    code = "A" + request.ref.removeprefix("R-")
    for number in (SAM, ANN):
        (offered,) = phones.api.texts(number)[-1:]
        assert offered.startswith(f"New request {request.ref}: Quick Chat")
        assert offered.endswith(f"Reply {code} to accept.") and "\n1. " not in offered
        assert encoding(offered) == "GSM-7"
    replies = await phones.text(SAM, code.lower())
    assert any(r.startswith(f"It's yours: {request.ref}") for r in replies)
    # Ann's offer was closed by a new text (an SMS cannot be edited); her code now is stale.
    assert phones.api.texts(ANN)[-1] == f"Request {request.ref} was taken by another mechanic."
    assert await phones.text(ANN, code) == [
        f"Sorry, {request.ref} was already taken by another mechanic."]
    # Bob joined after the offer went out: his code is refused.
    await join(phones, runtime, BOB, "Bob")
    assert await phones.text(BOB, code) == [
        "That request wasn't offered to you, so it can't be accepted from here."]
    async with runtime.sessions() as s:
        fresh = await s.get(SessionRequest, request.id)
    assert fresh is not None and fresh.status == "accepted"
    # Availability by SMS.
    assert (await phones.text(BOB, "away"))[0].startswith("You're away")
    assert (await phones.text(BOB, "available"))[0].startswith("You're available")
    assert (await phones.text(BOB, "status"))[0] == "Bob: available."


async def pay_by_sms(service: Phones, number: str = ALICE) -> None:
    await service.text(number, "Hi")
    await service.text(number, "1")
    await service.text(number, "Alice")
    await service.text(number, GOOD_VIN)
    await service.text(number, "84000")
    await service.text(number, PROBLEM)
    await service.text(number, "skip")
    await service.text(number, "1")
    (pay,) = await service.text(number, "1")  # "I agree", the terms' one choice
    url = pay.rsplit(": ", 1)[1]
    paid = await pay_offline(service.client, "/" + url.split("/", 3)[3])
    assert paid.status == 200
    await service.deliver()
    assert service.api.texts(number)[-1].startswith("Payment received")


async def test_sms_customer_and_web_mechanic_talk_share_photos_end_and_rate(
        phones: Phones, runtime: Runtime) -> None:  # noqa: F811 - the fixture
    api, client = phones.api, phones.client
    sam = Widget(client)
    await sam.connect(mechanic_invite=await invite(runtime, "Sam Lee"))
    await sam.expect()
    await pay_by_sms(phones)
    (offered,) = await sam.expect()
    assert offered["text"].startswith("New request R-")
    await sam.tap("Accept", replies=2)
    await phones.deliver()
    assert api.texts(ALICE)[-1].startswith("Good news: Sam, a certified mechanic")
    assert 'Say "end session"' in api.texts(ALICE)[-1]

    started = await phones.text(ALICE, "Hi Sam, it’s the front left")  # a curly apostrophe
    assert started[0].startswith("The session has started")
    got = await sam.expect(2)
    assert got[-1]["text"] == "Alice: Hi Sam, it’s the front left"

    # Sam's photo reaches the phone as an MMS (a +1 number, a public https link).
    photo_id = await upload(client, sam.visitor, PNG, "part.png")
    await sam.ws.send_json({"type": "message", "text": "", "attachments": [photo_id]})  # type: ignore[union-attr]
    last = await delivered(phones, ALICE, "Sam: sent 1 file")
    assert last.body == "Sam: sent 1 file" and len(last.media) == 1
    assert "/f/" in last.media[0]
    # The customer's MMS reaches Sam as a file link.
    url = api.host_media(JPEG, "image/jpeg")
    await phones.text(ALICE, "", media=[(url, "image/jpeg")])
    (photo,) = await sam.expect()
    assert photo["text"] == "Alice: sent 1 file" and len(photo["files"]) == 1

    # "end" alone would opt the number out; "end session" asks, "1" confirms.
    (ask,) = await phones.text(ALICE, "end session")
    assert ask.endswith("1. Yes, end it\n2. Keep talking\nReply 1 or 2.")
    (ended,) = await phones.text(ALICE, "1")
    assert "How was it?" in ended and ended.endswith("Reply 1, 2, 3, 4 or 5.")
    (notice,) = await sam.expect()
    assert "has ended" in notice["text"]
    (rated,) = await phones.text(ALICE, "5")
    assert rated.startswith("Thank you for rating 5/5!")
    async with runtime.sessions() as s:
        consultation = await s.scalar(select(Consultation))
    assert consultation is not None and consultation.rating == 5
    assert consultation.status == "completed"
    await sam.close()


async def delivered(service: Phones, number: str, text: str) -> SentMessage:
    """Deliver until `text` reached the phone (a widget frame is handled a moment after it
    is sent; nothing answers the sender of a relayed line)."""
    for _ in range(100):
        await service.deliver()
        found = [m for m in service.api.to(number) if m.body == text]
        if found:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never reached {number}: {service.api.texts(number)}")
