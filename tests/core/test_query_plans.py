"""The service's recurring statements find their rows through indexes, not by reading tables
that grow with every customer (SQLite's own planner, asked with EXPLAIN QUERY PLAN about the
very statements the service ran)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.flows import route
from core.clock import ManualClock
from core.delivery import OutboxDispatcher
from core.engine import Engine
from core.models import Identity
from core.outbox import tell
from core.runtime import Runtime
from core.sweeps import run_sweeps
from tests.core.test_delivery import ScriptedProvider
from tests.core.test_dispatch import offer, tap_accept
from tests.factories import linked_mechanic, paid_request
from tests.helpers import Chat, recording_executions, scans


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_delivering_offers_and_sweeping_read_through_indexes(
        runtime: Runtime, engine: AsyncEngine, clock: ManualClock) -> None:
    sam = await linked_mechanic(runtime, "Sam", channel="telegram", address="101")
    await linked_mechanic(runtime, "Ann", channel="telegram", address="102")
    bot = Engine(runtime, route)
    requests = [await paid_request(runtime, address=f"c{i}") for i in range(3)]
    for request in requests:
        await offer(runtime, request)
    await tap_accept(bot, sam, requests[0].ref)
    dispatcher = OutboxDispatcher(runtime, {"telegram": ScriptedProvider(clock)})
    with recording_executions(engine) as runs:
        # Offers sent (each records its provider message id on the offer), then every sweep
        # with something to do: one request unattended, the matched one a no-show.
        sent = 0
        for _ in range(10):
            sent += (await dispatcher.run_once()).sent
            clock.advance(1)
        assert sent >= 6
        clock.advance(1800)
        stats = await run_sweeps(runtime)
    assert stats.unattended == 2 and stats.no_show == 1, stats
    assert any("UPDATE offers" in sql for sql, _ in runs)
    found = await scans(engine, runs)
    assert found == [], "\n".join(f"{line}: {sql}" for sql, line in found)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_an_intake_reads_through_indexes(runtime: Runtime, engine: AsyncEngine) -> None:
    # Every message of an intake, through the engine, as the widget's customers send them
    # (a second customer first, so each lookup has rows to tell apart).
    bot = Engine(runtime, route)
    await Chat(bot, channel="web", address="other").send("hi")
    chat = Chat(bot, channel="web", address="visitor")
    with recording_executions(engine) as runs:
        await chat.send("hi")
        await chat.send("2")
        await chat.send("Dana")
        await chat.send("1HGCM82633A004352")
        await chat.send("84000")
        await chat.send("Grinding noise from the front left wheel when braking")
        await chat.tap("Skip")
        await chat.tap("Confirm and pay")
        replies = await chat.tap("I agree")
        await chat.send("status")
    assert "/pay/" in (replies[-1].link.url if replies[-1].link else "")
    found = await scans(engine, runs)
    assert found == [], "\n".join(f"{line}: {sql}" for sql, line in found)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_notice_already_queued_is_dropped_through_indexes(
        runtime: Runtime, engine: AsyncEngine) -> None:
    # The second notice with a key is not kept: its message row is deleted, which sets the
    # outbox rows pointing at it to NULL (ON DELETE SET NULL): found by index, not by reading
    # every outbox row ever queued.
    request = await paid_request(runtime)
    told = []
    with recording_executions(engine) as runs:
        for _ in range(2):
            async with runtime.transaction() as uow:
                identity = await uow.session.scalar(select(Identity).where(
                    Identity.customer_id == request.customer_id))
                told.append(await tell(uow, identity, "Your request is in.",
                                       runtime.clock.now(), key=f"notice:{request.id}"))
    assert told == [True, False]
    assert any(sql.lstrip().upper().startswith("DELETE FROM MESSAGES") for sql, _ in runs)
    found = await scans(engine, runs)
    assert found == [], "\n".join(f"{line}: {sql}" for sql, line in found)
