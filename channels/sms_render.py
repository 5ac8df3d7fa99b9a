"""Outbound → SMS text: numbered choices, reply codes, plain links, GSM-7/UCS-2 segments.

Buttons become a numbered list ("1 Confirm and pay ... Reply 1, 2 or 3."), or just the
"Reply ..." line where the text numbers its options itself (the tiers), or nothing where one
button's label is quoted in the text ('reply "Skip"': typing the label picks it); 'tap "X"'
reads 'reply "X"'. A mechanic's Accept button is a reply code ("Reply A4821 to accept").

A text of GSM-7 characters only goes in one segment up to 160 characters (an extension
character such as "{" or "€" counts two), else in parts of 153; any other character makes
the whole message UCS-2: 70 UTF-16 units in one segment, else parts of 67 (GSM 03.38, 3GPP TS
23.040). Typographic characters people's phones put in (curly quotes, dashes, "…") are sent
as their GSM-7 look-alikes, as Twilio's Smart Encoding does, so one of them does not turn a
one-segment message into a three-segment one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.messages import Attachment, Button, Outbound

# GSM 03.38: the basic table (ESC left out) and the extension table (two septets each).
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM_EXTENDED = frozenset("^{}\\[~]|€\f")
GSM_SINGLE, GSM_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67

# Look-alikes sent instead (Twilio's Smart Encoding replaces the same ones).
_LOOK_ALIKES = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'", "\u02bc": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2010": "-", "\u2011": "-",
    "\u00b7": "-", "\u2022": "-", "\u2026": "...",
    "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u2002": " ", "\u2003": " ",
    "\u200b": "", "\ufeff": "",
})

# "Reply A4821 to accept": the request's digits after a letter, typed back to accept.
_ACCEPT = re.compile(r"^accept:R-(\d{4,6})$")
_REPLY_CODE = re.compile(r"^\s*A-?(\d{4,6})\s*[.!]?\s*$", re.IGNORECASE)
_NUMBERED_LINE = re.compile(r"^(\d+)\. ", re.MULTILINE)
# 'Tap "Skip"' in a chat app is 'reply "Skip"' by SMS: a button's label typed picks it.
_TAP = re.compile(r'\b([Tt])ap (?=")')


@dataclass(frozen=True)
class Rendered:
    """What goes out for one Outbound: the message bodies, in order, and the media URLs sent
    (as MMS) with the first."""

    bodies: list[str]
    media: list[str]


def smart_encode(text: str) -> str:
    """Typographic characters replaced by their GSM-7 look-alikes."""
    return text if text.isascii() else text.translate(_LOOK_ALIKES)


def is_gsm(text: str) -> bool:
    return all(ch in GSM_BASIC or ch in GSM_EXTENDED for ch in text)


def _units(text: str, gsm: bool) -> list[int]:
    """Each character's size: septets (GSM-7) or UTF-16 code units (UCS-2)."""
    if gsm:
        return [2 if ch in GSM_EXTENDED else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def encoding(text: str) -> str:
    return "GSM-7" if is_gsm(text) else "UCS-2"


def segments(text: str) -> list[str]:
    """The text cut as a carrier cuts a concatenated SMS (no character split across parts)."""
    gsm = is_gsm(text)
    units = _units(text, gsm)
    single, part = (GSM_SINGLE, GSM_PART) if gsm else (UCS2_SINGLE, UCS2_PART)
    if sum(units) <= single:
        return [text]
    parts: list[str] = []
    start = used = 0
    for index, size in enumerate(units):
        if used + size > part:
            parts.append(text[start:index])
            start, used = index, 0
        used += size
    parts.append(text[start:])
    return parts


def segment_count(text: str) -> int:
    return len(segments(text))


def split_message(text: str, max_segments: int) -> list[str]:
    """Message bodies of at most `max_segments` segments each, cut at the end of a segment
    or, where one is in the second half of the last segment's room, at a line break or
    space before it."""
    bodies: list[str] = []
    rest = text
    while segment_count(rest) > max_segments:
        gsm = is_gsm(rest)
        room = max_segments * (GSM_PART if gsm else UCS2_PART)
        cut, used = 0, 0
        for size in _units(rest, gsm):
            if used + size > room:
                break
            used += size
            cut += 1
        low = cut - (GSM_PART if gsm else UCS2_PART) // 2
        for separator in ("\n", " "):
            at = rest.rfind(separator, 0, cut)
            if at > low:
                cut = at + 1
                break
        bodies.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not bodies:
        bodies.append(rest)
    return bodies


def reply_code(payload: str) -> str | None:
    """The code a mechanic types to accept (`accept:R-4821` → `A4821`), None for others."""
    match = _ACCEPT.match(payload)
    return f"A{match.group(1)}" if match else None


def accept_payload(text: str) -> str | None:
    """The accept payload a typed reply code stands for ("a4821" → `accept:R-4821`)."""
    match = _REPLY_CODE.match(text)
    return f"accept:R-{match.group(1)}" if match else None


def as_sms(text: str) -> str:
    """Our wording for buttons as it reads by SMS: 'tap "Skip"' → 'reply "Skip"'."""
    return _TAP.sub(lambda m: "Reply " if m.group(1) == "T" else "reply ", text)


def choices(text: str, buttons: Sequence[Button]) -> str:
    """The lines that offer `buttons` by number ("Reply 1, 2 or 3."); nothing for one
    button the text already names in quotes (its label, typed, picks it)."""
    numbers = [str(n) for n in range(1, len(buttons) + 1)]
    ask = "Reply " + (numbers[0] if len(numbers) == 1
                      else ", ".join(numbers[:-1]) + " or " + numbers[-1])
    labels = [button.label for button in buttons]
    if labels == numbers or _numbered_already(text, len(buttons)):
        return ask + "."
    if len(buttons) == 1 and f'"{labels[0]}"' in text:
        return ""
    if len(buttons) == 1:
        return f'{ask} for "{labels[0]}".'
    lines = [f"{number}. {label}" for number, label in zip(numbers, labels, strict=True)]
    return "\n".join(lines) + "\n" + ask + "."


def _numbered_already(text: str, count: int) -> bool:
    """The text lists the options itself as "1. ...", "2. ..." (the tiers)."""
    return {int(n) for n in _NUMBERED_LINE.findall(text)} == set(range(1, count + 1))


def numbered(buttons: Sequence[Button]) -> list[Button]:
    """The buttons offered by number, in order (accept buttons go as reply codes)."""
    return [button for button in buttons if reply_code(button.payload) is None]


def render(outbound: Outbound, max_segments: int,
           as_mms: Callable[[Attachment], bool] = lambda _file: False) -> Rendered:
    """The text with its choices, link and file links, in message bodies; files that can go
    as MMS are sent as media instead of a link."""
    text = as_sms(outbound.text)
    lines = [text] if text else []
    offered = numbered(outbound.buttons)
    if offered and (offer := choices(text, offered)):
        lines.append(offer)
    for button in outbound.buttons:
        code = reply_code(button.payload)
        if code is not None:
            lines.append(f"Reply {code} to accept.")
    if outbound.link is not None:
        lines.append(f"{outbound.link.label}: {outbound.link.url}")
    media: list[str] = []
    for attached in outbound.files:
        if as_mms(attached) and len(media) < 10:  # Twilio takes 10 media per message
            media.append(attached.url)
        else:
            lines.append(f"{attached.name}: {attached.url}")
    body = smart_encode("\n".join(lines))
    if not body:
        return Rendered([], media)
    return Rendered(split_message(body, max_segments), media)
