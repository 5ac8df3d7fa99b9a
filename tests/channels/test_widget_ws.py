"""The widget's WebSocket and upload endpoint, through a real server and socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import ENGINE, RUNTIME
from channels.web.ws import visitor_address
from core.config import Config, with_changes
from core.messages import Inbound
from core.models import File, Identity, Intake, Message
from core.outbox import tell
from tests.helpers import recording_statements

GOOD_VIN = "1HGCM82633A004352"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


OPEN: list[aiohttp.ClientWebSocketResponse] = []


@pytest.fixture(autouse=True)
async def _close_sockets() -> AsyncIterator[None]:
    """Hang up like a browser tab closing, before the server stops."""
    yield
    while OPEN:
        await OPEN.pop().close()


MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def client(make_client: MakeClient, config: Config) -> TestClient:
    return await make_client(config)


class Widget:
    """A browser-less widget: speaks the JSON protocol over a real WebSocket."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.visitor: str | None = None
        self.messages: list[dict[str, Any]] = []

    async def connect(self, resume_after: int | None = None, **hello: Any) -> None:
        self.ws = await self.client.ws_connect("/ws/widget")
        OPEN.append(self.ws)
        await self.ws.send_json({"type": "hello", "visitor": self.visitor,
                                 "resume_after": resume_after, "mechanic_invite": None,
                                 **hello})
        welcome = await self.frame()
        assert welcome["type"] == "welcome"
        self.visitor = welcome["visitor"]

    async def frame(self) -> dict[str, Any]:
        assert self.ws is not None
        return dict(await self.ws.receive_json(timeout=10))

    async def expect(self, count: int = 1) -> list[dict[str, Any]]:
        got = []
        for _ in range(count):
            frame = await self.frame()
            assert frame["type"] == "message", frame
            got.append(frame)
        self.messages.extend(got)
        return got

    async def say(self, text: str, replies: int = 1, **extra: Any) -> str:
        assert self.ws is not None
        await self.ws.send_json({"type": "message", "text": text, **extra})
        return "\n".join(m["text"] for m in await self.expect(replies))

    async def tap(self, label_part: str, replies: int = 1) -> list[dict[str, Any]]:
        assert self.ws is not None
        for message in reversed(self.messages):
            for button in message["buttons"]:
                if label_part in button["label"]:
                    await self.ws.send_json({"type": "action", "payload": button["payload"]})
                    return await self.expect(replies)
        raise AssertionError(f"no button {label_part!r}")

    async def close(self) -> None:
        assert self.ws is not None
        await self.ws.close()


async def test_full_intake_over_websocket_ends_with_payment_link(client: TestClient) -> None:
    w = Widget(client)
    await w.connect()
    (greeting,) = await w.expect()
    assert "Which kind of help" in greeting["text"]
    assert [b["label"] for b in greeting["buttons"]] == [
        "Quick Chat · 30 min · $9.99", "Standard Video · 45 min · $29.99",
        "Full Diagnostic · 60 min · $49.99"]
    assert greeting["link"] is None
    await w.tap("Standard Video")
    assert "Nice to meet you, Dana!" in await w.say("Dana")
    assert "odometer" in await w.say(GOOD_VIN, replies=2)
    assert "problem" in await w.say("84000")
    assert "Photos" in await w.say("Grinding noise from the front left wheel when braking")
    (summary,) = await w.tap("Skip")
    assert "Standard Video" in summary["text"]
    (terms,) = await w.tap("Confirm and pay")
    assert terms["link"]["url"].endswith("/terms")
    (pay,) = await w.tap("I agree")
    assert pay["link"]["label"] == "Pay $29.99"
    assert "/pay/co_" in pay["link"]["url"]
    # The first greeting is not stored (a new visitor has no record until they answer it).
    assert w.messages[0]["id"] is None
    ids = [m["id"] for m in w.messages[1:]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    await w.close()


async def test_replies_reach_the_socket_without_reading_the_transcript_back(
        client: TestClient, engine: AsyncEngine) -> None:
    with recording_statements(engine) as statements:
        w = Widget(client)
        await w.connect()  # a new visitor: greeted without a record
        await w.expect()
        await w.tap("Quick Chat")
        await w.say("Dana")
        assert "odometer" in await w.say(GOOD_VIN, replies=2)
    # The committed rows were handed to the socket by the hub; nothing was read back.
    reads = [s for s in statements if "FROM messages" in s]
    assert reads == []
    async with client.app[RUNTIME].readers() as s:
        stored = (await s.scalars(select(Message.id).where(Message.direction == "out")
                                  .order_by(Message.id))).all()
    assert [m["id"] for m in w.messages if m["id"] is not None] == list(stored)
    await w.close()


async def test_a_refused_invite_leaves_the_connection_ready_for_another_hello(
        client: TestClient) -> None:
    ws = await client.ws_connect("/ws/widget")
    OPEN.append(ws)
    await ws.send_json({"type": "hello", "visitor": None, "resume_after": None,
                        "mechanic_invite": "NOSUCHCODE"})
    refused = await ws.receive_json(timeout=10)
    assert refused["type"] == "error" and refused["code"] == "invalid_invite"
    await ws.send_json({"type": "message", "text": "hello?"})
    assert (await ws.receive_json(timeout=10))["code"] == "hello_required"
    await ws.send_json({"type": "hello", "visitor": None, "resume_after": None,
                        "mechanic_invite": None})
    assert (await ws.receive_json(timeout=10))["type"] == "welcome"
    greeting = await ws.receive_json(timeout=10)
    assert "Which kind of help" in greeting["text"]
    await ws.send_json({"type": "message", "text": "1"})
    assert "first name" in (await ws.receive_json(timeout=10))["text"]


async def test_a_message_from_elsewhere_during_a_turn_arrives_once_in_order(
        client: TestClient) -> None:
    # The socket sends its own turn's replies itself; a message committed for the same person
    # meanwhile (another tab, a mechanic) is sent with them, once, in id order.
    w = Widget(client)
    await w.connect()
    await w.expect()
    runtime = client.app[RUNTIME]
    engine = client.app[ENGINE]
    assert w.visitor is not None and w.ws is not None
    address = visitor_address(w.visitor)
    await w.ws.send_json({"type": "action", "payload": "plan:chat10"})
    await engine.receive(Inbound(channel="web", address=address, text="/status"))
    async with runtime.transaction() as uow:
        identity = await uow.session.scalar(select(Identity).where(Identity.address == address))
        assert await tell(uow, identity, "A note from the team", runtime.clock.now(),
                          key="note:1")
    got = await w.expect(3)
    texts = [m["text"] for m in got]
    assert sum("A note from the team" in t for t in texts) == 1
    # The first greeting is not stored (a new visitor has no record until they answer it).
    assert w.messages[0]["id"] is None
    ids = [m["id"] for m in w.messages[1:]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    async with runtime.readers() as s:
        stored = (await s.scalars(select(Message.id).where(
            Message.identity_id == identity.id, Message.direction == "out")
            .order_by(Message.id))).all()
    assert ids == list(stored)


async def test_reconnect_with_resume_after_loses_nothing_and_repeats_nothing(
        client: TestClient) -> None:
    w = Widget(client)
    await w.connect()
    await w.expect()
    await w.tap("Quick Chat")
    last_seen = w.messages[-1]["id"]
    await w.close()
    # While the widget is away (a dropped connection), the conversation goes on in another tab.
    assert w.visitor is not None
    engine = client.app[ENGINE]
    address = visitor_address(w.visitor)
    await engine.receive(Inbound(channel="web", address=address, text="Dana"))
    await engine.receive(Inbound(channel="web", address=address, text=GOOD_VIN))
    await engine.receive(Inbound(channel="web", address=address, text="skip"))

    again = Widget(client)
    again.visitor = w.visitor
    await again.connect(resume_after=last_seen)
    missed = await again.expect(4)
    assert [m["id"] for m in missed] == sorted(m["id"] for m in missed)
    assert missed[0]["id"] > last_seen
    assert "Nice to meet you, Dana!" in missed[0]["text"]
    assert "VIN 1HGCM82633A004352" in missed[1]["text"]
    assert "odometer" in missed[2]["text"]
    assert "problem" in missed[3]["text"]
    # Nothing more is replayed; the next answer continues the same intake.
    assert "Photos" in await again.say("Car pulls hard to the right under braking")
    all_ids = [m["id"] for m in w.messages + again.messages if m["id"] is not None]
    assert len(all_ids) == len(set(all_ids))
    await again.close()


async def test_returning_visitor_without_resume_gets_history_not_a_new_greeting(
        client: TestClient) -> None:
    w = Widget(client)
    await w.connect()
    await w.expect()
    await w.tap("Quick Chat")
    await w.close()
    again = Widget(client)
    again.visitor = w.visitor
    await again.connect()
    # The stored messages come back (the first greeting was never stored: the visitor had no
    # record until they answered it).
    history = await again.expect(1)
    assert [m["id"] for m in history] == [m["id"] for m in w.messages if m["id"] is not None]
    assert "first name" in history[0]["text"]
    assert again.visitor == w.visitor


async def test_unknown_visitor_token_starts_fresh(client: TestClient) -> None:
    w = Widget(client)
    w.visitor = "x" * 32
    await w.connect()
    assert w.visitor != "x" * 32
    assert "Which kind of help" in (await w.expect())[0]["text"]


@pytest.mark.parametrize(("raw", "code"), [
    ("not json", "bad_json"),
    ('{"type": "message", "text": "\\ud800 half a character"}', "bad_json"),
    ('{"type": "message", "text": NaN}', "bad_json"),
    ("[1, 2]", "bad_frame"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": "message", "text": 5}', "bad_frame"),
    ('{"type": "message", "text": ""}', "empty_message"),
    ('{"type": "action", "payload": ""}', "bad_frame"),
    ('{"type": "message", "text": "hi", "attachments": "f_1"}', "bad_attachments"),
    ('{"type": "hello"}', "already_started"),
])
async def test_bad_frames_get_an_error_frame_and_the_socket_stays_open(
        client: TestClient, raw: str, code: str) -> None:
    w = Widget(client)
    await w.connect()
    await w.expect()
    assert w.ws is not None
    await w.ws.send_str(raw)
    error = await w.frame()
    assert error["type"] == "error" and error["code"] == code and error["message"]
    # Still usable.
    assert "first name" in await w.say("1")


async def test_oversized_and_long_messages_are_refused_clearly(client: TestClient,
                                                              config: Config) -> None:
    w = Widget(client)
    await w.connect()
    await w.expect()
    assert w.ws is not None
    await w.ws.send_str(json.dumps({"type": "message",
                                    "text": "a" * (config.widget.max_frame_bytes + 10)}))
    assert (await w.frame())["code"] == "frame_too_large"
    await w.ws.send_json({"type": "message", "text": "b" * (config.widget.max_text_chars + 1)})
    assert (await w.frame())["code"] == "text_too_long"
    await w.ws.send_bytes(b"\x00\x01")
    assert (await w.frame())["code"] == "binary_not_supported"
    assert not w.ws.closed


async def test_frames_before_hello_are_refused(client: TestClient) -> None:
    ws = await client.ws_connect("/ws/widget")
    await ws.send_json({"type": "message", "text": "hi"})
    frame = await ws.receive_json(timeout=5)
    assert frame["code"] == "hello_required"
    await ws.close()


async def test_foreign_origin_is_refused(client: TestClient) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws/widget", headers={"Origin": "https://evil.example"})
    assert info.value.status == 403
    # Not the Host header the request names (any page can send a request to any host): the
    # site at public_url is ours.
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws/widget",
                                headers={"Origin": f"http://{client.host}:{client.port}"})
    assert info.value.status == 403
    ws = await client.ws_connect("/ws/widget", headers={"Origin": "http://127.0.0.1:8080"})
    await ws.close()


async def test_allowed_origin_from_config(make_client: MakeClient, config: Config) -> None:
    config = with_changes(config, widget={"allowed_origins": ["https://garage.example"]})
    client = await make_client(config)
    ws = await client.ws_connect("/ws/widget", headers={"Origin": "https://garage.example"})
    await ws.send_json({"type": "hello", "visitor": None, "resume_after": None,
                        "mechanic_invite": None})
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    await ws.close()


async def test_sending_too_fast_is_rate_limited(make_client: MakeClient, config: Config) -> None:
    config = with_changes(config, rate_limits={"widget_messages_per_minute": 3})
    client = await make_client(config)
    w = Widget(client)
    await w.connect()
    await w.expect()
    for _ in range(3):
        await w.say("what?")
    assert w.ws is not None
    await w.ws.send_json({"type": "message", "text": "what?"})
    assert (await w.frame())["code"] == "rate_limited"


async def _upload(client: TestClient, visitor: str | None, data: bytes,
                  name: str = "photo.png") -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="image/png")
    headers = {"X-Visitor-Token": visitor} if visitor else {}
    return await client.post("/widget/upload", data=form, headers=headers)


async def _to_photos(w: Widget) -> None:
    await w.connect()
    await w.expect()
    await w.say("1")
    await w.say("Dana")
    await w.say(GOOD_VIN, replies=2)
    await w.say("skip")
    assert "Photos" in await w.say("The engine rattles badly on cold mornings")


async def test_upload_is_attached_to_the_intake(client: TestClient, engine: AsyncEngine,
                                                config: Config) -> None:
    w = Widget(client)
    await _to_photos(w)
    resp = await _upload(client, w.visitor, PNG)
    assert resp.status == 201
    body = await resp.json()
    assert body["content_type"] == "image/png"
    assert "1 file attached" in await w.say("", attachments=[body["file"]])
    (summary,) = await w.tap("Done")
    assert "Photos/files: 1" in summary["text"]
    from core.db import create_sessionmaker
    async with create_sessionmaker(engine)() as s:
        record = await s.scalar(select(File).where(File.public_id == body["file"]))
        intake = await s.scalar(select(Intake))
    assert record is not None and intake is not None and record.intake_id == intake.id
    stored = config.uploads_dir / record.sha256[:2] / record.sha256[2:4] / record.sha256
    assert stored.read_bytes() == PNG


async def _upload_raw(client: TestClient, visitor: str, disposition: bytes,
                      data: bytes = PNG) -> aiohttp.ClientResponse:
    body = (b"--XyZ\r\nContent-Disposition: form-data; " + disposition
            + b"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n--XyZ--\r\n")
    return await client.post("/widget/upload", data=body, headers={
        "X-Visitor-Token": visitor, "Content-Type": "multipart/form-data; boundary=XyZ"})


async def test_upload_with_an_awkward_file_name_is_stored(client: TestClient) -> None:
    # A file name's bytes that are not UTF-8 (aiohttp hands them on as lone surrogates, which
    # no UTF-8 column holds: it was a 500) are stored as U+FFFD; control characters (here
    # in an RFC 5987 name) are dropped.
    w = Widget(client)
    await _to_photos(w)
    assert w.visitor is not None
    resp = await _upload_raw(client, w.visitor, b'name="file"; filename="ph\xff\xfeoto.png"')
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["name"] == "ph\ufffd\ufffdoto.png"
    resp = await _upload_raw(client, w.visitor,
                             b"name=\"file\"; filename*=UTF-8''ph%07%00oto%C3%A9.png")
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["name"] == "photo\u00e9.png"


async def test_an_upload_aiohttp_cannot_parse_gets_a_clear_error(client: TestClient) -> None:
    # A part's header with a control character in it: a 400 that says what to send (a 500
    # before).
    w = Widget(client)
    await _to_photos(w)
    assert w.visitor is not None
    resp = await _upload_raw(client, w.visitor, b'name="file"; filename="ph\x07oto.png"')
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_request"


async def test_upload_over_the_limit_is_rejected(make_client: MakeClient, config: Config) -> None:
    config = with_changes(config, uploads={"max_bytes": 1000})
    client = await make_client(config)
    w = Widget(client)
    await _to_photos(w)
    resp = await _upload(client, w.visitor, PNG + b"\x00" * 2000)
    assert resp.status == 413
    assert "smaller" in (await resp.json())["error"]["message"]
    # Nothing of the refused file was kept.
    assert not config.uploads_dir.exists() or not any(config.uploads_dir.rglob("*"))


async def test_upload_of_a_wrong_type_is_rejected(client: TestClient) -> None:
    w = Widget(client)
    await _to_photos(w)
    # Claims to be a PNG, is really a shell script: the bytes decide.
    resp = await _upload(client, w.visitor, b"#!/bin/sh\nrm -rf /\n", name="x.png")
    assert resp.status == 415
    error = (await resp.json())["error"]
    assert error["code"] == "unsupported_type" and "PDF" in error["message"]


async def test_upload_needs_a_known_visitor(client: TestClient) -> None:
    assert (await _upload(client, None, PNG)).status == 401
    assert (await _upload(client, "y" * 32, PNG)).status == 401


async def test_someone_elses_file_cannot_be_attached(client: TestClient,
                                                     engine: AsyncEngine) -> None:
    owner, thief = Widget(client), Widget(client)
    await _to_photos(owner)
    await _to_photos(thief)
    file_id = (await (await _upload(client, owner.visitor, PNG)).json())["file"]
    assert "wasn't uploaded from this chat" in await thief.say("", attachments=[file_id])
    from core.db import create_sessionmaker
    async with create_sessionmaker(engine)() as s:
        record = await s.scalar(select(File).where(File.public_id == file_id))
    assert record is not None and record.intake_id is None


async def test_hostile_text_over_the_socket_is_stored_verbatim(client: TestClient,
                                                               engine: AsyncEngine) -> None:
    w = Widget(client)
    await w.connect()
    await w.expect()
    evil = "<img src=x onerror=alert(1)>\u0000\u001b[31m" + "é" * 3000
    await w.say(evil)
    from core.db import create_sessionmaker
    async with create_sessionmaker(engine)() as s:
        texts = (await s.scalars(select(Message.text).where(Message.direction == "in"))).all()
    assert "<img src=x onerror=alert(1)>[31m" + "é" * 3000 in texts


async def test_uploads_from_an_allowed_site_pass_the_browsers_cors_check(
        make_client: MakeClient, config: Config) -> None:
    config = with_changes(config, widget={"allowed_origins": ["https://garage.example"]})
    client = await make_client(config)
    ok = await client.options("/widget/upload", headers={
        "Origin": "https://garage.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-visitor-token"})
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "https://garage.example"
    assert "X-Visitor-Token" in ok.headers["Access-Control-Allow-Headers"]
    refused = await client.options("/widget/upload", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert refused.status == 403 and "Access-Control-Allow-Origin" not in refused.headers
    w = Widget(client)
    await _to_photos(w)
    form = aiohttp.FormData()
    form.add_field("file", PNG, filename="p.png", content_type="image/png")
    resp = await client.post("/widget/upload", data=form, headers={
        "X-Visitor-Token": w.visitor or "", "Origin": "https://garage.example"})
    assert resp.status == 201
    assert resp.headers["Access-Control-Allow-Origin"] == "https://garage.example"
    evil = await client.post("/widget/upload", data=b"", headers={
        "X-Visitor-Token": w.visitor or "", "Origin": "https://evil.example"})
    assert evil.status == 403


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_reply_written_by_another_server_reaches_the_open_socket(
        make_client: MakeClient, config: Config, engine_factory: Any) -> None:
    # Two `serve` processes share PostgreSQL: the widget is connected to the first; the second
    # handles a message for the same visitor (say, from another tab). With SQLite there is
    # one process, so this is PostgreSQL's LISTEN/NOTIFY path.
    first = await make_client(config)
    second = await make_client(config, engine=engine_factory())
    w = Widget(first)
    await w.connect()
    await w.expect()
    await w.tap("Quick Chat")  # a visitor with a record (a first message makes it)
    assert w.visitor is not None
    await second.app[ENGINE].receive(Inbound(channel="web", address=visitor_address(w.visitor),
                                             text="status"))
    (reply,) = await w.expect()
    assert "Quick Chat" in reply["text"] and "being filled in" in reply["text"]


# Only PostgreSQL runs writers side by side; on SQLite ids are taken in commit order.
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_message_committed_late_with_a_lower_id_still_reaches_the_socket(
        client: TestClient, backend: str) -> None:
    w = Widget(client)
    await w.connect()
    await w.expect()
    await w.tap("Quick Chat")  # a visitor with a record (a first message makes it)
    assert w.visitor is not None
    runtime = client.app[RUNTIME]
    async with runtime.transaction() as slow:  # say, a payment webhook still at work
        identity = await slow.session.scalar(select(Identity).where(
            Identity.address == visitor_address(w.visitor)))
        # A keyed notice is written at once (its id taken), and not yet committed.
        assert await tell(slow, identity, "A notice from a slow transaction",
                          runtime.clock.now(), key="late:1")
        # Meanwhile the customer's own message is answered, with a higher id, and committed.
        (answer,) = await w.tap("Quick Chat")
    (late,) = await w.expect()
    assert late["text"] == "A notice from a slow transaction"
    assert late["id"] < answer["id"]
    await w.close()
