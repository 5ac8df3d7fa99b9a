"""The attacks and accidents a probe of the service found (each failed before its fix): poison
ids, NUL route parameters, huge resume_after, invite guessing, anonymous floods, lost
frames, forms without their token, /metrics for anyone, a database gone."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.app import ENGINE
from core.clock import ManualClock
from core.config import Config, with_changes
from core.db import create_engine
from core.mechanics import invite_mechanic
from core.messages import Inbound
from core.models import Checkout, Customer, File, Identity, Message
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.billing.helpers import awaiting_payment
from tests.channels.test_widget_ws import OPEN, PNG, MakeClient, Widget, _upload
from tests.helpers import Chat


async def _raw(client: TestClient) -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect("/ws/widget")
    OPEN.append(ws)
    return ws


async def count(runtime: Runtime, model: type) -> int:
    async with runtime.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_poison_attachment_id_is_refused_at_the_edge_and_harms_no_batch(
        make_client: MakeClient, config: Config) -> None:
    client = await make_client(config)
    w = Widget(client)
    await w.connect()
    await w.expect()
    assert w.ws is not None
    await w.ws.send_json({"type": "message", "text": "hi", "attachments": ["f_abc\x00def00"]})
    refused = await w.frame()
    assert (refused["type"], refused["code"]) == ("error", "bad_attachments")
    # Past the edge (any channel), the engine drops what no column could hold: the others in
    # the same batch are answered in one transaction, and so is the poisoned one.
    engine = client.app[ENGINE]
    poisoned = Inbound(channel="web", address="v_poison", text="hi",
                       attachments=("f_abc\x00def00",), provider_id="x\x00y")
    results = await asyncio.gather(engine.handle(poisoned), *(
        engine.handle(Inbound(channel="web", address=f"v_ok{i}", text="hi")) for i in range(5)))
    assert all(r.replies for r in results)


@pytest.mark.parametrize("path", ["/pay/a%00b", "/pay/a%00b/done", "/pay/a%00b/cancelled",
                                  "/pay/co_%00%00%00%00%00%00%00%00%00%00"])
async def test_a_nul_in_a_route_parameter_is_a_404_not_a_500(
        make_client: MakeClient, config: Config, path: str) -> None:
    client = await make_client(config)
    assert (await client.get(path)).status == 404
    if path.count("/") == 2:
        assert (await client.post(path)).status == 404


async def test_huge_resume_after_and_a_failed_hello_leave_the_socket_usable(
        make_client: MakeClient, config: Config) -> None:
    client = await make_client(config)
    w = Widget(client)
    await w.connect()
    await w.expect()
    await w.tap("Quick Chat")
    # 2^31 is past a 32-bit id, as ids become on a busy service: a replay, not "internal".
    again = Widget(client)
    again.visitor = w.visitor
    await again.connect(resume_after=2**31)
    assert (await again.say("status"))  # pushes arrive after that hello
    ws = await _raw(client)
    await ws.send_json({"type": "hello", "visitor": w.visitor, "resume_after": 2**64,
                        "mechanic_invite": None})
    assert (await ws.receive_json(timeout=5))["code"] == "bad_resume_after"
    await ws.send_json({"type": "hello", "visitor": w.visitor, "resume_after": None,
                        "mechanic_invite": None})
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"


async def test_guessing_invite_codes_is_limited_logged_counted_and_invites_expire(
        make_client: MakeClient, config: Config, runtime: Runtime, clock: ManualClock) -> None:
    client = await make_client(config)
    ws = await _raw(client)
    answers = []
    for guess in ("AAAA1111", "BBBB2222", "CCCC3333", "DDDD4444"):
        await ws.send_json({"type": "hello", "visitor": None, "resume_after": None,
                            "mechanic_invite": guess})
        answers.append((await ws.receive_json(timeout=5))["code"])
    assert answers == ["invalid_invite"] * 3 + ["too_many_attempts"]
    for n in range(10):  # other sockets from the same address: 10 failures an hour in all
        other = await _raw(client)
        await other.send_json({"type": "hello", "visitor": None, "resume_after": None,
                               "mechanic_invite": f"EEEE{n:04d}"})
        answers.append((await other.receive_json(timeout=5))["code"])
    assert answers[-1] == "too_many_attempts"
    metrics = await (await client.get("/metrics")).text()
    assert "autodoctor_invite_failures_total 10.0" in metrics
    # An invite not used within [invites] ttl_days is refused, and says so when made.
    async with runtime.sessions.begin() as s:
        made = await invite_mechanic(s, runtime.config, "Late", clock.now())
    assert made.expires_at.startswith((clock.now() + timedelta(days=7)).date().isoformat())
    clock.advance(days=7, seconds=1)
    fresh = await make_client(config)
    ws = await _raw(fresh)
    await ws.send_json({"type": "hello", "visitor": None, "resume_after": None,
                        "mechanic_invite": made.invite_code})
    assert (await ws.receive_json(timeout=5))["code"] == "invalid_invite"


async def test_a_hello_costs_no_records_and_new_visitors_and_uploads_are_limited(
        make_client: MakeClient, config: Config, runtime: Runtime) -> None:
    config = with_changes(config, rate_limits={"new_visitors_per_hour": 2,
                                               "uploads_per_hour": 3},
                          uploads={"max_unattached_per_visitor": 2})
    client = await make_client(config)
    visitors = [Widget(client) for _ in range(3)]
    for v in visitors:
        await v.connect()
        await v.expect()
    assert await count(runtime, Customer) == 0  # greeted, nothing stored
    await visitors[0].tap("Quick Chat")
    await visitors[1].tap("Quick Chat")
    assert await count(runtime, Customer) == 2
    assert visitors[2].ws is not None
    await visitors[2].ws.send_json({"type": "message", "text": "1"})
    assert (await visitors[2].frame())["code"] == "rate_limited"
    assert await count(runtime, Customer) == 2
    # Uploads: a quota of files attached to nothing per visitor, and a rate per address.
    statuses = [(await _upload(client, visitors[0].visitor, PNG)).status for _ in range(4)]
    assert statuses == [201, 201, 429, 429]


async def test_uploads_never_attached_are_deleted_after_a_day(
        client: TestClient, runtime: Runtime, clock: ManualClock) -> None:
    w = Widget(client)
    await w.connect()
    await w.expect()
    resp = await _upload(client, w.visitor, PNG)
    assert resp.status == 201
    async with runtime.sessions() as s:
        stored = await s.scalar(select(File))
    assert stored is not None
    from core.files import blob_path

    path = blob_path(runtime.config, stored.sha256)
    assert path.exists()
    clock.advance(hours=23)
    assert (await run_sweeps(runtime)).uploads_deleted == 0
    clock.advance(hours=2)
    assert (await run_sweeps(runtime)).uploads_deleted == 1
    assert await count(runtime, File) == 0 and not path.exists()


@pytest.fixture
async def client(make_client: MakeClient, config: Config) -> TestClient:
    return await make_client(config)


async def test_frames_are_acknowledged_after_the_commit_and_a_resent_one_is_handled_once(
        client: TestClient, runtime: Runtime) -> None:
    w = Widget(client)
    await w.connect()
    await w.expect()
    assert w.ws is not None
    for _ in range(2):  # sent twice (the widget resends what was not acknowledged)
        await w.ws.send_json({"type": "action", "payload": "plan:chat10", "client_id": "c-1"})
        frames = [await w.frame() for _ in range(2)] if _ == 0 else [await w.frame()]
        assert frames[-1] == {"type": "ack", "client_id": "c-1"}
    async with runtime.sessions() as s:
        inbound = (await s.scalars(select(Message.action).where(
            Message.direction == "in"))).all()
    assert inbound == ["plan:chat10"]


async def test_the_pay_form_needs_its_token_metrics_theirs_and_no_version_is_shown(
        make_client: MakeClient, config: Config, runtime: Runtime) -> None:
    client = await make_client(config)
    bought = await awaiting_payment(runtime, "chat10")
    forged = await client.post(f"/pay/{bought.checkout.ref}", data={"csrf": "0" * 64})
    assert forged.status == 403
    async with runtime.sessions() as s:
        checkout = await s.get(Checkout, bought.checkout.id)
    assert checkout is not None and checkout.status == "open"
    assert "aiohttp" not in forged.headers.get("Server", "")
    guarded = await make_client(with_changes(config, secrets={
        **config.secrets.__dict__, "metrics_token": "m-token"}))
    assert (await guarded.get("/metrics")).status == 401
    assert (await guarded.get("/metrics", headers={
        "Authorization": "Bearer m-token"})).status == 200


# A SQLite file cannot go away: the database that is down here is a PostgreSQL.
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_pages_answer_503_while_the_database_is_down(
        make_client: MakeClient, config: Config, backend: str) -> None:
    gone = create_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")
    client = await make_client(config, engine=gone)
    try:
        page = await client.get("/pay/co_abcdefghijklmnop")
        assert page.status == 503 and "Back in a moment" in await page.text()
        assert (await client.get("/healthz")).status == 503
    finally:
        await gone.dispose()


def _chat(engine: Any, address: str) -> Chat:
    return Chat(engine, channel="web", address=address)


async def test_engine_batches_survive_a_message_whose_flow_fails(
        runtime: Runtime, engine: AsyncEngine) -> None:
    from core.engine import Engine
    from tests.helpers import counting_commits

    async def router(ctx: Any) -> None:
        if ctx.text == "boom":
            raise RuntimeError("poison")
        from bot.flows import route

        await route(ctx)

    bot = Engine(runtime, router)
    with counting_commits(engine) as commits:
        results = await asyncio.gather(*(
            _chat(bot, f"v_b{i}").send("boom" if i % 10 == 3 else "hi") for i in range(30)),
            return_exceptions=True)
    failed = [r for r in results if isinstance(r, RuntimeError)]
    assert len(failed) == 3
    # 27 answered in a few transactions, not one each.
    assert len(commits) <= 6, len(commits)
    assert await count(runtime, Identity) == 27

