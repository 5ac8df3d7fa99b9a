"""Telegram away for a minute (issue 28's faults): connections refused for 30 s, then 502
pages for 30 s. Afterwards everything queued is delivered, once, each chat in order, and a
429's retry_after is still honoured. Time is the test's clock; the stand-in stamps each
call with it.

The channel's pause for that 429 is kept in real seconds while the test's clock runs ten
times faster after the outage: the 7 s pause outlasts the claimed rows' 60 s leases, as a
retry_after of minutes does in production. Before the dispatcher checked the lease after
waiting, each chat's first message went out twice (the row was claimed again meanwhile)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from bot.app import _limiters
from channels.telegram_send import TelegramSender
from core.clock import ManualClock
from core.delivery import OutboxDispatcher
from core.models import OutboxItem
from core.runtime import Runtime
from tests.channels.telegram_outbox import bot_on, chats_with_notes
from tests.channels.test_telegram import TOKEN
from tests.standins.telegram_api import TelegramApi, too_many_requests

CHATS, EACH = 5, 3
RETRY_AFTER = 7


@pytest.fixture
async def api(clock: ManualClock) -> AsyncIterator[TelegramApi]:
    api = TelegramApi(TOKEN, clock=clock.now)
    await api.start()
    yield api
    await api.close()




async def _statuses(runtime: Runtime) -> list[str]:
    async with runtime.sessions() as s:
        return list((await s.scalars(OutboxItem.__table__.select().with_only_columns(
            OutboxItem.status))).all())


async def test_an_outage_of_a_minute_loses_nothing_and_keeps_each_chats_order(
        runtime: Runtime, clock: ManualClock, api: TelegramApi) -> None:
    await api.go_down()
    users = await chats_with_notes(runtime, api, [EACH] * CHATS)
    bot = bot_on(api)
    dispatcher = OutboxDispatcher(runtime, {"telegram": TelegramSender(bot)},
                                  _limiters(runtime.config))
    task = asyncio.create_task(dispatcher.run_forever(idle_poll=0.02))
    start = clock.now()
    try:
        # A minute of the test's clock, a second at a time: refused, then 502 pages.
        for second in range(60):
            if second == 30:
                await api.come_back()
                api.outage_status = 502
            clock.advance(1)
            runtime.hub.outbox_wakeup.set()
            await asyncio.sleep(0.03)
        assert await _statuses(runtime) == ["pending"] * CHATS * EACH  # nothing given up
        tried = len(api.calls)
        assert tried > 0  # 502s were answered to real attempts
        api.outage_status = None
        api.fail_next(users[0].id, too_many_requests(RETRY_AFTER))
        # Back: the backlog goes out as the backoff and the limits allow. The clock moves
        # slowly enough here that a send waiting on a chat's limit (a real second) never
        # outlives its lease (60 s of this clock).
        for _ in range(600):
            if await _statuses(runtime) == ["sent"] * CHATS * EACH:
                break
            clock.advance(1)
            runtime.hub.outbox_wakeup.set()
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bot.session.close()
    assert await _statuses(runtime) == ["sent"] * CHATS * EACH
    sent = [c for c in api.calls if c.method.lower() == "sendmessage" and c.status == 200]
    for user in users:  # once each, in order
        assert [c.params["text"] for c in sent if c.chat_id == user.id] == \
            [f"note {k}" for k in range(EACH)]
    refused = [c for c in api.calls if c.chat_id == users[0].id and c.status == 429]
    assert len(refused) == 1
    after = [c for c in sent if c.chat_id == users[0].id and c.at > refused[0].at]
    assert after and after[0].at >= refused[0].at + timedelta(seconds=RETRY_AFTER)
    assert all(c.at >= start + timedelta(seconds=30) for c in api.calls)  # none got through
