"""Twilio's incoming-message form → core.Inbound: numbers in E.164, carrier keywords, reply
codes and numbered choices as button payloads, MMS photos downloaded and stored."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import phonenumbers
from sqlalchemy import select

from channels.sms_render import accept_payload, numbered
from core.errors import RaceLost
from core.files import UploadRejected, store_upload
from core.messages import Button
from core.models import Identity, Message, OutboxItem
from core.outbox import tell
from core.runtime import Runtime
from core.store.people import Contact, people_for

log = logging.getLogger("autodoctor.channels.sms")

CHANNEL = "sms"
# Twilio's Advanced Opt-Out keywords (the whole message, any case); on SMS our own "cancel"
# and "end" are "cancel request" and "end session".
OPT_OUT = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit"})
OPT_IN = frozenset({"start", "unstop", "yes"})
HELP = frozenset({"help", "info"})
# Twilio's OptOutType parameter (Advanced Opt-Out on) names the keyword's kind itself.
_OPT_OUT_TYPES = {"STOP": "stop", "START": "start", "HELP": "help"}
MAX_MEDIA = 10
# What can be a choice, and so is looked up: a one- or two-digit number, or up to four
# words without digits ("skip", "keep talking"; "Add 15 minutes" is picked by its number).
_MAYBE_CHOICE = re.compile(r"^\s*(?:\d{1,2}|[^\W\d]+(?:[\s,'-]+[^\W\d]+){0,3})\s*[.!]?\s*$")
_WORDS = re.compile(r"[a-z0-9$.]+")
_PHONE = re.compile(r"^\s*\+?[\d\s().-]{3,30}$")
DOWNLOAD_FAILED = "I couldn't fetch your photo; please send it again."


def e164(raw: str, default_region: str) -> str | None:
    """A phone number in E.164 ("+15551234567"), or None for what is no phone number (a
    short code, an alphanumeric sender, a WhatsApp address)."""
    if not _PHONE.match(raw):
        return None
    try:
        number = phonenumbers.parse(raw.strip(), default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def keyword(form: Mapping[str, str]) -> str | None:
    """"stop", "start" or "help" when the message is a carrier keyword, else None."""
    kind = _OPT_OUT_TYPES.get(form.get("OptOutType", "").upper())
    if kind is not None:
        return kind
    said = form.get("Body", "").strip().strip(".!").lower()
    if said in OPT_OUT:
        return "stop"
    if said in OPT_IN:
        return "start"
    if said in HELP:
        return "help"
    return None


def _norm(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower().replace("/", " ")))


def pick(text: str, buttons: Sequence[Button]) -> Button | None:
    """The button a typed answer names: its number in the list, or its label."""
    said = _norm(text).strip(".")
    if not said:
        return None
    if said.isdigit():
        index = int(said) - 1
        return buttons[index] if 0 <= index < len(buttons) else None
    hits = [b for b in buttons if said in (_norm(b.label), b.payload.lower().split(":")[-1])]
    return hits[0] if len(hits) == 1 else None


async def last_choices(runtime: Runtime, address: str) -> list[Button]:
    """The numbered buttons of the last message delivered to this number (what a "1" or "2"
    answers): read from the transcript, so any process, after any restart, reads the same."""
    async with runtime.readers() as session:
        body = await session.scalar(
            select(Message.body).join(Identity, Identity.id == Message.identity_id)
            .join(OutboxItem, OutboxItem.message_id == Message.id)
            .where(Identity.channel == CHANNEL, Identity.address == address,
                   Message.direction == "out", OutboxItem.status == "sent")
            .order_by(Message.id.desc()).limit(1))
    if not body:
        return []
    return numbered([Button(b["label"], b["payload"]) for b in body.get("buttons", [])])


async def action_for(runtime: Runtime, address: str, text: str) -> str | None:
    """The button payload a typed answer stands for: a reply code ("A4821" accepts R-4821),
    or a choice from the last message's numbered list."""
    code = accept_payload(text)
    if code is not None:
        return code
    if not _MAYBE_CHOICE.match(text):
        return None  # a VIN, a mileage, a sentence: no read of the last message
    choice = pick(text, await last_choices(runtime, address))
    return choice.payload if choice is not None else None


@dataclass(frozen=True)
class Media:
    url: str
    content_type: str


def media_of(form: Mapping[str, str]) -> list[Media]:
    try:
        count = min(MAX_MEDIA, int(form.get("NumMedia", "0") or 0))
    except ValueError:
        return []
    found = [Media(form.get(f"MediaUrl{i}", ""), form.get(f"MediaContentType{i}", ""))
             for i in range(count)]
    return [media for media in found if media.url.startswith(("https://", "http://"))]


class MediaFetcher:
    """Downloads MMS media with the account's credentials (sent to Twilio's hosts only; a
    redirect elsewhere drops them) and stores it as an upload, as the widget's are."""

    def __init__(self, runtime: Runtime, session: aiohttp.ClientSession,
                 credentials: str, api_base: str) -> None:
        self.runtime = runtime
        self.session = session
        self.credentials = credentials
        self.api_host = urlsplit(api_base).hostname or ""

    def _auth_for(self, url: str) -> dict[str, str]:
        host = urlsplit(url).hostname or ""
        twilio = host == self.api_host or host == "twilio.com" or host.endswith(".twilio.com")
        return {"Authorization": self.credentials} if twilio else {}

    async def fetch_all(self, address: str, sid: str, media: list[Media]) -> tuple[str, ...]:
        """The stored files' ids; a file refused or not fetched is said so to the sender."""
        stored: list[str] = []
        for index, item in enumerate(media):
            try:
                data = await self._download(item.url)
                stored.append(await self._store(address, data))
            except UploadRejected as exc:
                log.info("sms from=%s media refused: %s", address, exc.code)
                await self._tell(address, str(exc), f"sms-media:{sid}:{index}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("sms from=%s media download failed: %s", address,
                            type(exc).__name__)
                await self._tell(address, DOWNLOAD_FAILED, f"sms-media:{sid}:{index}")
        return tuple(stored)

    async def _download(self, url: str) -> bytes:
        limit = self.runtime.config.uploads.max_bytes
        too_large = UploadRejected("too_large", f"That file is larger than {limit / 1e6:.0f} "
                                                "MB; please send a smaller one.")
        async with self.session.get(url, headers=self._auth_for(url),
                                    timeout=aiohttp.ClientTimeout(total=20)) as response:
            response.raise_for_status()
            if (response.content_length or 0) > limit:
                raise too_large  # refused before reading it
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data.extend(chunk)
                if len(data) > limit:
                    raise too_large
        return bytes(data)

    async def _store(self, address: str, data: bytes) -> str:
        contact = Contact(CHANNEL, address)
        for attempt in range(2):
            try:
                async with self.runtime.transaction() as uow:
                    now = self.runtime.clock.now()
                    person = (await people_for(uow, [contact], now))[contact.key]
                    record = await store_upload(uow.session, self.runtime.config,
                                                person.identity.id, data, None, now)
                log.info("sms from=%s file=%s stored type=%s bytes=%s", address,
                         record.public_id, record.content_type, record.size_bytes)
                return record.public_id
            except RaceLost:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def _tell(self, address: str, text: str, key: str) -> None:
        contact = Contact(CHANNEL, address)
        async with self.runtime.transaction() as uow:
            now = self.runtime.clock.now()
            person = (await people_for(uow, [contact], now))[contact.key]
            await tell(uow, person.identity, text, now, key=key,
                       conversation_id=person.conversation.id)
