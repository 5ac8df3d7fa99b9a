"""The mechanic workspace's server side: GET /console/state (offers, the job with its intake
and photo links, history, earnings, availability) behind the widget's visitor token; the
scripts served gzip-compressed with caching headers; the paid page's way back to the chat."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from bot.app import RUNTIME
from core.config import Config
from core.dispatch.offers import offer_request
from core.files import store_upload
from core.models import Identity, SessionRequest
from core.runtime import Runtime
from tests.channels.test_local_loop import invite
from tests.channels.test_widget_ws import GOOD_VIN, OPEN, PNG, MakeClient, Widget
from tests.factories import paid_request
from tests.helpers import pay_offline

STATIC = Path(__file__).resolve().parents[2] / "channels" / "web" / "static"


@pytest.fixture
async def client(make_client: MakeClient, config: Config) -> AsyncIterator[TestClient]:
    yield await make_client(config)
    while OPEN:  # hang up like a browser tab closing, before the server stops
        await OPEN.pop().close()


async def _state(client: TestClient, token: str | None, **headers: str) -> aiohttp.ClientResponse:
    if token is not None:
        headers["X-Visitor-Token"] = token
    return await client.get("/console/state", headers=headers)


async def _offer_with_photo(runtime: Runtime) -> SessionRequest:
    """A paid request with a photo on its intake, offered to the eligible mechanics."""
    made = await paid_request(runtime, problem="Battery dies overnight after the radio swap")
    now = runtime.clock.now()
    async with runtime.transaction() as uow:
        request = await uow.session.get(SessionRequest, made.id)
        assert request is not None
        customer = await uow.session.scalar(select(Identity.id).where(
            Identity.customer_id == request.customer_id))
        assert customer is not None
        photo = await store_upload(uow.session, runtime.config, customer, PNG, "dash.png", now)
        photo.intake_id = request.intake_id
        await offer_request(uow, runtime, request, now)
    return request


async def test_console_state_shows_the_offer_then_the_job_with_photos_that_open(
        client: TestClient, runtime: Runtime) -> None:
    sam = Widget(client)
    await sam.connect(mechanic_invite=await invite(runtime, "Sam Lee"))
    await sam.expect()  # "Welcome, Sam Lee!"
    assert sam.visitor is not None
    empty = await (await _state(client, sam.visitor)).json()
    assert empty["mechanic"] == {"name": "Sam Lee", "available": True, "senior": False,
                                 "timezone": "UTC", "hours": []}
    assert (empty["offers"], empty["job"], empty["history"]) == ([], None, [])
    assert empty["earnings"] == {"sessions": 0, "paid_cents": 0, "pending_cents": 0,
                                 "rating": None, "ratings": 0}

    # Offered by the app's own runtime: its hub wakes the mechanic's socket.
    request = await _offer_with_photo(client.app[RUNTIME])
    (offer_message,) = await sam.expect()
    assert [b["payload"] for b in offer_message["buttons"]] == [f"accept:{request.ref}"]
    response = await _state(client, sam.visitor)
    assert response.headers["Cache-Control"] == "private, no-store"
    (offer,) = (await response.json())["offers"]
    assert offer["ref"] == request.ref
    assert (offer["plan"], offer["minutes"], offer["payout_cents"]) == ("Quick Chat", 30, 800)
    assert offer["vehicle"] == "2015 Honda Civic"
    assert offer["problem"] == "Battery dies overnight after the radio swap"
    assert offer["files"] == 1

    # A mechanic who was not offered it sees no offer, and the accept path refuses the tap.
    ann = Widget(client)
    await ann.connect(mechanic_invite=await invite(runtime, "Ann"))
    await ann.expect()
    assert (await (await _state(client, ann.visitor)).json())["offers"] == []
    assert ann.ws is not None
    await ann.ws.send_json({"type": "action", "payload": f"accept:{request.ref}"})
    (refused,) = await ann.expect()
    assert "wasn't offered to you" in refused["text"]

    # The workspace's Accept is the offer's own action on the widget's socket.
    await sam.tap("Accept", replies=2)
    state = await (await _state(client, sam.visitor)).json()
    assert state["offers"] == []
    job = state["job"]
    assert (job["ref"], job["status"], job["vehicle"]) == (request.ref, "waiting",
                                                           "2015 Honda Civic")
    (photo,) = job["photos"]
    assert (photo["name"], photo["content_type"]) == ("dash.png", "image/png")
    opened = await client.get("/" + photo["url"].split("/", 3)[3])
    assert opened.status == 200 and await opened.read() == PNG
    # The link is signed: tampered, it opens nothing.
    forged = await client.get("/" + photo["url"].split("/", 3)[3][:-3] + "AAA")
    assert forged.status == 403


async def test_console_state_answers_only_a_mechanics_own_chat(
        client: TestClient, runtime: Runtime) -> None:
    assert (await _state(client, None)).status == 401
    assert (await _state(client, "not a token!")).status == 401
    customer = Widget(client)
    await customer.connect()
    await customer.expect()
    await customer.tap("Quick Chat")
    refused = await _state(client, customer.visitor)
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "not_a_mechanic"
    sam = Widget(client)
    await sam.connect(mechanic_invite=await invite(runtime, "Sam"))
    await sam.expect()
    other_site = await _state(client, sam.visitor, Origin="https://elsewhere.example")
    assert other_site.status == 403


async def test_scripts_are_served_gzip_compressed_with_caching_headers(
        client: TestClient) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as raw:
        for name in ("widget.js", "console.js"):
            source = (STATIC / name).read_bytes()
            url = client.make_url(f"/{name}")
            async with raw.get(url, headers={"Accept-Encoding": "gzip, deflate, br"}) as zipped:
                assert zipped.status == 200
                assert zipped.headers["Content-Encoding"] == "gzip"
                assert zipped.headers["Vary"] == "Accept-Encoding"
                assert zipped.headers["Content-Type"].startswith("application/javascript")
                assert "max-age=" in zipped.headers["Cache-Control"]
                body = await zipped.read()
                etag = zipped.headers["ETag"]
            assert gzip.decompress(body) == source
            assert len(body) < len(source) / 2
            async with raw.get(url, headers={"Accept-Encoding": "gzip",
                                             "If-None-Match": etag}) as again:
                assert again.status == 304 and await again.read() == b""
            for refused in ("identity", "gzip;q=0"):
                async with raw.get(url, headers={"Accept-Encoding": refused}) as plain:
                    assert "Content-Encoding" not in plain.headers
                    assert await plain.read() == source
                    assert plain.headers["ETag"] != etag


async def test_paid_page_links_web_customers_back_to_their_chat(
        client: TestClient, runtime: Runtime) -> None:
    customer = Widget(client)
    await customer.connect()
    await customer.expect()
    await customer.tap("Quick Chat")
    await customer.say("Dana")
    await customer.say(GOOD_VIN, replies=2)
    await customer.say("84000")
    await customer.say("Grinding noise from the front left wheel when braking")
    await customer.tap("Skip")
    await customer.tap("Confirm and pay")  # the terms first
    (pay,) = await customer.tap("I agree")
    paid = await pay_offline(client, "/" + pay["link"]["url"].split("/", 3)[3])
    html = await paid.text()
    assert paid.status == 200 and "Paid" in html
    back = runtime.config.public_url.rstrip("/") + "/#chat"
    assert f'<a class="button" href="{back}">Back to the chat</a>' in html
