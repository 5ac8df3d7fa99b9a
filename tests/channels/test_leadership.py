"""Provider limits for the whole deployment: of several processes on one PostgreSQL database,
one sends Telegram (so the sum stays within 30 msg/s and 1/s per chat) and one polls
getUpdates; when its connection dies another takes over and every message still arrives,
once and in order. On SQLite (one process) the one process holds every role."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiogram import Bot as AiogramBot
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.offline import OfflinePayments
from bot.app import _limiters
from bot.flows import route
from bot.texts import text as render_text
from channels.telegram import POLL_ROLE, TelegramChannel
from channels.telegram_send import TelegramSender
from core.clock import ManualClock
from core.config import Config
from core.delivery import OutboxDispatcher
from core.engine import Engine
from core.leadership import Leadership
from core.models import Base, OutboxItem
from core.runtime import Runtime
from tests.channels.telegram_outbox import bot_on, chats_with_notes
from tests.channels.test_telegram import TOKEN, telegram_config
from tests.standins.telegram_api import TelegramApi

SEND = "send:telegram"
ROLES = {"telegram": SEND}


@pytest.fixture
async def strict_api() -> AsyncIterator[TelegramApi]:
    api = TelegramApi(TOKEN, flood_limits=True)
    await api.start()
    yield api
    await api.close()


@pytest.fixture
async def processes(engine_factory: Callable[[], AsyncEngine], config: Config,
                    clock: ManualClock) -> AsyncIterator[Callable[..., Runtime]]:
    """Makes runtimes on one database, each with its own engine, as two `serve` would."""
    first = engine_factory()
    async with first.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    engines = [first]

    def make(changed: Config | None = None) -> Runtime:
        engine = engines.pop() if engines else engine_factory()
        return Runtime.build(changed or config, engine, OfflinePayments(config), render_text,
                             clock)

    yield make




def _dispatcher(runtime: Runtime, api: TelegramApi, leadership: Leadership | None,
                batch: int = 100) -> tuple[OutboxDispatcher, AiogramBot]:
    bot = bot_on(api)
    dispatcher = OutboxDispatcher(
        runtime, {"telegram": TelegramSender(bot)}, _limiters(runtime.config),
        leadership=leadership, roles=ROLES if leadership is not None else None, batch=batch)
    return dispatcher, bot


async def _sent(runtime: Runtime) -> int:
    async with runtime.sessions() as session:
        return len((await session.scalars(
            select(OutboxItem.id).where(OutboxItem.status == "sent"))).all())


def _sent_here(runtime: Runtime) -> float:
    return runtime.metrics.registry.get_sample_value(
        "autodoctor_messages_out_total", {"channel": "telegram"}) or 0.0


async def _until(reached: Callable[[], Awaitable[bool]]) -> None:
    """Wait (30 s at most) until `reached()` says so."""
    for _ in range(600):
        if await reached():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not reached within 30 s")


def _texts_per_chat(api: TelegramApi) -> dict[int | None, list[str]]:
    chats: dict[int | None, list[str]] = {}
    for call in api.calls:
        if call.method == "sendMessage" and call.status == 200:
            chats.setdefault(call.chat_id, []).append(str(call.params["text"]))
    return chats


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_on_sqlite_the_one_process_holds_every_role(runtime: Runtime) -> None:
    leadership = Leadership(runtime.engine)
    leadership.want(SEND)
    leadership.want(POLL_ROLE)
    await leadership.check()
    assert leadership.held == [POLL_ROLE, SEND]
    dispatcher = OutboxDispatcher(runtime, {"telegram": TelegramSender(
        AiogramBot(TOKEN))}, leadership=leadership, roles=ROLES)
    assert dispatcher.sending() == ["telegram"]


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_two_processes_send_telegram_within_its_limits(
        processes: Callable[..., Runtime], strict_api: TelegramApi) -> None:
    chats = 90  # about 3 s of sends at the bot's limit; two senders would make 54/s
    first, second = processes(), processes()
    await chats_with_notes(first, strict_api, [1] * chats)
    leaders = [Leadership(r.engine, retry_seconds=0.2) for r in (first, second)]
    # Small batches: each process claims a share, as it would with more chats than a batch.
    made = [_dispatcher(r, strict_api, lead, batch=10)
            for r, lead in zip((first, second), leaders, strict=True)]
    for leadership in leaders:
        await leadership.check()
    tasks = [asyncio.create_task(d.run_forever(idle_poll=0.05)) for d, _ in made]
    try:
        async def all_sent() -> bool:
            return await _sent(first) >= chats

        await _until(all_sent)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for leadership in leaders:
            await leadership.release()
        for _, bot in made:
            await bot.session.close()
    assert strict_api.flood_refusals == 0
    assert sorted([_sent_here(first), _sent_here(second)]) == [0, chats]
    assert all(len(texts) == 1 for texts in _texts_per_chat(strict_api).values())


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_when_the_senders_connection_dies_another_takes_over_and_sends_everything_once(
        processes: Callable[..., Runtime], strict_api: TelegramApi, clock: ManualClock) -> None:
    chats, per_chat = 5, 3
    first, second = processes(), processes()
    await chats_with_notes(first, strict_api, [per_chat] * chats)
    old, new = Leadership(first.engine), Leadership(second.engine)
    old_sender, old_bot = _dispatcher(first, strict_api, old)
    new_sender, new_bot = _dispatcher(second, strict_api, new)
    try:
        await old.check()
        await new.check()
        assert old.held == [SEND] and new.held == []
        # The holder claims each chat's first message, then dies before sending them.
        assert len(await old_sender.claim(clock.now())) == chats
        async with second.engine.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"),
                               {"pid": old.backend_pid})
        await old.check()
        assert old.held == [] and old_sender.sending() == []
        await new.check()
        assert new.held == [SEND]
        # Its claims hold each chat until their lease runs out: nothing overtakes them.
        assert (await new_sender.run_once()).sent == 0
        clock.advance(seconds=61)
        for _ in range(per_chat * 4):
            await new_sender.run_once()
            clock.advance(seconds=2)
    finally:
        await old.release()
        await new.release()
        await old_bot.session.close()
        await new_bot.session.close()
    assert await _sent(second) == chats * per_chat
    expected = [f"note {k}" for k in range(per_chat)]
    assert list(_texts_per_chat(strict_api).values()) == [expected] * chats
    assert strict_api.flood_refusals == 0


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_one_process_polls_telegram_and_another_takes_over_when_it_stops(
        processes: Callable[..., Runtime], config: Config) -> None:
    api = TelegramApi(TOKEN)
    await api.start()
    tg_config = telegram_config(config, api)
    runtimes = [processes(tg_config), processes(tg_config)]
    leaders = [Leadership(r.engine, retry_seconds=0.2) for r in runtimes]
    pollers = []
    for runtime, leadership in zip(runtimes, leaders, strict=True):
        pollers.append(TelegramChannel(runtime, Engine(runtime, route), poll_timeout=1,
                                       leadership=leadership))
    tasks = [asyncio.create_task(lead.run_forever()) for lead in leaders]
    try:
        for poller in pollers:
            await poller.start()

        def polls() -> int:
            return sum(c.method == "getUpdates" for c in api.calls)

        async def polled(count: int) -> None:
            async def reached() -> bool:
                return polls() >= count
            await _until(reached)

        await polled(4)
        # Two pollers would overlap at once: each long-polls for a second.
        assert api.poll_overlaps == 0
        assert [lead.holds(POLL_ROLE) for lead in leaders].count(True) == 1
        holder = next(lead for lead in leaders if lead.holds(POLL_ROLE))
        other = next(lead for lead in leaders if lead is not holder)
        await holder.release()  # its drain
        async with asyncio.timeout(30):
            await other.wait_held(POLL_ROLE)
        # The other process polls now (the stand-in may still be answering the first one's
        # cancelled call, so overlaps are not counted past this point).
        await polled(polls() + 3)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for poller in pollers:
            await poller.stop()
        for lead in leaders:
            await lead.release()
        await api.close()
