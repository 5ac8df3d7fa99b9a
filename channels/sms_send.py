"""The SMS side of core.delivery.Sender: Twilio's REST client, sending numbers, errors mapped.

The twilio Client is given an HTTP client of ours through its documented `http_client`
seam (twilio.http.AsyncHttpClient): it sends the SDK's requests over one aiohttp session, to
`[twilio] api_base` instead of https://api.twilio.com, so a stand-in can take Twilio's place.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import phonenumbers
from sqlalchemy import func, select, update
from twilio.base import values
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from channels.sms_render import render, segment_count
from core.db import insert_ignore
from core.errors import DeliveryError, PermanentFailure, RetryLater
from core.messages import Attachment, Outbound
from core.models import Identity, SmsDelivery
from core.runtime import Runtime

log = logging.getLogger("autodoctor.channels.sms")

CHANNEL = "sms"
TWILIO_API = "https://api.twilio.com"
# Twilio errors that mean this number will never take our messages: 21610 the person
# replied STOP, 21211 not a valid number, 21614 not a mobile number; and, in a status
# callback, 30004 blocked, 30005 unknown number, 30006 a landline.
UNREACHABLE_CODES = frozenset({21610, 21211, 21614, 30004, 30005, 30006})
# Seconds added between one number's requests: evenly spaced as they leave, they arrive a few
# milliseconds unevenly, and whoever counts arrivals per second must never see one too many.
PACE_MARGIN = 0.03
MMS_TYPES = frozenset({"image/jpeg", "image/png", "image/gif"})
MMS_REGIONS = frozenset({"US", "CA"})


def basic_auth(login: str, password: str) -> str:
    """An Authorization header's value for HTTP basic auth (the account SID and token)."""
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


class ApiBaseHttpClient(AsyncHttpClient):
    """The twilio SDK's requests, sent over an aiohttp session to `api_base`."""

    def __init__(self, api_base: str, timeout: float = 30.0) -> None:
        super().__init__(log, True, timeout)
        self.api_base = api_base.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    def rebase(self, url: str) -> str:
        """Twilio's URL as the same path under api_base."""
        if url.startswith(TWILIO_API + "/"):
            return self.api_base + url[len(TWILIO_API):]
        return url

    async def request(self, method: str, uri: str,
                      params: Mapping[str, object] | None = None,
                      data: Mapping[str, object] | None = None,
                      headers: Mapping[str, str] | None = None,
                      auth: tuple[str, str] | None = None,
                      timeout: float | None = None,  # noqa: ASYNC109 - the SDK's signature
                      allow_redirects: bool = False) -> Response:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        # Lists (MediaUrl) go as repeated fields, as Twilio reads them.
        form = [(key, str(item)) for key, value in (data or {}).items()
                for item in (value if isinstance(value, list) else [value])]
        sent_headers = dict(headers or {})
        if auth:
            sent_headers["Authorization"] = basic_auth(*auth)
        async with self.session.request(
                method, self.rebase(uri), params={k: str(v) for k, v in (params or {}).items()},
                data=form or None, headers=sent_headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
                allow_redirects=allow_redirects) as response:
            return Response(response.status, await response.text(), response.headers)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class SendingNumbers:
    """The numbers we send from (or one Messaging Service SID), each paced on its own: a
    person always hears from the same number, so their replies come back to it."""

    def __init__(self, setting: str, per_second: float) -> None:
        self.numbers = [n.strip() for n in setting.split(",") if n.strip()]
        if not self.numbers:
            raise ValueError("no sending number")
        self.per_second = per_second
        self._paces: dict[str, _Pace] = {}

    def for_address(self, address: str) -> str:
        return self.numbers[zlib.crc32(address.encode()) % len(self.numbers)]

    @staticmethod
    def params(sender: str) -> dict[str, Any]:
        if sender.startswith("MG"):
            return {"messaging_service_sid": sender}
        return {"from_": sender}

    def turn(self, sender: str, segments: int) -> _Turn:
        """`async with numbers.turn(sender, n):` send one message of n segments from sender.

        A number's requests go one at a time, each started no sooner than its rate allows
        after the start of the one before (its segments counted, as carriers count them).
        Timed from when each request really starts, a late start cannot bring the next one
        too close to it."""
        pace = self._paces.get(sender)
        if pace is None:
            pace = self._paces[sender] = _Pace()
        return _Turn(pace, max(1, segments) / self.per_second + PACE_MARGIN)

    def pause(self, sender: str, seconds: float) -> None:
        """Nothing from this number for `seconds` (after a 429)."""
        pace = self._paces.get(sender)
        if pace is not None:
            pace.next_start = max(pace.next_start, time.monotonic() + seconds)


class _Pace:
    """One sending number's pace: its lock, and when its next request may start."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.next_start = 0.0


class _Turn:
    def __init__(self, pace: _Pace, seconds: float) -> None:
        self.pace, self.seconds = pace, seconds

    async def __aenter__(self) -> None:
        await self.pace.lock.acquire()
        wait = self.pace.next_start - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self.pace.next_start = time.monotonic() + self.seconds

    async def __aexit__(self, *exc: object) -> None:
        self.pace.lock.release()


def delivery_error(exc: TwilioRestException) -> DeliveryError:
    """Twilio's error as the outbox understands it: wait, retry, or give up on this number."""
    code = exc.code if isinstance(exc.code, int) else None
    if code in UNREACHABLE_CODES:
        return PermanentFailure(f"Twilio {code}: {exc.msg}"[:255])
    # 429 (too many requests at once), 5xx, and anything else: retried with backoff; the
    # outbox gives up after its maximum number of attempts.
    return RetryLater(f"Twilio HTTP {exc.status} code {code}: {exc.msg}")


def can_take_mms(address: str) -> bool:
    try:
        number = phonenumbers.parse(address, None)
    except phonenumbers.NumberParseException:
        return False
    # A number no carrier has given out yet still has its country's region (+1: US).
    region = phonenumbers.region_code_for_number(number) or \
        phonenumbers.region_code_for_country_code(number.country_code or 0)
    return region in MMS_REGIONS


class SmsSender:
    """Sends one Outbound as one or more Twilio messages; returns the last message's sid."""

    def __init__(self, runtime: Runtime, client: Client, numbers: SendingNumbers) -> None:
        self.runtime = runtime
        self.client = client
        # The SDK loads its Messages API on first use: now, not in the first send's turn
        # (a late first request would arrive too close to the next one from its number).
        self.messages = client.messages
        self.numbers = numbers
        config = runtime.config
        self.status_callback = f"{config.public_url.rstrip('/')}/webhooks/twilio/status"
        self.max_segments = config.sms.max_segments
        self.mms = config.sms.mms and urlsplit(config.public_url).scheme == "https"

    def as_mms(self, address: str) -> Any:
        def check(attached: Attachment) -> bool:
            return self.mms and attached.content_type in MMS_TYPES and can_take_mms(address)
        return check

    async def send(self, outbound: Outbound) -> str | None:
        refusal = await self._opted_out(outbound.address)
        if refusal is not None:
            raise PermanentFailure(refusal)
        # An SMS cannot be edited: an edit ("taken by another mechanic") is a new message.
        rendered = render(outbound, self.max_segments, self.as_mms(outbound.address))
        bodies = rendered.bodies or ([""] if rendered.media else [])
        if not bodies:
            log.warning("sms to=%s: empty message not sent", outbound.address)
            return None
        # A retry after a failure part-way through does not send the first parts again.
        done = await self._parts_sent(outbound.dedupe_key) if len(bodies) > 1 else 0
        sender = self.numbers.for_address(outbound.address)
        sid: str | None = None
        for index, body in enumerate(bodies[done:], start=done):
            media = rendered.media if index == 0 else []
            segments = 1 if media else segment_count(body)
            async with self.numbers.turn(sender, segments):
                sid = await self._create(outbound, sender, body, media)
            await self._record(sid, outbound, segments)
        return sid

    async def _create(self, outbound: Outbound, sender: str, body: str,
                      media: list[str]) -> str:
        try:
            message = await self.messages.create_async(
                to=outbound.address, body=body or values.unset,
                media_url=media or values.unset, status_callback=self.status_callback,
                **self.numbers.params(sender))
        except TwilioRestException as exc:
            error = delivery_error(exc)
            if exc.status == 429:
                self.numbers.pause(sender, 1.0)
            raise error from exc
        except (TwilioException, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RetryLater(f"Twilio: {type(exc).__name__}: {exc}") from exc
        log.info("sms to=%s sid=%s status=%s", outbound.address, message.sid, message.status)
        return str(message.sid)

    async def _opted_out(self, address: str) -> str | None:
        """Why this number must not be written to (it replied STOP, or Twilio refused it)."""
        async with self.runtime.readers() as session:
            row = (await session.execute(select(Identity.reachable, Identity.unreachable_reason)
                                         .where(Identity.channel == CHANNEL,
                                                Identity.address == address))).first()
        if row is None or row.reachable:
            return None
        return row.unreachable_reason or "the number is marked unreachable"

    async def _parts_sent(self, key: str | None) -> int:
        if key is None:
            return 0
        async with self.runtime.readers() as session:
            return int(await session.scalar(select(func.count()).select_from(SmsDelivery)
                                            .where(SmsDelivery.outbox_key == key)) or 0)

    async def _record(self, sid: str, outbound: Outbound, segments: int) -> None:
        now = self.runtime.clock.now()
        async with self.runtime.transaction() as uow:
            made = await insert_ignore(uow.session, SmsDelivery, {
                "sid": sid, "outbox_key": outbound.dedupe_key, "address": outbound.address,
                "status": "queued", "segments": segments, "created_at": now,
                "updated_at": now}, ["sid"])
            if made is None:  # its status callback came first
                await uow.session.execute(update(SmsDelivery).where(SmsDelivery.sid == sid)
                                          .values(outbox_key=outbound.dedupe_key,
                                                  segments=segments))
