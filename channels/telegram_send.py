"""The Telegram side of core.delivery.Sender: sendMessage / editMessageText, errors mapped."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramRetryAfter,
)
from aiogram.types import BufferedInputFile, Message

from channels.telegram_render import edit_text, render
from core.errors import DeliveryError, PermanentFailure, RetryLater
from core.messages import Attachment, Outbound

log = logging.getLogger("autodoctor.channels.telegram")

# 400 answers that mean the chat itself is gone: no retry can help.
_CHAT_GONE = ("chat not found", "user not found", "peer_id_invalid", "user is deactivated",
              "have no rights to send")
# Sent as photos (Telegram shows them inline); other files as documents.
_PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
# 400 answers to an edit whose message cannot be edited: send the text as a new message.
_NOT_EDITABLE = ("message to edit not found", "message can't be edited",
                 "message_id_invalid", "message identifier is not specified")


def delivery_error(exc: TelegramAPIError) -> DeliveryError:
    """Telegram's error as the outbox understands it: wait, retry, or give up on this chat."""
    if isinstance(exc, TelegramRetryAfter):
        return RetryLater(f"Telegram flood control: {exc.message}",
                          retry_after=float(exc.retry_after))
    if isinstance(exc, TelegramForbiddenError):
        return PermanentFailure(f"Telegram: {exc.message}")
    if isinstance(exc, TelegramMigrateToChat):
        return PermanentFailure(f"Telegram: group moved to chat {exc.migrate_to_chat_id}")
    if isinstance(exc, TelegramBadRequest) and any(s in exc.message.lower()
                                                   for s in _CHAT_GONE):
        return PermanentFailure(f"Telegram: {exc.message}")
    # Network errors, 5xx and anything unexpected: the outbox retries with backoff and gives
    # up after its maximum number of attempts.
    return RetryLater(f"Telegram: {type(exc).__name__}: {exc.message}")


class TelegramSender:
    """Sends one Outbound through the Bot API; returns the (last) message id. Files sent with
    a message go as Telegram photos or documents, read from `blobs` (sha256 → path)."""

    def __init__(self, bot: Bot, blobs: Callable[[str], Path] | None = None) -> None:
        self.bot = bot
        self.blobs = blobs

    async def send(self, outbound: Outbound) -> str | None:
        try:
            if outbound.edit_of:
                return await self._edit(outbound)
            return await self._send_new(outbound)
        except TelegramAPIError as exc:
            raise delivery_error(exc) from exc

    async def _send_new(self, outbound: Outbound) -> str | None:
        rendered = render(outbound)
        chat_id = outbound.address
        for attached in outbound.files:
            await self._send_file(chat_id, attached)
        if outbound.image:
            sent = await self.bot.send_photo(chat_id=chat_id, photo=outbound.image)
            if not outbound.text:
                return str(sent.message_id)
        if not outbound.text and rendered.keyboard is None:
            log.warning("telegram chat=%s: empty message not sent", chat_id)
            return None
        last: Message | None = None
        for index, part in enumerate(rendered.parts):
            # A multi-part message keeps its buttons under its last part.
            keyboard = rendered.keyboard if index == len(rendered.parts) - 1 else None
            last = await self.bot.send_message(chat_id=chat_id, text=part or "…",
                                               reply_markup=keyboard)
        assert last is not None
        return str(last.message_id)

    async def _send_file(self, chat_id: str, attached: Attachment) -> None:
        """The file itself where it is on disk; else its link (the message's text has it)."""
        path = self.blobs(attached.sha256) if self.blobs and attached.sha256 else None
        if path is None or not path.is_file():
            await self.bot.send_message(chat_id=chat_id, text=f"{attached.name}: {attached.url}")
            return
        upload = BufferedInputFile(path.read_bytes(), filename=attached.name)
        if attached.content_type in _PHOTO_TYPES:
            await self.bot.send_photo(chat_id=chat_id, photo=upload)
        else:
            await self.bot.send_document(chat_id=chat_id, document=upload)

    async def _edit(self, outbound: Outbound) -> str | None:
        assert outbound.edit_of is not None
        try:
            message_id = int(outbound.edit_of)
        except ValueError:
            return await self._send_new(replace(outbound, edit_of=None))
        rendered = render(outbound)
        try:
            if outbound.text:
                # Without a reply_markup the edit also removes the old inline keyboard.
                await self.bot.edit_message_text(chat_id=outbound.address,
                                                 message_id=message_id,
                                                 text=edit_text("\n".join(rendered.parts)),
                                                 reply_markup=rendered.keyboard)
            else:
                await self.bot.edit_message_reply_markup(chat_id=outbound.address,
                                                         message_id=message_id,
                                                         reply_markup=rendered.keyboard)
        except TelegramBadRequest as exc:
            reason = exc.message.lower()
            if "message is not modified" in reason:
                return outbound.edit_of  # already says this: done, not an error
            if any(s in reason for s in _NOT_EDITABLE) and outbound.text:
                log.info("telegram chat=%s message=%s not editable (%s); sending anew",
                         outbound.address, message_id, exc.message)
                return await self._send_new(replace(outbound, edit_of=None))
            if any(s in reason for s in _NOT_EDITABLE):
                return outbound.edit_of  # nothing to take the keyboard off
            raise
        return outbound.edit_of
