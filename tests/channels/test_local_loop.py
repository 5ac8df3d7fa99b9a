"""The whole loop with no accounts: a widget customer pays offline, two mechanics on their web
consoles get the offer, one accepts, the other sees it taken."""

from __future__ import annotations

from sqlalchemy import select

from core.config import Config
from core.mechanics import invite_mechanic
from core.models import SessionRequest
from core.runtime import Runtime
from tests.channels.test_widget_ws import GOOD_VIN, MakeClient, Widget
from tests.helpers import pay_offline


async def invite(runtime: Runtime, name: str) -> str:
    async with runtime.sessions.begin() as s:
        return (await invite_mechanic(s, runtime.config, name, runtime.clock.now())).invite_code


async def test_widget_customer_pays_and_the_first_web_mechanic_wins(
        make_client: MakeClient, config: Config, runtime: Runtime) -> None:
    client = await make_client(config)
    sam, ann = Widget(client), Widget(client)
    await sam.connect(mechanic_invite=await invite(runtime, "Sam"))
    await ann.connect(mechanic_invite=await invite(runtime, "Ann"))
    assert "Welcome, Sam!" in (await sam.expect())[0]["text"]
    assert "Welcome, Ann!" in (await ann.expect())[0]["text"]

    customer = Widget(client)
    await customer.connect()
    await customer.expect()
    await customer.tap("Quick Chat")
    await customer.say("Dana")
    await customer.say(GOOD_VIN, replies=2)
    await customer.say("84000")
    await customer.say("Grinding noise from the front left wheel when braking")
    await customer.tap("Skip")
    await customer.tap("Confirm and pay")
    (pay,) = await customer.tap("I agree")
    pay_path = "/" + pay["link"]["url"].split("/", 3)[3]

    page = await client.get(pay_path)
    assert page.status == 200 and "$9.99" in await page.text()
    paid = await pay_offline(client, pay_path)
    assert paid.status == 200 and "Paid" in await paid.text()

    (received,) = await customer.expect()
    assert received["text"].startswith("Payment received, thank you!")
    (offer_to_sam,) = await sam.expect()
    (offer_to_ann,) = await ann.expect()
    assert offer_to_sam["text"].startswith("New request R-")
    assert "Quick Chat (30 min, you earn $8.00)" in offer_to_sam["text"]
    assert "Grinding noise" in offer_to_ann["text"]
    assert [b["label"] for b in offer_to_ann["buttons"]] == ["Accept"]

    closed, details = await sam.tap("Accept", replies=2)
    assert "accepted by you" in closed["text"]
    assert details["text"].startswith("It's yours: R-")
    (taken,) = await ann.expect()
    assert "was taken by another mechanic" in taken["text"]
    (matched,) = await customer.expect()
    assert "Sam, a certified mechanic, accepted your Quick Chat request" in matched["text"]
    # Ann's late tap on the stale button is refused, and nothing changes.
    (late,) = await ann.tap("Accept")
    assert "already taken" in late["text"]
    async with runtime.sessions() as s:
        request = await s.scalar(select(SessionRequest))
    assert request is not None and request.status == "accepted"
