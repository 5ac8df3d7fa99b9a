"""The SMS channel on Twilio: signed webhooks in, the REST client out (through the outbox).

POST /webhooks/twilio/sms takes a person's message: its X-Twilio-Signature is checked with the
twilio package's RequestValidator over the URL Twilio called (`public_url` + path: behind a
proxy the service's own view of the URL differs) and the form; each MessageSid is handled once
(the engine records it); the answer is an empty TwiML document, the replies go through the
outbox. POST /webhooks/twilio/status records what became of each message we sent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp
import phonenumbers
from aiohttp import web
from sqlalchemy import select, update
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse

from channels.sms_inbound import CHANNEL, MediaFetcher, action_for, e164, keyword, media_of
from channels.sms_send import (
    UNREACHABLE_CODES,
    ApiBaseHttpClient,
    SendingNumbers,
    SmsSender,
    basic_auth,
)
from core.db import insert_ignore
from core.delivery import Sender
from core.engine import Engine
from core.errors import ConfigError
from core.messages import Inbound
from core.models import Identity, InboundEvent, SmsDelivery
from core.runtime import Runtime

log = logging.getLogger("autodoctor.channels.sms")

SMS_PATH = "/webhooks/twilio/sms"
STATUS_PATH = "/webhooks/twilio/status"
SIGNATURE_HEADER = "X-Twilio-Signature"
# A status never goes back: a late "sent" does not undo "delivered".
_STATUS_RANK = {"accepted": 0, "scheduled": 0, "queued": 1, "sending": 2, "sent": 3,
                "delivered": 4, "undelivered": 4, "failed": 4, "canceled": 4, "read": 5}


def empty_twiml() -> web.Response:
    return web.Response(text=str(MessagingResponse()), content_type="text/xml")


class SmsChannel:
    """Holds the twilio Client and validator; takes webhooks, sends through `sender`."""

    def __init__(self, runtime: Runtime, engine: Engine) -> None:
        config = runtime.config
        secrets = config.secrets
        if config.sms.default_region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(f"sms.default_region must be a region code such as US or GB, "
                              f"got {config.sms.default_region!r}")
        self.runtime = runtime
        self.engine = engine
        self.region = config.sms.default_region.upper()
        self.public_url = config.public_url.rstrip("/")
        self.validator = RequestValidator(secrets.twilio_auth_token)
        self.http = ApiBaseHttpClient(config.twilio.api_base)
        self.client = Client(secrets.twilio_account_sid, secrets.twilio_auth_token,
                             http_client=self.http)
        try:
            numbers = SendingNumbers(secrets.twilio_from_number,
                                     config.rate_limits.sms_per_second)
        except ValueError:
            raise ConfigError("TWILIO_FROM_NUMBER must name a number (+15551234567), several "
                              "separated by commas, or a Messaging Service SID (MG...)") from None
        self.sender = SmsSender(runtime, self.client, numbers)
        self.credentials = basic_auth(secrets.twilio_account_sid, secrets.twilio_auth_token)
        self.media: MediaFetcher | None = None

    async def start(self) -> None:
        self.media = MediaFetcher(self.runtime, aiohttp.ClientSession(), self.credentials,
                                  self.runtime.config.twilio.api_base)
        log.info("sms: sending from %s number(s); webhooks %s%s and %s%s",
                 len(self.sender.numbers.numbers), self.public_url, SMS_PATH, self.public_url,
                 STATUS_PATH)

    async def stop(self) -> None:
        if self.media is not None:
            await self.media.session.close()
        await self.http.close()

    async def _signed_form(self, request: web.Request) -> dict[str, str]:
        """The form, if Twilio signed it for the URL it called; 403 otherwise."""
        form = await request.post()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        url = self.public_url + request.path_qs
        if not signature or not self.validator.validate(url, form, signature):
            log.warning("twilio webhook %s refused: bad or missing signature", request.path)
            raise web.HTTPForbidden(text="Bad or missing X-Twilio-Signature.")
        return {key: value for key, value in form.items() if isinstance(value, str)}

    async def handle_sms(self, request: web.Request) -> web.Response:
        """POST /webhooks/twilio/sms: one message from a person."""
        form = await self._signed_form(request)
        sid = form.get("MessageSid") or form.get("SmsSid") or ""
        address = e164(form.get("From", ""), self.region)
        if not sid or address is None:
            log.info("sms without a sid or a phone number ignored (from=%r)",
                     form.get("From", "")[:40])
            return empty_twiml()
        text = form.get("Body", "")
        kind = keyword(form)
        action = f"keyword:{kind}" if kind else await action_for(self.runtime, address, text)
        attachments: tuple[str, ...] = ()
        media = media_of(form)
        if media and self.media is not None and not await self._seen(sid):
            attachments = await self.media.fetch_all(address, sid, media)
        handled = await self.engine.handle(Inbound(
            channel=CHANNEL, address=address, text=text, action=action,
            attachments=attachments, provider_id=sid))
        if handled.duplicate:
            log.info("sms sid=%s from=%s was handled before", sid, address)
        return empty_twiml()

    async def _seen(self, sid: str) -> bool:
        async with self.runtime.readers() as session:
            return await session.scalar(select(InboundEvent.id).where(
                InboundEvent.provider == CHANNEL, InboundEvent.event_id == sid)) is not None

    async def handle_status(self, request: web.Request) -> web.Response:
        """POST /webhooks/twilio/status: what became of a message we sent."""
        form = await self._signed_form(request)
        await record_status(self.runtime, form, self.region)
        return web.Response(status=204)


async def record_status(runtime: Runtime, form: Mapping[str, str], region: str) -> None:
    """Keeps the message's latest status; a number Twilio says will never take our messages
    is marked unreachable."""
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    if not sid or status not in _STATUS_RANK:
        log.info("twilio status %r for sid=%r ignored", status[:20], sid[:64])
        return
    raw_code = form.get("ErrorCode", "")
    code = int(raw_code) if raw_code.isdigit() else None
    address = e164(form.get("To", ""), region) or ""
    now = runtime.clock.now()
    earlier = [name for name, rank in _STATUS_RANK.items() if rank <= _STATUS_RANK[status]]
    async with runtime.transaction() as uow:
        made = await insert_ignore(uow.session, SmsDelivery, {
            "sid": sid[:64], "address": address[:32], "status": status, "error_code": code,
            "created_at": now, "updated_at": now}, ["sid"])
        if made is None:
            await uow.session.execute(
                update(SmsDelivery).where(SmsDelivery.sid == sid,
                                          SmsDelivery.status.in_(earlier))
                .values(status=status, error_code=code, updated_at=now))
        if code in UNREACHABLE_CODES and address:
            await uow.session.execute(
                update(Identity).where(Identity.channel == CHANNEL, Identity.address == address)
                .values(reachable=False, unreachable_reason=f"Twilio {code}: {status}"))
            log.warning("sms to=%s unreachable: Twilio error %s", address, code)
    log.info("sms sid=%s %s%s", sid, status, f" error={code}" if code else "")


SMS = web.AppKey("sms", SmsChannel)


def setup(app: web.Application, runtime: Runtime, engine: Engine) -> Sender | None:
    """Add the SMS channel when TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM_NUMBER
    are set; returns its sender."""
    if not runtime.config.channel_status()["sms"]:
        return None
    channel = SmsChannel(runtime, engine)
    app[SMS] = channel
    app.router.add_post(SMS_PATH, channel.handle_sms, name="twilio_sms")
    app.router.add_post(STATUS_PATH, channel.handle_status, name="twilio_status")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await channel.start()
        yield
        await channel.stop()

    app.cleanup_ctx.append(lifecycle)
    return channel.sender


__all__ = ["CHANNEL", "SMS", "SMS_PATH", "STATUS_PATH", "SmsChannel", "record_status", "setup"]
