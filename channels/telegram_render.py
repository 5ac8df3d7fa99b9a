"""Outbound → Telegram message parts: inline keyboards, URL buttons, 4096-character parts."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from core.messages import Button, Link, Outbound

log = logging.getLogger("autodoctor.channels.telegram")

TEXT_LIMIT = 4096  # characters of a message, counted in UTF-16 code units by Telegram
CALLBACK_DATA_LIMIT = 64  # bytes of callback_data
TOAST_LIMIT = 200  # characters of an answerCallbackQuery text


@dataclass(frozen=True)
class Rendered:
    """What goes out for one Outbound: the text parts, the keyboard for the last one."""

    parts: list[str]
    keyboard: InlineKeyboardMarkup | None


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Cut text into parts Telegram accepts, at a line break or a space where possible."""
    parts: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        cut = _fitting_prefix(rest, limit)
        for separator in ("\n", " "):
            at = rest.rfind(separator, 0, cut)
            if at > cut // 2:
                cut = at + 1
                break
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    if rest or not parts:
        parts.append(rest)
    return parts


def _fitting_prefix(text: str, limit: int) -> int:
    """The largest n such that text[:n] is at most `limit` UTF-16 units."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def callback_data_fits(payload: str) -> bool:
    return 0 < len(payload.encode()) <= CALLBACK_DATA_LIMIT


def url_button_allowed(url: str) -> bool:
    """Telegram refuses URL buttons to localhost and private addresses ("Wrong HTTP URL")."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "tg") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    if host == "localhost" or host.endswith(".localhost") or "." not in host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True
    return address.is_global


def render(outbound: Outbound) -> Rendered:
    """Buttons become an inline keyboard (one per row), the link a URL button below them."""
    rows: list[list[InlineKeyboardButton]] = []
    for button in outbound.buttons:
        keyboard_button = _callback_button(button, outbound)
        if keyboard_button is not None:
            rows.append([keyboard_button])
    text = outbound.text
    if outbound.link is not None:
        if url_button_allowed(outbound.link.url):
            rows.append([InlineKeyboardButton(text=outbound.link.label, url=outbound.link.url)])
        else:
            # A local run (public_url on 127.0.0.1): the link still reaches the person.
            text = _with_link(text, outbound.link)
    keyboard = InlineKeyboardMarkup(inline_keyboard=rows) if rows else None
    return Rendered(parts=split_text(text), keyboard=keyboard)


def _callback_button(button: Button, outbound: Outbound) -> InlineKeyboardButton | None:
    if not callback_data_fits(button.payload):
        # A payload Telegram would refuse (BUTTON_DATA_INVALID): drop the button, keep the
        # message. Flows must use short references; this is a bug to fix there.
        log.error("telegram button %r dropped: payload is %s bytes (limit %s) chat=%s",
                  button.label, len(button.payload.encode()), CALLBACK_DATA_LIMIT,
                  outbound.address)
        return None
    return InlineKeyboardButton(text=button.label, callback_data=button.payload)


def _with_link(text: str, link: Link) -> str:
    return f"{text}\n\n{link.label}: {link.url}" if text else f"{link.label}: {link.url}"


def edit_text(text: str) -> str:
    """An edit is one message: cut to the limit instead of splitting."""
    if utf16_len(text) <= TEXT_LIMIT:
        return text
    return text[:_fitting_prefix(text, TEXT_LIMIT - 1)] + "…"


def toast_text(text: str | None) -> str | None:
    return text[:TOAST_LIMIT] if text else None
