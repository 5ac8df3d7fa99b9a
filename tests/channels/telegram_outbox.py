"""For tests of sending to Telegram through the outbox: chats with messages queued for them,
and an aiogram Bot pointed at the Bot API stand-in."""

from __future__ import annotations

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from core.messages import Outbound
from core.models import Customer, Identity
from core.outbox import enqueue
from core.runtime import Runtime
from tests.channels.test_telegram import TOKEN
from tests.standins.telegram_api import TelegramApi, TgUser


def bot_on(api: TelegramApi) -> Bot:
    """Our side's Bot, talking to the stand-in (close its session after the test)."""
    return Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(api.base_url)))


async def chats_with_notes(runtime: Runtime, api: TelegramApi, notes: list[int]) -> list[TgUser]:
    """Telegram customers who have talked to the bot, one per entry of `notes`, each with that
    many messages ("note 0", "note 1", ...) queued for them in one transaction."""
    now = runtime.clock.now()
    users = [TgUser(800_000 + n, f"User{n}") for n in range(len(notes))]
    async with runtime.transaction() as uow:
        for user, count in zip(users, notes, strict=True):
            api.chats[user.id] = user
            customer = Customer(created_at=now)
            uow.session.add(customer)
            await uow.session.flush()
            identity = Identity(channel="telegram", address=str(user.id),
                                customer_id=customer.id, created_at=now)
            uow.session.add(identity)
            await uow.session.flush()
            for k in range(count):
                await enqueue(uow, identity, Outbound("telegram", str(user.id), f"note {k}"),
                              now)
    return users
