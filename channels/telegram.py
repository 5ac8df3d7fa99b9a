"""The Telegram channel: aiogram's Bot as the transport, the flows behind core.Engine.

Polling (`[telegram] mode = "polling"`) runs one getUpdates loop in the background, in one
process of the deployment at a time (the one holding the "poll:telegram" role: Telegram
serves one poller per bot, and answers a second with 409 Conflict); webhook
mode registers POST /webhooks/telegram with a secret token derived from the service's secret
key. Either way each update becomes one Inbound (its update_id is the provider id, so a
redelivery is dropped by the engine) and replies go out through the outbox and `sender`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Sequence

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.types import Update
from aiogram.utils.token import TokenValidationError, validate_token
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from channels.telegram_inbound import CHANNEL, UpdateHandler, chat_key
from channels.telegram_send import TelegramSender
from core.delivery import Sender
from core.engine import Engine
from core.errors import ConfigError
from core.files import blob_path
from core.leadership import Leadership
from core.runtime import Runtime

log = logging.getLogger("autodoctor.channels.telegram")

WEBHOOK_PATH = "/webhooks/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "callback_query"]
POLL_TIMEOUT = 25  # seconds a getUpdates call waits for something to arrive
POLL_ROLE = "poll:telegram"


def webhook_secret(secret_key: str) -> str:
    """The secret_token Telegram echoes in SECRET_HEADER: derived, so it needs no setting."""
    return hmac.new(secret_key.encode(), b"telegram-webhook", hashlib.sha256).hexdigest()


class TelegramChannel:
    """Holds the aiogram Bot; receives updates (polling or webhook) and sends via `sender`."""

    def __init__(self, runtime: Runtime, engine: Engine, *,
                 poll_timeout: int = POLL_TIMEOUT,
                 leadership: Leadership | None = None) -> None:
        config = runtime.config
        self.runtime = runtime
        self.mode = config.telegram.mode
        try:
            validate_token(config.secrets.telegram_bot_token)
        except TokenValidationError:
            raise ConfigError("TELEGRAM_BOT_TOKEN is not a bot token (expected the form "
                              "123456789:ABC..., as BotFather gives it)") from None
        self.bot = Bot(config.secrets.telegram_bot_token, session=AiohttpSession(
            api=TelegramAPIServer.from_base(config.telegram.api_base)))
        self.sender = TelegramSender(self.bot, lambda sha256: blob_path(config, sha256))
        self.updates = UpdateHandler(runtime, engine, self.bot, self.sender)
        self.secret = webhook_secret(config.secrets.secret_key)
        self.webhook_url = f"{config.public_url.rstrip('/')}{WEBHOOK_PATH}"
        self.poll_timeout = poll_timeout
        # None: this process always polls (one process, or tests).
        self.leadership = leadership
        if leadership is not None and self.mode == "polling":
            leadership.want(POLL_ROLE)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Say who we are, then start polling or register the webhook."""
        try:
            me = await self.bot.get_me()
            log.info("telegram bot @%s (%s mode)", me.username, self.mode)
        except TelegramAPIError as exc:
            log.error("telegram getMe failed (is TELEGRAM_BOT_TOKEN right?): %s", exc.message)
        if self.mode == "polling":
            self._tasks.append(asyncio.create_task(self.poll_forever(), name="telegram-poll"))
        elif not await self.register_webhook():
            self._tasks.append(asyncio.create_task(self._register_until_done(),
                                                   name="telegram-webhook"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.bot.session.close()

    # ------------------------------------------------------------------ webhook

    async def register_webhook(self) -> bool:
        try:
            await self.bot.set_webhook(self.webhook_url, secret_token=self.secret,
                                       allowed_updates=ALLOWED_UPDATES)
        except TelegramAPIError as exc:
            log.warning("telegram setWebhook failed: %s", exc.message)
            return False
        log.info("telegram webhook set to %s", self.webhook_url)
        return True

    async def _register_until_done(self) -> None:
        delay = 1.0
        while not await self.register_webhook():
            await asyncio.sleep(delay)
            delay = min(60.0, delay * 2)

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """POST /webhooks/telegram: only Telegram knows the secret token."""
        if not hmac.compare_digest(request.headers.get(SECRET_HEADER, "").encode(),
                                   self.secret.encode()):
            log.warning("telegram webhook refused: wrong or missing secret token")
            raise web.HTTPForbidden(text="Wrong or missing secret token.")
        try:
            # JSON is UTF-8 (json.loads also reads UTF-16 and -32), whatever charset the
            # request's Content-Type names: an unknown one failed request.json() with a 500.
            update = Update.model_validate(json.loads(await request.read()),
                                           context={"bot": self.bot})
        except (ValueError, ValidationError, RecursionError):
            raise web.HTTPBadRequest(text="Expected a Telegram Update as JSON.") from None
        await self.updates.process(update)
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ polling

    async def poll_forever(self) -> None:
        """getUpdates until cancelled; an update is confirmed only once it was handled."""
        offset: int | None = None
        failures = 0
        while True:
            if self.leadership is not None and not self.leadership.holds(POLL_ROLE):
                log.info("telegram: another process polls; waiting for the %s role", POLL_ROLE)
                await self.leadership.wait_held(POLL_ROLE)
                log.info("telegram: polling here now")
                offset = None  # whatever another poller confirmed is gone from Telegram
            try:
                updates = await self._get_updates(offset)
                if updates is None:
                    continue  # the role went elsewhere mid-call
                failures = 0
            except asyncio.CancelledError:
                raise
            except TelegramRetryAfter as exc:
                await asyncio.sleep(exc.retry_after)
                continue
            except TelegramConflictError as exc:
                if "webhook" in exc.message.lower() and await self._drop_webhook():
                    continue
                failures += 1
                log.warning("telegram getUpdates conflict (another poller?): %s", exc.message)
                await _pause(failures)
                continue
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any failure
                failures += 1
                level = logging.ERROR if isinstance(exc, TelegramUnauthorizedError) else (
                    logging.WARNING)
                log.log(level, "telegram getUpdates failed (%s): %s", failures, exc)
                await _pause(failures)
                continue
            if updates:
                try:
                    await self.process_batch(updates)
                except (DBAPIError, OSError) as exc:
                    # The database is down: the batch is not confirmed, so getUpdates gives
                    # it again (what was handled meanwhile is deduplicated by update id).
                    failures += 1
                    log.warning("telegram updates not handled, database unreachable (%s): %s",
                                failures, type(exc).__name__)
                    await _pause(failures)
                    continue
                offset = updates[-1].update_id + 1

    async def _get_updates(self, offset: int | None) -> list[Update] | None:
        """One getUpdates call; None if this process stopped being the poller meanwhile."""
        call = asyncio.ensure_future(self.bot.get_updates(
            offset=offset, timeout=self.poll_timeout, allowed_updates=ALLOWED_UPDATES,
            request_timeout=self.poll_timeout + 10))
        if self.leadership is None:
            return await call
        lost = asyncio.ensure_future(self.leadership.wait_lost(POLL_ROLE))
        try:
            await asyncio.wait({call, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
        return None if call.cancelled() else call.result()

    async def _drop_webhook(self) -> bool:
        # Polling was asked for, but a webhook is set (an earlier webhook run, or the same
        # token in production): Telegram serves one or the other.
        log.warning("telegram: a webhook is set; deleting it to poll (mode = \"polling\")")
        try:
            await self.bot.delete_webhook(drop_pending_updates=False)
        except TelegramAPIError as exc:
            log.warning("telegram deleteWebhook failed: %s", exc.message)
            return False
        return True

    async def process_batch(self, updates: Sequence[Update]) -> None:
        """Chats in parallel, each chat's updates in order."""
        chats: dict[str, list[Update]] = {}
        for update in updates:
            chats.setdefault(chat_key(update), []).append(update)

        async def one_chat(batch: list[Update]) -> None:
            for update in batch:
                try:
                    await self.updates.process(update)
                except (DBAPIError, OSError):
                    raise  # the database is down (process() checked): the rest waits too
                except Exception:  # process() reports its own failures; this is a last guard
                    log.exception("telegram update=%s not handled", update.update_id)

        results = await asyncio.gather(*(one_chat(batch) for batch in chats.values()),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


async def _pause(failures: int) -> None:
    """The poller's wait after its n-th failure in a row: 1 s, doubling, at most 30 s."""
    await asyncio.sleep(min(30.0, 0.5 * 2 ** failures))


TELEGRAM = web.AppKey("telegram", TelegramChannel)


def setup(app: web.Application, runtime: Runtime, engine: Engine,
          leadership: Leadership | None = None) -> Sender | None:
    """Add the Telegram channel to the app when TELEGRAM_BOT_TOKEN is set; returns its sender.

    Call after the app's database lifecycle is in cleanup_ctx, so the bot stops first.
    """
    if not runtime.config.secrets.telegram_bot_token:
        return None
    channel = TelegramChannel(runtime, engine, leadership=leadership)
    app[TELEGRAM] = channel
    app.router.add_post(WEBHOOK_PATH, channel.handle_webhook, name="telegram_webhook")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await channel.start()
        yield
        await channel.stop()

    app.cleanup_ctx.append(lifecycle)
    return channel.sender


__all__ = ["CHANNEL", "POLL_ROLE", "TELEGRAM", "TelegramChannel", "setup", "webhook_secret"]
