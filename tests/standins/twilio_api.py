"""A Twilio REST API stand-in on 127.0.0.1 that speaks the Messages API's wire format.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` takes form parameters (To, From or
MessagingServiceSid, Body, repeated MediaUrl, StatusCallback) with HTTP basic auth (the
account SID and auth token) and answers 201 with the message resource as JSON, or Twilio's
error body ``{"code": 21211, "message": ..., "more_info": ..., "status": 400}``. It can be
told to refuse a number (21610 unsubscribed, 21211 invalid), to fail the next send with a 429
or a 500, and to enforce a rate per sending number (429 past it). It plays the people too:
their messages and the status callbacks Twilio would send us, signed with the twilio
package's own RequestValidator.compute_signature, and the MMS media Twilio hosts (basic auth).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from twilio.request_validator import RequestValidator

ACCOUNT_SID = "AC" + "0" * 30 + "a1b2"
AUTH_TOKEN = "stand-in-auth-token-0123456789ab"
API_VERSION = "2010-04-01"
_GSM = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
           "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€\f")
_GSM_EXT = set("^{}\\[~]|€\f")


def num_segments(body: str) -> int:
    """How Twilio counts a body's segments (its `num_segments`)."""
    if all(c in _GSM for c in body):
        size = sum(2 if c in _GSM_EXT else 1 for c in body)
        return 1 if size <= 160 else -(-size // 153)
    size = len(body.encode("utf-16-le")) // 2
    return 1 if size <= 70 else -(-size // 67)


@dataclass
class SentMessage:
    """One message created through the API."""

    sid: str
    to: str
    sender: str
    body: str
    media: list[str]
    status_callback: str | None
    at: float
    segments: int


@dataclass
class TwilioError(Exception):
    status: int
    code: int
    message: str

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "status": self.status,
                "more_info": f"https://www.twilio.com/docs/errors/{self.code}"}


def unsubscribed(to: str) -> TwilioError:
    return TwilioError(400, 21610, "Attempt to send to unsubscribed recipient")


def invalid_number(to: str) -> TwilioError:
    return TwilioError(400, 21211, f"The 'To' number {to} is not a valid phone number.")


def too_many_requests() -> TwilioError:
    return TwilioError(429, 20429, "Too Many Requests")


def server_error() -> TwilioError:
    return TwilioError(500, 20500, "Internal Server Error")


@dataclass
class TwilioApi:
    """The Messages API of one account, plus the people who text it."""

    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    # Messages a second one sending number may send (None: no limit), counted in segments
    # over any sliding second, less `tolerance` seconds for the network's jitter.
    per_number_per_second: float | None = None
    tolerance: float = 0.02
    sent: list[SentMessage] = field(default_factory=list)
    refused: dict[str, TwilioError] = field(default_factory=dict)
    failures: dict[str, deque[TwilioError]] = field(default_factory=lambda: defaultdict(deque))
    rejected: list[tuple[str, int]] = field(default_factory=list)
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    media_fetches: list[tuple[str, bool]] = field(default_factory=list)
    base_url: str = ""

    def __post_init__(self) -> None:
        self._sids = itertools.count(1)
        self._windows: dict[str, deque[float]] = defaultdict(deque)
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self.validator = RequestValidator(self.auth_token)

    # ------------------------------------------------------------------ server

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post(f"/{API_VERSION}/Accounts/{{account}}/Messages.json", self._create)
        app.router.add_get("/media/{media_id}", self._media)
        app.router.add_get("/stand-in/sent.json", self._sent)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return header == f"Basic {expected}"

    async def _create(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            if not self._authorized(request) or request.match_info["account"] != \
                    self.account_sid:
                raise TwilioError(401, 20003, "Authenticate")
            message = self._accept(form)
        except TwilioError as error:
            self.rejected.append((str(form.get("To", "")), error.code))
            return web.json_response(error.body(), status=error.status)
        self.sent.append(message)
        self._changed.set()
        return web.json_response(self._resource(message), status=201)

    def _accept(self, form: Any) -> SentMessage:
        to = str(form.get("To", ""))
        sender = str(form.get("From") or form.get("MessagingServiceSid") or "")
        body = str(form.get("Body", ""))
        media = [str(url) for url in form.getall("MediaUrl", [])]
        if not to or not sender:
            raise TwilioError(400, 21604, "A 'To' phone number is required.")
        if not body and not media:
            raise TwilioError(400, 21602, "Message body is required.")
        if len(body) > 1600:
            raise TwilioError(400, 21617, "The concatenated message body exceeds the 1600 "
                                          "character limit.")
        queued = self.failures.get(to)
        if queued:
            raise queued.popleft()
        if to in self.refused:
            raise self.refused[to]
        segments = 1 if media else num_segments(body)
        now = time.monotonic()
        if self.per_number_per_second is not None:
            window = self._windows[sender]
            while window and window[0] <= now - 1.0 + self.tolerance:
                window.popleft()
            if len(window) + segments > self.per_number_per_second:
                raise too_many_requests()
            window.extend([now] * segments)
        callback = form.get("StatusCallback")
        return SentMessage(sid=f"SM{next(self._sids):032x}", to=to, sender=sender, body=body,
                           media=media, status_callback=str(callback) if callback else None,
                           at=now, segments=segments)

    def _resource(self, m: SentMessage) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{m.sid}"
        return {"account_sid": self.account_sid, "api_version": API_VERSION, "body": m.body,
                "date_created": "Sat, 05 Dec 2026 12:00:00 +0000", "date_sent": None,
                "date_updated": "Sat, 05 Dec 2026 12:00:00 +0000",
                "direction": "outbound-api", "error_code": None, "error_message": None,
                "from": m.sender if m.sender.startswith("+") else None,
                "messaging_service_sid": None if m.sender.startswith("+") else m.sender,
                "num_media": str(len(m.media)), "num_segments": str(m.segments),
                "price": None, "price_unit": "USD", "sid": m.sid, "status": "queued",
                "subresource_uris": {"media": f"{uri}/Media.json"}, "to": m.to,
                "uri": f"{uri}.json"}

    async def _sent(self, request: web.Request) -> web.Response:
        """What was sent and refused, for a benchmark running the stand-in elsewhere."""
        return web.json_response({
            "sent": [{"sender": m.sender, "to": m.to, "at": m.at} for m in self.sent],
            "rejected": [code for _to, code in self.rejected]})

    async def _media(self, request: web.Request) -> web.Response:
        authorized = self._authorized(request)
        self.media_fetches.append((request.match_info["media_id"], authorized))
        if not authorized:
            return web.json_response(TwilioError(401, 20003, "Authenticate").body(),
                                     status=401)
        found = self.media.get(request.match_info["media_id"])
        if found is None:
            raise web.HTTPNotFound()
        return web.Response(body=found[0], content_type=found[1])

    # ------------------------------------------------------------------ what was sent

    def to(self, number: str) -> list[SentMessage]:
        return [m for m in self.sent if m.to == number]

    def texts(self, number: str) -> list[str]:
        return [m.body for m in self.to(number)]

    async def wait_for(self, count: int, seconds: float = 10.0) -> None:
        """Until `count` messages were sent in all."""
        async with asyncio.timeout(seconds):
            while len(self.sent) < count:
                self._changed.clear()
                await self._changed.wait()

    # ------------------------------------------------------------------ people

    def host_media(self, data: bytes, content_type: str) -> str:
        """An MMS attachment as Twilio keeps it: its URL, opened with the account's auth."""
        media_id = "ME" + secrets.token_hex(16)
        self.media[media_id] = (data, content_type)
        return f"{self.base_url}/media/{media_id}"

    def incoming(self, sender: str, body: str, *, to: str = "+15550000000",
                 media: list[tuple[str, str]] = (), sid: str | None = None,  # type: ignore[assignment]
                 **extra: str) -> dict[str, str]:
        """The form Twilio posts for a message a person sent."""
        form = {"ToCountry": "US", "SmsMessageSid": "", "NumMedia": str(len(media)),
                "SmsSid": "", "SmsStatus": "received", "Body": body, "To": to,
                "NumSegments": str(num_segments(body)), "MessageSid": "",
                "AccountSid": self.account_sid, "From": sender, "ApiVersion": API_VERSION,
                "FromCountry": "US"}
        message_sid = sid or f"SM{secrets.token_hex(16)}"
        form.update(SmsMessageSid=message_sid, SmsSid=message_sid, MessageSid=message_sid)
        for index, (url, content_type) in enumerate(media):
            form[f"MediaUrl{index}"] = url
            form[f"MediaContentType{index}"] = content_type
        form.update(extra)
        return form

    def status(self, message: SentMessage, status: str, error_code: int | None = None
               ) -> dict[str, str]:
        """The form of a status callback for a message we sent."""
        form = {"SmsSid": message.sid, "SmsStatus": status, "MessageStatus": status,
                "To": message.to, "MessageSid": message.sid, "AccountSid": self.account_sid,
                "From": message.sender, "ApiVersion": API_VERSION}
        if error_code is not None:
            form["ErrorCode"] = str(error_code)
        return form

    def sign(self, url: str, form: dict[str, str]) -> str:
        """X-Twilio-Signature for a POST of `form` to `url`, as Twilio computes it."""
        return str(self.validator.compute_signature(url, form))
