"""A consultation across channels, over the real wire formats: a widget customer with a
Telegram mechanic (through the Bot API stand-in), and with a mechanic on the /m/ console."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from aiohttp import FormData
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from core.config import Config
from core.consultations import file_url
from core.links import sign
from core.models import Consultation, File, Payout
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.channels.test_local_loop import invite
from tests.channels.test_telegram import SAM, Bot, bot, telegram_api  # noqa: F401 - fixtures
from tests.channels.test_widget_ws import GOOD_VIN, PNG, MakeClient, Widget
from tests.helpers import pay_offline

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4


async def pay_as_widget_customer(client: TestClient, plan_label: str = "Quick Chat") -> Widget:
    customer = Widget(client)
    await customer.connect()
    await customer.expect()
    await customer.tap(plan_label)
    await customer.say("Dana")
    await customer.say(GOOD_VIN, replies=2)
    await customer.say("84000")
    await customer.say("Grinding noise from the front left wheel when braking")
    await customer.tap("Skip")
    await customer.tap("Confirm and pay")
    (pay,) = await customer.tap("I agree")
    paid = await pay_offline(client, "/" + pay["link"]["url"].split("/", 3)[3])
    assert paid.status == 200
    (received,) = await customer.expect()
    assert received["text"].startswith("Payment received")
    return customer


async def delivered_to_sam(service: Bot, text: str) -> list[str]:
    """Deliver Sam's messages until `text` has reached his chat (a widget frame is handled
    a moment after it is sent; nothing answers the sender for a relayed line)."""
    for _ in range(100):
        await service.deliver()
        if text in service.api.texts(SAM.id):
            return service.api.texts(SAM.id)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never reached Sam: {service.api.texts(SAM.id)}")


async def upload(client: TestClient, visitor: str | None, data: bytes, name: str) -> str:
    form = FormData()
    form.add_field("file", data, filename=name, content_type="application/octet-stream")
    resp = await client.post("/widget/upload", data=form,
                             headers={"X-Visitor-Token": visitor or ""})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["file"])


async def test_widget_customer_and_telegram_mechanic_talk_share_files_end_and_rate(
        bot: Bot, runtime: Runtime) -> None:  # noqa: F811 - the fixture
    api, client = bot.api, bot.client
    code = await invite(runtime, "Sam Lee")
    await bot.say(SAM, f"/start m_{code}")
    customer = await pay_as_widget_customer(client)
    await bot.deliver()
    assert api.texts(SAM.id)[-1].startswith("New request R-")
    replies = await bot.tap(SAM, "Accept")
    assert any(t.startswith("It's yours") for t in replies)
    (matched,) = await customer.expect()
    assert "Sam, a certified mechanic" in matched["text"]

    # The customer writes first (the session starts) and sends a photo; Sam gets both,
    # the photo as a Telegram photo with the very bytes uploaded.
    await customer.ws.send_json({"type": "message", "text": "Hi Sam, it's the front left"})  # type: ignore[union-attr]
    (started,) = await customer.expect()
    assert "The session has started: 30 minutes" in started["text"]
    photo_id = await upload(client, customer.visitor, PNG, "wheel.png")
    await customer.ws.send_json({"type": "message", "text": "",  # type: ignore[union-attr]
                                 "attachments": [photo_id]})
    sam_texts = await delivered_to_sam(bot, "Dana: sent 1 file")
    assert "Dana: Hi Sam, it's the front left" in sam_texts
    photos = [c for c in api.calls_to("sendPhoto", SAM.id) if c.params.get("_uploads")]
    assert [upload_ for c in photos for upload_ in c.params["_uploads"].values()] == [
        ("wheel.png", PNG)]

    # Sam answers, with a photo of his own from Telegram: it reaches the widget as a link
    # that opens for the customer only.
    await bot.send(api.message(SAM, "Thanks. Is it this part?"))
    await bot.send(api.photo(SAM, JPEG))
    first, second = await customer.expect(2)
    assert first["text"] == "Sam: Thanks. Is it this part?"
    assert second["text"] == "Sam: sent 1 file" and len(second["files"]) == 1
    link = second["files"][0]["url"]
    opened = await client.get("/" + link.split("/", 3)[3])
    assert opened.status == 200 and await opened.read() == JPEG
    token = link.rsplit("/", 1)[1]
    assert (await client.get(f"/f/{token[:-2]}xx")).status == 403  # forged
    async with runtime.sessions() as s:
        sent = await s.scalar(select(File).where(File.content_type == "image/jpeg"))
        consultation = await s.scalar(select(Consultation))
    assert sent is not None and consultation is not None
    now = runtime.clock.now()
    stranger = file_url(runtime.config, sent.id, 999_999, now)  # signed, for someone else
    assert (await client.get("/" + stranger.split("/", 3)[3])).status == 403
    expired = sign(runtime.config.secrets.secret_key, "f", sent.id,
                   f"i{consultation.customer_identity_id}", now - timedelta(seconds=1))
    assert (await client.get(f"/f/{expired}")).status == 403

    # Sam ends it; the customer rates it with the buttons that came with the notice.
    await bot.say(SAM, "end")
    (ended,) = await customer.expect()
    assert "How was it?" in ended["text"]
    assert [b["label"] for b in ended["buttons"]] == ["1", "2", "3", "4", "5"]
    (rated,) = await customer.tap("5")
    assert "5/5" in rated["text"]
    await run_sweeps(runtime)
    async with runtime.sessions() as s:
        payout = await s.scalar(select(Payout))
        consultation = await s.get(Consultation, consultation.id)
    assert payout is not None and payout.amount_cents == 800
    assert consultation is not None and consultation.rating == 5
    await customer.close()


async def test_widget_customer_and_console_mechanic_talk_both_ways(
        make_client: MakeClient, config: Config, runtime: Runtime) -> None:
    client = await make_client(config)
    sam = Widget(client)
    await sam.connect(mechanic_invite=await invite(runtime, "Sam"))
    await sam.expect()
    customer = await pay_as_widget_customer(client)
    (offered,) = await sam.expect()
    assert offered["text"].startswith("New request R-")
    await sam.tap("Accept", replies=2)
    await customer.expect()
    assert "The session has started" in await customer.say("Hello from the widget")
    got = await sam.expect(2)
    assert [m["text"] for m in got][-1] == "Dana: Hello from the widget"
    assert await customer.say("and again", replies=0) == ""
    assert (await sam.expect())[0]["text"] == "Dana: and again"
    await sam.ws.send_json({"type": "message", "text": "Hi! Tell me more."})  # type: ignore[union-attr]
    assert (await customer.expect())[0]["text"] == "Sam: Hi! Tell me more."
    await customer.close()
    await sam.close()
