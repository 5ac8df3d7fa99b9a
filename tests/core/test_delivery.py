"""The outbox dispatcher against a scripted provider: retries, 429s, order, leases."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select

from core.clock import ManualClock
from core.delivery import OutboxDispatcher
from core.errors import PermanentFailure, RetryLater
from core.messages import Outbound
from core.models import Customer, Identity, Message, OutboxItem
from core.outbox import enqueue, enqueue_many
from core.ratelimit import ChannelLimiter
from core.runtime import Runtime


class ScriptedProvider:
    """A provider stand-in: answers each send from a script, then succeeds; records sends."""

    def __init__(self, clock: ManualClock, script: list[Exception | None] | None = None) -> None:
        self.clock = clock
        self.script = list(script or [])
        self.delivered: list[tuple[str, str, datetime]] = []
        self.attempts: list[tuple[str, str, datetime]] = []

    async def send(self, outbound: Outbound) -> str:
        self.attempts.append((outbound.address, outbound.text, self.clock.now()))
        if self.script:
            failure = self.script.pop(0)
            if failure is not None:
                raise failure
        self.delivered.append((outbound.address, outbound.text, self.clock.now()))
        return f"pm-{len(self.delivered)}"


async def queue(runtime: Runtime, address: str, *texts: str) -> None:
    now = runtime.clock.now()
    async with runtime.transaction() as uow:
        s = uow.session
        identity = await s.scalar(select(Identity).where(Identity.address == address))
        if identity is None:
            customer = Customer(created_at=now)
            s.add(customer)
            await s.flush()
            identity = Identity(channel="flaky", address=address, customer_id=customer.id,
                                created_at=now)
            s.add(identity)
            await s.flush()
        for text in texts:
            await enqueue(uow, identity, Outbound("flaky", address, text), now)


async def test_failures_then_429_every_message_once_in_order(runtime: Runtime,
                                                             clock: ManualClock) -> None:
    provider = ScriptedProvider(clock, [RetryLater("HTTP 500"), RetryLater("HTTP 502"),
                                        RetryLater("HTTP 429", retry_after=2)])
    dispatcher = OutboxDispatcher(runtime, {"flaky": provider})
    await queue(runtime, "A", "a1", "a2", "a3")
    await queue(runtime, "B", "b1", "b2")
    start = clock.now()
    for _ in range(40):
        await dispatcher.run_once()
        clock.advance(0.25)
    assert [t for a, t, _ in provider.delivered if a == "A"] == ["a1", "a2", "a3"]
    assert [t for a, t, _ in provider.delivered if a == "B"] == ["b1", "b2"]
    assert len(provider.delivered) == 5
    # The 429 asked for 2 s: the retry of that message came no sooner.
    failed_429 = provider.attempts[2]
    retry = next(at for a, t, at in provider.attempts[3:] if (a, t) == failed_429[:2])
    assert (retry - failed_429[2]).total_seconds() >= 2
    assert (provider.delivered[-1][2] - start).total_seconds() < 10
    async with runtime.sessions() as s:
        rows = (await s.scalars(select(OutboxItem).where(OutboxItem.channel == "flaky"))).all()
    assert {r.status for r in rows} == {"sent"}
    assert all(r.provider_message_id for r in rows)


async def test_a_later_message_never_overtakes_one_waiting_to_retry(runtime: Runtime,
                                                                    clock: ManualClock) -> None:
    provider = ScriptedProvider(clock, [RetryLater("HTTP 429", retry_after=30)])
    dispatcher = OutboxDispatcher(runtime, {"flaky": provider})
    await queue(runtime, "A", "first", "second")
    await dispatcher.run_once()
    clock.advance(10)
    await dispatcher.run_once()
    assert provider.delivered == []
    clock.advance(25)
    await dispatcher.run_once()
    await dispatcher.run_once()
    assert [t for _, t, _ in provider.delivered] == ["first", "second"]


async def test_lease_of_a_dead_worker_is_reclaimed(runtime: Runtime, clock: ManualClock) -> None:
    provider = ScriptedProvider(clock)
    await queue(runtime, "A", "hello")
    dead = OutboxDispatcher(runtime, {"flaky": provider}, lease_seconds=60)
    assert len(await dead.claim(clock.now())) == 1  # ...and then the process dies
    alive = OutboxDispatcher(runtime, {"flaky": provider}, lease_seconds=60)
    assert (await alive.run_once()).sent == 0
    clock.advance(61)
    assert (await alive.run_once()).sent == 1
    assert [t for _, t, _ in provider.delivered] == ["hello"]


async def test_permanent_failure_stops_and_marks_identity_unreachable(
        runtime: Runtime, clock: ManualClock) -> None:
    provider = ScriptedProvider(clock, [PermanentFailure("Forbidden: bot was blocked")])
    dispatcher = OutboxDispatcher(runtime, {"flaky": provider})
    await queue(runtime, "A", "hi", "are you there?")
    await dispatcher.run_once()
    clock.advance(600)
    await dispatcher.run_once()
    async with runtime.sessions() as s:
        identity = await s.scalar(select(Identity).where(Identity.address == "A"))
        statuses = (await s.scalars(select(OutboxItem.status).order_by(OutboxItem.id))).all()
    assert identity is not None and not identity.reachable
    assert "blocked" in (identity.unreachable_reason or "")
    assert statuses[0] == "failed"
    assert len(provider.attempts) == 2  # no retries of the failed one


async def test_dispatcher_wakes_on_commit_without_waiting_for_a_poll(
        runtime: Runtime, clock: ManualClock) -> None:
    provider = ScriptedProvider(clock)
    dispatcher = OutboxDispatcher(runtime, {"flaky": provider})
    task = asyncio.create_task(dispatcher.run_forever(idle_poll=3600))
    try:
        await asyncio.sleep(0.1)
        await queue(runtime, "A", "ping")  # its commit wakes the dispatcher (nothing else)
        for _ in range(200):
            if provider.delivered:
                break
            await asyncio.sleep(0.02)
        assert [t for _, t, _ in provider.delivered] == ["ping"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_dispatcher_stops_when_cancelled_even_mid_query(runtime: Runtime,
                                                              clock: ManualClock) -> None:
    import random

    provider = ScriptedProvider(clock)
    dispatcher = OutboxDispatcher(runtime, {"flaky": provider})
    rng = random.Random(7)
    for _ in range(40):
        task = asyncio.create_task(dispatcher.run_forever(idle_poll=0.001))
        await asyncio.sleep(rng.random() * 0.01)
        runtime.hub.publish([])  # a wake-up landing with the cancel
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "the dispatcher ignored being stopped"
        assert task.cancelled() or task.exception() is None


class GatedProvider:
    """Each send waits until the test lets it through, so sends can be kept under way."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    async def send(self, outbound: Outbound) -> str:
        self.started.append(outbound.address)
        gate = self.gates.setdefault(outbound.address, asyncio.Event())
        await gate.wait()
        return f"pm-{outbound.address}"


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


async def test_next_rows_are_claimed_while_earlier_ones_are_still_being_sent(
        runtime: Runtime) -> None:
    # A rate-limited channel should never sit idle waiting on a claim between batches.
    chats = [f"chat{i}" for i in range(8)]
    for chat in chats:
        await queue(runtime, chat, f"to {chat}")
    provider = GatedProvider()
    dispatcher = OutboxDispatcher(runtime, {"flaky": provider}, batch=4)
    task = asyncio.create_task(dispatcher.run_forever(idle_poll=3600))
    try:
        await until(lambda: len(provider.started) == 4)
        for chat in provider.started[:2]:  # half of the first batch is done...
            provider.gates.setdefault(chat, asyncio.Event()).set()
        # ...and the next batch is already being sent beside the other half.
        await until(lambda: len(provider.started) == 8)
        first_batch = provider.started[:4]
        assert not any(provider.gates[chat].is_set() for chat in first_batch[2:])
        for chat in chats:
            provider.gates.setdefault(chat, asyncio.Event()).set()
        for _ in range(500):
            async with runtime.sessions() as s:
                statuses = set((await s.scalars(select(OutboxItem.status))).all())
            if statuses == {"sent"}:
                break
            await asyncio.sleep(0.01)
        assert statuses == {"sent"}
        assert sorted(provider.started) == sorted(chats)  # each once
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_many_keyed_messages_are_queued_once_and_keep_the_transcript_in_order(
        runtime: Runtime) -> None:
    # enqueue_many writes the messages with whatever else waits (here an earlier reply), then
    # their keyed outbox rows: a key queued already keeps its row and leaves no stray message.
    await queue(runtime, "k1", "before")
    now = runtime.clock.now()

    async def queue_many(keys: list[str]) -> dict[str, int]:
        async with runtime.transaction() as uow:
            s = uow.session
            identity = await s.scalar(select(Identity).where(Identity.address == "k1"))
            assert identity is not None
            await enqueue(uow, identity, Outbound("flaky", "k1", "first in this transaction"), now)
            queued = await enqueue_many(uow, [(identity.id, Outbound(
                "flaky", "k1", f"keyed {key}", dedupe_key=key)) for key in keys], now)
            await enqueue(uow, identity, Outbound("flaky", "k1", "last in this transaction"), now)
            return queued

    assert sorted(await queue_many(["a", "b", "a"])) == ["a", "b"]
    again = await queue_many(["b", "c"])
    assert sorted(again) == ["c"]
    async with runtime.sessions() as s:
        messages = (await s.scalars(select(Message).where(Message.direction == "out")
                                    .order_by(Message.id))).all()
        outbox = {row.message_id: row for row in (await s.scalars(select(OutboxItem))).all()}
    assert [m.text for m in messages] == [
        "before", "first in this transaction", "keyed a", "keyed b", "last in this transaction",
        "first in this transaction", "keyed c", "last in this transaction"]
    # Every message has its outbox row, pointing at it (no UPDATE needed, none left unlinked).
    assert all(m.id in outbox and outbox[m.id].payload["text"] == m.text for m in messages)
    assert len(outbox) == len(messages) and again["c"] == outbox[messages[6].id].id


async def test_only_a_commit_that_queues_for_a_provider_wakes_the_dispatcher(
        runtime: Runtime) -> None:
    now = runtime.clock.now()
    async with runtime.transaction() as uow:
        s = uow.session
        customer = Customer(created_at=now)
        s.add(customer)
        await s.flush()
        web, flaky = (Identity(channel=channel, address=f"{channel}-1", customer_id=customer.id,
                               created_at=now) for channel in ("web", "flaky"))
        s.add_all([web, flaky])
    hub = runtime.hub
    socket = hub.subscribe(web.id)
    hub.outbox_wakeup.clear()

    # Widget replies, keyed or not, are read from the transcript: the socket is woken with
    # them, the dispatcher (whose every wake-up is a claim query) is not.
    async with runtime.transaction() as uow:
        s = uow.session
        await enqueue(uow, web, Outbound("web", web.address, "reply"), now)
        await enqueue(uow, web, Outbound("web", web.address, "notice", dedupe_key="n:1"), now)
        await enqueue_many(uow, [(web.id, Outbound("web", web.address, "offer"))], now)
    assert [row.text for row in socket.take()[0]] == ["reply", "notice", "offer"]
    assert not hub.outbox_wakeup.is_set()

    with contextlib.suppress(RuntimeError):  # rolled back: nobody is woken
        async with runtime.transaction() as uow:
            s = uow.session
            await enqueue(uow, flaky, Outbound("flaky", flaky.address, "lost"), now)
            raise RuntimeError
    assert not hub.outbox_wakeup.is_set()

    for queued in (
            lambda u: enqueue(u, flaky, Outbound("flaky", flaky.address, "one"), now),
            lambda u: enqueue_many(u, [(web.id, Outbound("web", web.address, "two")),
                                       (flaky.id, Outbound("flaky", flaky.address, "two"))],
                                   now)):
        async with runtime.transaction() as uow:
            s = uow.session
            await queued(uow)
        assert hub.outbox_wakeup.is_set()
        hub.outbox_wakeup.clear()


async def test_a_drain_hands_back_the_rows_claimed_and_not_sent(runtime: Runtime) -> None:
    """SIGTERM's drain (bot/drain.py): the send under way finishes, the rows claimed but still
    waiting for the rate limiter are released at once, and another process claims them at
    once (not after the lease runs out); nothing is claimed any more."""
    chats = [f"chat{i}" for i in range(4)]
    for chat in chats:
        await queue(runtime, chat, f"to {chat}")
    provider = GatedProvider()
    # One send a hundred seconds: the first row is sent, the other three wait their turn.
    dispatcher = OutboxDispatcher(runtime, {"flaky": provider},
                                  {"flaky": ChannelLimiter(0.01, None)})
    task = asyncio.create_task(dispatcher.run_forever(idle_poll=3600))
    try:
        await until(lambda: len(provider.started) == 1)
        handing_back = asyncio.create_task(dispatcher.hand_back(60))
        await until(dispatcher.handing_back.is_set)
        assert not handing_back.done()  # the send under way is waited for
        provider.gates.setdefault(provider.started[0], asyncio.Event()).set()
        assert await handing_back == 3
        await asyncio.wait_for(task, 5)  # run_forever has returned
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await dispatcher.claim(runtime.clock.now()) == []
    async with runtime.sessions() as s:
        rows = (await s.execute(select(OutboxItem.address, OutboxItem.status,
                                       OutboxItem.lease_owner))).all()
    assert sorted(status for _, status, _ in rows) == ["pending"] * 3 + ["sent"]
    assert {owner for _, _, owner in rows} == {None}
    other = OutboxDispatcher(runtime, {"flaky": provider})
    assert sorted(r.address for r in await other.claim(runtime.clock.now())) == sorted(
        chat for chat in chats if chat != provider.started[0])
