"""Over the widget's real socket: the offer names the customer and shows the mileage and the
photos (links that open for the mechanics offered the request while their offer is open, and
nobody else); the terms are agreed to before the link, recorded with the web client's address;
the terms page."""

from __future__ import annotations

from sqlalchemy import select

from core.config import Config, with_changes
from core.consultations import file_url
from core.models import File, TermsAcceptance
from core.runtime import Runtime
from tests.channels.test_local_loop import invite
from tests.channels.test_widget_ws import GOOD_VIN, PNG, MakeClient, Widget, _upload
from tests.factories import linked_mechanic
from tests.helpers import pay_offline


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def test_the_offer_names_the_customer_and_its_photos_open_for_offered_mechanics_only(
        make_client: MakeClient, config: Config, runtime: Runtime) -> None:
    client = await make_client(config)
    sam, kim = Widget(client), Widget(client)
    await sam.connect(mechanic_invite=await invite(runtime, "Sam"))
    await kim.connect(mechanic_invite=await invite(runtime, "Kim"))
    await sam.expect()
    await kim.expect()

    customer = Widget(client)
    await customer.connect()
    await customer.expect()
    await customer.tap("Quick Chat")
    assert "Nice to meet you, Ann!" in await customer.say("ann")
    await customer.say(GOOD_VIN, replies=2)
    await customer.say("84000")
    await customer.say("Grinding noise from the front left wheel when braking")
    uploaded = await (await _upload(client, customer.visitor, PNG)).json()
    await customer.say("", attachments=[uploaded["file"]])
    await customer.tap("Done")
    (terms,) = await customer.tap("Confirm and pay")
    assert terms["link"] is not None and "/pay/" not in terms["link"]["url"]
    (pay,) = await customer.tap("I agree")
    async with runtime.sessions() as s:
        accepted = (await s.scalars(select(TermsAcceptance))).one()
    # On the web, the client's address is recorded with the version, the time and channel.
    assert (accepted.version, accepted.channel, accepted.client_address) == (
        config.terms.version, "web", "127.0.0.1")
    assert (await pay_offline(client, path_of(pay["link"]["url"]))).status == 200
    await customer.expect()

    (to_sam,) = await sam.expect()
    (to_kim,) = await kim.expect()
    for offer in (to_sam, to_kim):
        assert "Customer: Ann\n" in offer["text"]
        assert "Mileage: 84,000 mi" in offer["text"]
        assert "Photos/files: 1" in offer["text"]
    (sams_photo,) = to_sam["files"]
    (kims_photo,) = to_kim["files"]
    assert sams_photo["url"] != kims_photo["url"]  # each signed for its mechanic's chat
    opened = await client.get(path_of(sams_photo["url"]))
    assert opened.status == 200 and await opened.read() == PNG
    assert (await client.get(path_of(kims_photo["url"]))).status == 200

    # A mechanic who was not offered it: a link made out to his chat is refused.
    lee = await linked_mechanic(runtime, "Lee")
    async with runtime.sessions() as s:
        photo = (await s.scalars(select(File))).one()
    refused = await client.get(path_of(file_url(config, photo.id, lee.id, runtime.clock.now())))
    assert refused.status == 403 and "not shared with you" in await refused.text()

    # Sam takes it: he sees Ann's name, and Kim's offer (and with it her link) is closed.
    _closed, details = await sam.tap("Accept", replies=2)
    assert "with Ann." in details["text"]
    await kim.expect()
    assert (await client.get(path_of(kims_photo["url"]))).status == 403
    assert (await client.get(path_of(sams_photo["url"]))).status == 200
    await customer.expect()  # matched
    await customer.say("Hello, it grinds worse in the rain", replies=0)
    # The session's start, and her line labelled with her name.
    said = [(await sam.expect())[0]["text"] for _ in range(2)]
    assert "Ann: Hello, it grinds worse in the rain" in said


async def test_the_terms_page_shows_the_configured_text_escaped(make_client: MakeClient,
                                                                config: Config) -> None:
    client = await make_client(with_changes(config, terms={
        "version": "7", "text": "First <b>bold</b> part.\n\nSecond & last\npart."}))
    page = await client.get("/terms")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    html = await page.text()
    assert "Version 7" in html
    assert "<p>First &lt;b&gt;bold&lt;/b&gt; part.</p>" in html
    assert "<p>Second &amp; last part.</p>" in html
    assert "<b>" not in html
