"""Telegram's flood control, as the Bot API enforces it (the stand-in answers 429 past 30
messages a second from the bot or one a second to a chat): the outbox's limiter, as the
service builds it, keeps every send within both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.app import _limiters
from channels.telegram_send import TelegramSender
from core.delivery import OutboxDispatcher
from core.models import OutboxItem
from core.ratelimit import ChannelLimiter
from core.runtime import Runtime
from tests.channels.telegram_outbox import bot_on, chats_with_notes
from tests.channels.test_telegram import TOKEN
from tests.standins.telegram_api import TelegramApi

CHATS = 40


@pytest.fixture
async def strict_api() -> AsyncIterator[TelegramApi]:
    api = TelegramApi(TOKEN, flood_limits=True)
    await api.start()
    yield api
    await api.close()


async def _queue(runtime: Runtime, api: TelegramApi) -> int:
    """One message to each of CHATS chats, and three more to the first: CHATS + 3 sends."""
    await chats_with_notes(runtime, api, [4] + [1] * (CHATS - 1))
    return CHATS + 3


async def _deliver(runtime: Runtime, api: TelegramApi, limiter: ChannelLimiter,
                   expected: int, seconds: float) -> int:
    bot = bot_on(api)
    dispatcher = OutboxDispatcher(runtime, {"telegram": TelegramSender(bot)},
                                  {"telegram": limiter})
    task = asyncio.create_task(dispatcher.run_forever(idle_poll=0.05))
    try:
        for _ in range(int(seconds / 0.05)):
            async with runtime.sessions() as s:
                sent = len((await s.execute(OutboxItem.__table__.select().where(
                    OutboxItem.status == "sent"))).all())
            if sent >= expected:
                break
            await asyncio.sleep(0.05)
        return sent
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bot.session.close()


async def test_the_services_limiter_keeps_within_telegrams_flood_limits(
        runtime: Runtime, strict_api: TelegramApi) -> None:
    expected = await _queue(runtime, strict_api)
    limiter = _limiters(runtime.config)["telegram"]
    assert await _deliver(runtime, strict_api, limiter, expected, 20) == expected
    assert strict_api.flood_refusals == 0


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_without_the_limiter_telegram_refuses_the_flood(
        runtime: Runtime, strict_api: TelegramApi) -> None:
    # The control: what the stand-in does to a sender that does not hold back.
    expected = await _queue(runtime, strict_api)
    unlimited = ChannelLimiter(10_000, 10_000)
    await _deliver(runtime, strict_api, unlimited, expected, 2)
    assert strict_api.flood_refusals > 0
