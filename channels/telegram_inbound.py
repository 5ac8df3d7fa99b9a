"""Telegram updates → core.Inbound: messages, photos, documents, button taps, invite links."""

from __future__ import annotations

import logging
from contextlib import aclosing

import aiohttp
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.types import CallbackQuery, Message, Update, User
from sqlalchemy.exc import DBAPIError

from channels.telegram_render import toast_text
from core.db import ping
from core.delivery import Sender
from core.engine import Engine
from core.errors import DeliveryError, RaceLost
from core.files import UploadRejected, store_upload
from core.mechanics import redeem_invite
from core.messages import Inbound, Outbound
from core.runtime import Runtime
from core.store.people import Contact, people_for

log = logging.getLogger("autodoctor.channels.telegram")

CHANNEL = "telegram"
FAILED_TOAST = "Something went wrong, try again"
UNSUPPORTED = ("I can read text messages, photos and files (PDF or short videos). "
               "Please send your answer as one of those.")
INVITE_UNKNOWN = ("That mechanic invite link is unknown or was already used in another chat. "
                  "Please ask AutoDoctor for a new link.")
DOWNLOAD_FAILED = "I couldn't fetch that file from Telegram; please send it again."
NOT_PROCESSED = ("Sorry, something went wrong on our side and your message was not processed. "
                 "Please send it again.")


def chat_key(update: Update) -> str:
    """The chat an update belongs to: one chat's updates are handled in order."""
    if update.message is not None:
        return str(update.message.chat.id)
    if update.callback_query is not None:
        return _callback_address(update.callback_query)
    return f"update:{update.update_id}"


def _callback_address(query: CallbackQuery) -> str:
    message = query.message
    return str(message.chat.id) if message is not None else str(query.from_user.id)


def _display_name(user: User | None) -> str | None:
    return user.full_name[:200] if user is not None else None


def _command_text(text: str) -> str:
    """'/status@AutoDoctorBot now' → '/status now': the flows know commands without the bot."""
    if not text.startswith("/"):
        return text
    head, _, rest = text.partition(" ")
    head = head.split("@", 1)[0]
    return f"{head} {rest}" if rest else head


class UpdateHandler:
    """Turns each update into one engine call (or an invite redemption) and answers taps."""

    def __init__(self, runtime: Runtime, engine: Engine, bot: Bot, sender: Sender) -> None:
        self.runtime = runtime
        self.engine = engine
        self.bot = bot
        self.sender = sender

    async def process(self, update: Update) -> None:
        """Handle one update. A failure is logged and the person told to try again, as the
        widget does: the update is not redelivered (it might fail the same way forever)."""
        if update.callback_query is not None:
            await self._on_tap(update.callback_query, update.update_id)
            return
        message = update.message
        if message is None:
            return  # not a kind we subscribe to
        if message.chat.type != "private":
            log.info("telegram chat=%s (%s) ignored: only private chats are served",
                     message.chat.id, message.chat.type)
            return
        try:
            await self._on_message(message, update.update_id)
        except Exception as exc:
            if isinstance(exc, (DBAPIError, OSError)) and not await ping(self.runtime.engine):
                # The database is down: neither handled nor answered, so that Telegram
                # delivers it again (the webhook answers 503; polling does not confirm it).
                raise
            log.exception("telegram update=%s chat=%s failed", update.update_id,
                          message.chat.id)
            await self._reply(str(message.chat.id), NOT_PROCESSED)

    async def _on_tap(self, query: CallbackQuery, update_id: int) -> None:
        # The spinner on the person's button stops only when the query is answered: answer
        # every tap, whatever happened while handling it.
        toast: str | None = None
        try:
            if query.data:
                handled = await self.engine.handle(Inbound(
                    channel=CHANNEL, address=_callback_address(query), action=query.data,
                    provider_id=str(update_id), display_name=_display_name(query.from_user)))
                toast = handled.toast
        except Exception:
            log.exception("telegram update=%s tap failed chat=%s", update_id,
                          _callback_address(query))
            toast = FAILED_TOAST
        try:
            await self.bot.answer_callback_query(query.id, text=toast_text(toast))
        except TelegramAPIError as exc:
            log.info("telegram callback=%s not answered: %s", query.id, exc.message)
        except Exception:  # noqa: BLE001 - the tap is handled; only its toast is lost
            # A callback id the request cannot carry (a lone surrogate): the tap was handled,
            # and answering it again on each redelivery would fail the same way.
            log.warning("telegram callback=%r not answered", query.id[:64], exc_info=True)

    async def _on_message(self, message: Message, update_id: int) -> None:
        address = str(message.chat.id)
        name = _display_name(message.from_user)
        text = _command_text(message.text or message.caption or "")
        command, _, argument = text.partition(" ")
        if command == "/start" and argument.strip().lower().startswith("m_"):
            await self._link_mechanic(address, argument.strip()[2:])
            return
        if command == "/start":
            text = "/start"  # a deep-link payload other than an invite: a plain start
        attachments: tuple[str, ...] = ()
        upload = _upload_of(message)
        if upload is not None:
            public_id = await self._receive_file(address, name, *upload)
            attachments = (public_id,) if public_id else ()
            if not attachments and not text:
                return  # the person was told why; nothing else came with the file
        if not text and not attachments:
            await self._reply(address, UNSUPPORTED)
            return
        await self.engine.handle(Inbound(channel=CHANNEL, address=address, text=text,
                                         attachments=attachments, provider_id=str(update_id),
                                         display_name=name))

    async def _link_mechanic(self, address: str, code: str) -> None:
        async with self.runtime.transaction() as uow:
            mechanic = await redeem_invite(uow, self.runtime, code, CHANNEL, address,
                                           self.runtime.clock.now())
        if mechanic is None:
            log.info("telegram chat=%s invite refused", address)
            await self._reply(address, INVITE_UNKNOWN)
        # Linked: redeem_invite queued the welcome; the chat now reaches the mechanic flow.

    async def _receive_file(self, address: str, name: str | None, file_id: str,
                            size: int | None, file_name: str | None) -> str | None:
        """Download, check and store one file; its public id, or None (the person was told)."""
        limit = self.runtime.config.uploads.max_bytes
        if not (file_id.isascii() and file_id.isprintable()):
            # Telegram's file ids are base64url: this one could not even be asked for.
            log.warning("telegram chat=%s file id unusable: %r", address, file_id[:64])
            await self._reply(address, DOWNLOAD_FAILED)
            return None
        try:
            if size is not None and size > limit:
                raise _too_large(size, limit)
            data = await self._download(file_id, limit)
            return await self._store(address, name, data, file_name)
        except UploadRejected as exc:
            log.info("telegram chat=%s file refused: %s", address, exc.code)
            await self._reply(address, str(exc))
        except (TelegramAPIError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("telegram chat=%s file download failed: %s", address, _safe(exc))
            await self._reply(address, DOWNLOAD_FAILED)
        return None

    async def _download(self, file_id: str, limit: int) -> bytes:
        try:
            file = await self.bot.get_file(file_id)
        except TelegramBadRequest as exc:
            if "too big" in exc.message.lower():
                raise _too_large(None, limit) from exc
            raise
        if file.file_size is not None and file.file_size > limit:
            raise _too_large(file.file_size, limit)
        if not file.file_path:
            raise UploadRejected("empty", "That file is empty.")
        session = self.bot.session
        url = session.api.file_url(self.bot.token, file.file_path)
        data = bytearray()
        async with aclosing(session.stream_content(url, timeout=60)) as chunks:
            async for chunk in chunks:
                data.extend(chunk)
                if len(data) > limit:
                    raise _too_large(None, limit)
        return bytes(data)

    async def _store(self, address: str, name: str | None, data: bytes,
                     file_name: str | None) -> str:
        contact = Contact(CHANNEL, address, display_name=name)
        for attempt in range(2):
            try:
                async with self.runtime.transaction() as uow:
                    now = self.runtime.clock.now()
                    person = (await people_for(uow, [contact], now))[contact.key]
                    record = await store_upload(uow.session, self.runtime.config,
                                                person.identity.id, data, file_name, now)
                log.info("telegram chat=%s file=%s stored type=%s bytes=%s", address,
                         record.public_id, record.content_type, record.size_bytes)
                return record.public_id
            except RaceLost:
                if attempt == 1:
                    raise  # first contact raced with another message from the same chat
        raise AssertionError("unreachable")

    async def _reply(self, address: str, text: str) -> None:
        """A direct answer about this message itself (like the widget's error frames)."""
        try:
            await self.sender.send(Outbound(channel=CHANNEL, address=address, text=text))
        except DeliveryError as exc:
            log.warning("telegram chat=%s direct reply failed: %s", address, exc)


def _upload_of(message: Message) -> tuple[str, int | None, str | None] | None:
    """(file_id, size if known, original name) of the message's photo or document."""
    if message.photo:
        largest = max(message.photo, key=lambda p: (p.width * p.height, p.file_size or 0))
        return largest.file_id, largest.file_size, None
    if message.document is not None:
        doc = message.document
        return doc.file_id, doc.file_size, doc.file_name
    if message.video is not None:
        return message.video.file_id, message.video.file_size, message.video.file_name
    return None


def _safe(exc: Exception) -> str:
    """What went wrong, without the file URL (it holds the bot token)."""
    if isinstance(exc, TelegramAPIError):
        return exc.message
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    return type(exc).__name__


def _too_large(size: int | None, limit: int) -> UploadRejected:
    if size is None or size > 1000 * limit:  # a size that big is no file's: not repeated
        return UploadRejected("too_large", f"That file is larger than {limit / 1e6:.0f} MB; "
                                           "please send a smaller one.")
    return UploadRejected("too_large", f"That file is {size / 1e6:.1f} MB; the limit is "
                                       f"{limit / 1e6:.0f} MB. Please send a smaller one.")
