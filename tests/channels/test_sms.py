"""The SMS channel over Twilio's wire format: signed webhooks into the service, the REST API
stand-in on 127.0.0.1 for what it sends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from channels.sms import SMS, SMS_PATH, STATUS_PATH
from channels.sms_render import encoding, segment_count
from core.config import Config, with_changes
from core.delivery import DeliveryStats, OutboxDispatcher
from core.messages import Outbound
from core.models import (
    Customer,
    File,
    Identity,
    InboundEvent,
    Message,
    OutboxItem,
    SmsDelivery,
    TermsAcceptance,
)
from core.outbox import enqueue
from core.runtime import Runtime
from tests.standins.twilio_api import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    TwilioApi,
    invalid_number,
    server_error,
    too_many_requests,
    unsubscribed,
)

PUBLIC_URL = "https://autodoctor.example"
OUR_NUMBER = "+15550000000"
ALICE = "+15551230001"
GOOD_VIN = "1HGCM82633A004352"
PROBLEM = "Grinding noise from the front left wheel when braking"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8

MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def twilio_api() -> AsyncIterator[TwilioApi]:
    api = TwilioApi()
    await api.start()
    yield api
    await api.close()


def sms_config(config: Config, api: TwilioApi, *, from_number: str = OUR_NUMBER,
               **changes: Any) -> Config:
    # Tests do not wait on the long code's 1 segment a second.
    return with_changes(config, public_url=PUBLIC_URL, twilio={"api_base": api.base_url},
                        rate_limits={"sms_per_second": 1000.0},
                        secrets={"twilio_account_sid": ACCOUNT_SID,
                                 "twilio_auth_token": AUTH_TOKEN,
                                 "twilio_from_number": from_number}, **changes)


class Phones:
    """People texting the service through Twilio, as the stand-in plays them."""

    def __init__(self, api: TwilioApi, client: TestClient, runtime: Runtime) -> None:
        self.api, self.client, self.runtime = api, client, runtime
        self.outbox = OutboxDispatcher(runtime, {"sms": client.app[SMS].sender})

    async def post(self, path: str, form: dict[str, str], *,
                   signature: str | None = None) -> ClientResponse:
        if signature is None:
            signature = self.api.sign(PUBLIC_URL + path, form)
        return await self.client.post(path, data=form,
                                      headers={"X-Twilio-Signature": signature})

    async def deliver(self) -> DeliveryStats:
        total = DeliveryStats()
        while True:
            stats = await self.outbox.run_once()
            total.sent += stats.sent
            total.retried += stats.retried
            total.failed += stats.failed
            if not (stats.sent or stats.failed):
                return total

    async def text(self, number: str, body: str, **form: Any) -> list[str]:
        """A person texts us; the replies Twilio was asked to send them."""
        before = len(self.api.texts(number))
        response = await self.post(SMS_PATH, self.api.incoming(number, body, **form))
        assert response.status == 200, await response.text()
        assert response.content_type == "text/xml"
        assert "<Response" in await response.text()
        await self.deliver()
        return self.api.texts(number)[before:]


@pytest.fixture
async def phones(twilio_api: TwilioApi, make_client: MakeClient, config: Config,
                 runtime: Runtime) -> Phones:
    return Phones(twilio_api, await make_client(sms_config(config, twilio_api)), runtime)


async def intake_to_photos(phones: Phones, number: str = ALICE) -> None:
    (greeting,) = await phones.text(number, "Hi")
    assert "1. Quick Chat" in greeting and greeting.endswith("Reply 1, 2 or 3.")
    (ask,) = await phones.text(number, "1")
    assert "What's your first name?" in ask  # SMS gives no name
    assert (await phones.text(number, "alice"))[0].startswith("Nice to meet you, Alice!")
    await phones.text(number, GOOD_VIN)
    await phones.text(number, "84000")
    (photos,) = await phones.text(number, PROBLEM)
    assert photos.startswith("Photos help a lot") and photos.endswith('Or reply "Skip".')


async def stored_acceptances(runtime: Runtime) -> list[TermsAcceptance]:
    async with runtime.sessions() as s:
        return list((await s.scalars(select(TermsAcceptance))).all())


# ---------------------------------------------------------------------- customers


async def test_whole_intake_by_sms_ends_with_a_plain_payment_link(
        phones: Phones, twilio_api: TwilioApi, runtime: Runtime) -> None:
    await intake_to_photos(phones)
    (summary,) = await phones.text(ALICE, "skip")  # the label's word picks the button
    assert "Problem: Grinding noise" in summary
    assert "1. Confirm and pay\n2. Change tier" in summary and "Name: Alice" in summary
    assert summary.endswith("Reply 1, 2, 3, 4, 5, 6 or 7.")
    (terms,) = await phones.text(ALICE, "1")
    assert "advice, not an inspection" in terms and f"{PUBLIC_URL}/terms" in terms
    assert not await stored_acceptances(runtime)
    (pay,) = await phones.text(ALICE, "agree")
    assert pay.startswith("Almost done! Pay $9.99 for Quick Chat")
    link = pay.rsplit("\n", 1)[1]
    assert link.startswith(f"Pay $9.99: {PUBLIC_URL}/pay/")
    (accepted,) = await stored_acceptances(runtime)
    assert (accepted.channel, accepted.client_address) == ("sms", None)
    sent = twilio_api.to(ALICE)
    assert {m.sender for m in sent} == {OUR_NUMBER}
    assert {m.status_callback for m in sent} == {f"{PUBLIC_URL}{STATUS_PATH}"}
    # Our own texts stay GSM-7: no curly quote or "·" turns one segment into three.
    assert all(encoding(m.body) == "GSM-7" for m in sent)
    assert [m.segments for m in sent] == [segment_count(m.body) for m in sent]
    async with runtime.sessions() as s:
        rows = (await s.scalars(select(SmsDelivery).order_by(SmsDelivery.id))).all()
    assert [r.sid for r in rows] == [m.sid for m in sent]
    assert all(r.status == "queued" and r.outbox_key for r in rows)


async def test_a_numbered_answer_is_read_from_the_database_by_another_process(
        phones: Phones, twilio_api: TwilioApi, make_client: MakeClient, config: Config,
        runtime: Runtime) -> None:
    await phones.text(ALICE, "Hi")
    await phones.text(ALICE, "2")
    await phones.text(ALICE, "Alice")
    # Another serve process (or this one restarted) takes the next messages.
    other = Phones(twilio_api, await make_client(sms_config(config, twilio_api)), runtime)
    (ask,) = await other.text(ALICE, "1")  # "No VIN", the only choice of the last message
    assert ask.startswith("What's the year, make and model?")
    await other.text(ALICE, "2015 Honda Civic")
    await other.text(ALICE, "1")  # Skip the mileage
    async with runtime.sessions() as s:
        actions = (await s.scalars(select(Message.action).where(
            Message.direction == "in").order_by(Message.id))).all()
    assert actions == [None, "plan:video15", None, "vehicle:no_vin", None, "odometer:skip"]


async def test_forged_or_missing_signature_is_refused_and_changes_nothing(
        phones: Phones, twilio_api: TwilioApi, runtime: Runtime) -> None:
    form = twilio_api.incoming(ALICE, "Hi")
    for signature in ("", "forged=", twilio_api.sign("https://elsewhere.example" + SMS_PATH,
                                                     form)):
        assert (await phones.post(SMS_PATH, form, signature=signature)).status == 403
    tampered = {**form, "Body": "Something else"}
    assert (await phones.post(SMS_PATH, tampered,
                              signature=twilio_api.sign(PUBLIC_URL + SMS_PATH, form))).status \
        == 403
    assert (await phones.post(STATUS_PATH, {"MessageSid": "SMx", "MessageStatus": "failed",
                                            "To": ALICE, "ErrorCode": "30006"},
                              signature="nope")).status == 403
    await phones.deliver()
    assert twilio_api.sent == []
    async with runtime.sessions() as s:
        assert (await s.scalars(select(InboundEvent))).all() == []
        assert (await s.scalars(select(Identity))).all() == []


async def test_a_retried_message_sid_is_handled_once(
        phones: Phones, twilio_api: TwilioApi, runtime: Runtime) -> None:
    form = twilio_api.incoming(ALICE, "Hi")
    for _ in range(3):  # Twilio retries after a timeout
        assert (await phones.post(SMS_PATH, form)).status == 200
    await phones.deliver()
    assert len(twilio_api.texts(ALICE)) == 1
    async with runtime.sessions() as s:
        assert len((await s.scalars(select(Message).where(
            Message.direction == "in"))).all()) == 1


async def test_stop_opts_out_start_opts_in_and_help_says_how(
        phones: Phones, twilio_api: TwilioApi, runtime: Runtime) -> None:
    await phones.text(ALICE, "Hi")
    (helped,) = await phones.text(ALICE, "HELP")
    assert helped.startswith("AutoDoctor:") and "STOP" in helped
    assert '"cancel request"' in helped and segment_count(helped) == 1
    assert await phones.text(ALICE, "Stop") == []  # the carrier confirms, we say nothing
    async with runtime.sessions() as s:
        identity = await s.scalar(select(Identity).where(Identity.address == ALICE))
    assert identity is not None and not identity.reachable
    assert identity.unreachable_reason == "opted out (replied STOP)"
    # Whatever they write now, nothing is sent; what was queued fails, never reaching Twilio.
    assert await phones.text(ALICE, "1") == []
    async with runtime.sessions() as s:
        failed = (await s.scalars(select(OutboxItem).where(
            OutboxItem.status == "failed"))).all()
    assert len(failed) == 1 and failed[0].last_error == "opted out (replied STOP)"
    (back,) = await phones.text(ALICE, "START")
    assert back.startswith("You're subscribed to AutoDoctor texts again.")
    # The plan was chosen while opted out: the conversation goes on from the next question.
    (ask,) = await phones.text(ALICE, "1")
    assert "first name" in ask


async def test_yes_and_start_from_a_subscribed_number_are_plain_answers(
        phones: Phones) -> None:
    await intake_to_photos(phones)
    await phones.text(ALICE, "skip")
    await phones.text(ALICE, "YES")  # "yes" at the summary: confirm
    (pay,) = await phones.text(ALICE, "I agree")
    assert pay.startswith("Almost done!")
    status, reminder = await phones.text(ALICE, "status")
    assert "waiting for payment" in status and '"cancel request"' in reminder
    replies = await phones.text(ALICE, "cancel request")
    assert replies[0].startswith("Done: your request is cancelled")
    (greeting,) = await phones.text(ALICE, "start")
    assert "Which kind of help" in greeting


async def test_mms_photo_is_fetched_with_the_account_credentials_and_attached(
        phones: Phones, twilio_api: TwilioApi, runtime: Runtime) -> None:
    await intake_to_photos(phones)
    url = twilio_api.host_media(JPEG, "image/jpeg")
    (got,) = await phones.text(ALICE, "", media=[(url, "image/jpeg")])
    assert got.startswith("Got it: 1 file attached.")
    assert [authorized for _id, authorized in twilio_api.media_fetches] == [True]
    async with runtime.sessions() as s:
        (stored,) = (await s.scalars(select(File))).all()
    assert stored.content_type == "image/jpeg" and stored.intake_id is not None
    # Not a photo, whatever Twilio's content type says: refused, said so, not stored.
    fake = twilio_api.host_media(b"MZ\x90\x00 not an image", "image/jpeg")
    refused = await phones.text(ALICE, "", media=[(fake, "image/jpeg")])
    assert refused[0].startswith("Only photos")
    async with runtime.sessions() as s:
        assert len((await s.scalars(select(File))).all()) == 1


async def test_oversized_mms_is_refused_before_it_is_read(
        twilio_api: TwilioApi, make_client: MakeClient, config: Config,
        runtime: Runtime) -> None:
    small = sms_config(config, twilio_api, uploads={"max_bytes": 1000})
    phones = Phones(twilio_api, await make_client(small), runtime)
    await intake_to_photos(phones)
    url = twilio_api.host_media(JPEG, "image/jpeg")
    refused = await phones.text(ALICE, "", media=[(url, "image/jpeg")])
    assert refused[0].startswith("That file is larger than")
    async with runtime.sessions() as s:
        assert (await s.scalars(select(File))).all() == []


# ---------------------------------------------------------------------- delivery


async def test_status_callbacks_are_recorded_and_a_dead_number_is_marked(
        phones: Phones, twilio_api: TwilioApi, runtime: Runtime) -> None:
    await phones.text(ALICE, "Hi")
    (greeting,) = twilio_api.to(ALICE)
    for status in ("sent", "delivered", "sent"):  # a late "sent" does not undo "delivered"
        response = await phones.post(STATUS_PATH, twilio_api.status(greeting, status))
        assert response.status == 204
    async with runtime.sessions() as s:
        row = await s.scalar(select(SmsDelivery).where(SmsDelivery.sid == greeting.sid))
    assert row is not None and row.status == "delivered"
    await phones.text(ALICE, "1")
    ask = twilio_api.to(ALICE)[-1]
    await phones.post(STATUS_PATH, twilio_api.status(ask, "undelivered", 30006))
    async with runtime.sessions() as s:
        row = await s.scalar(select(SmsDelivery).where(SmsDelivery.sid == ask.sid))
        identity = await s.scalar(select(Identity).where(Identity.address == ALICE))
    assert row is not None and (row.status, row.error_code) == ("undelivered", 30006)
    assert identity is not None and not identity.reachable
    assert identity.unreachable_reason == "Twilio 30006: undelivered"


@pytest.mark.parametrize("refusal", [unsubscribed, invalid_number])
async def test_unsubscribed_or_invalid_number_marks_the_identity_unreachable(
        phones: Phones, twilio_api: TwilioApi, runtime: Runtime,
        refusal: Callable[[str], Any]) -> None:
    twilio_api.refused[ALICE] = refusal(ALICE)
    assert await phones.text(ALICE, "Hi") == []
    async with runtime.sessions() as s:
        identity = await s.scalar(select(Identity).where(Identity.address == ALICE))
        row = await s.scalar(select(OutboxItem))
    assert identity is not None and not identity.reachable
    code = refusal(ALICE).code
    assert identity.unreachable_reason is not None
    assert identity.unreachable_reason.startswith(f"Twilio {code}:")
    assert row is not None and row.status == "failed"


@pytest.mark.parametrize("failure", [too_many_requests, server_error])
async def test_429_and_5xx_are_retried_later(
        phones: Phones, twilio_api: TwilioApi, runtime: Runtime,
        failure: Callable[[], Any]) -> None:
    twilio_api.failures[ALICE].append(failure())
    response = await phones.post(SMS_PATH, twilio_api.incoming(ALICE, "Hi"))
    assert response.status == 200
    stats = await phones.outbox.run_once()
    assert (stats.sent, stats.retried) == (0, 1)
    async with runtime.sessions() as s:
        row = await s.scalar(select(OutboxItem))
        identity = await s.scalar(select(Identity).where(Identity.address == ALICE))
    assert row is not None and row.status == "pending" and row.attempts == 1
    assert identity is not None and identity.reachable
    # Once due again it goes through.
    runtime.clock.advance(seconds=600)  # type: ignore[attr-defined]
    assert (await phones.outbox.run_once()).sent == 1
    assert len(twilio_api.texts(ALICE)) == 1


async def test_a_pool_of_numbers_keeps_each_person_on_one_number(
        twilio_api: TwilioApi, make_client: MakeClient, config: Config,
        runtime: Runtime) -> None:
    pool = "+15550000001,+15550000002,+15550000003"
    phones = Phones(twilio_api, await make_client(sms_config(config, twilio_api,
                                                             from_number=pool)), runtime)
    people = [f"+1555123{n:04d}" for n in range(12)]
    for number in people:
        await phones.text(number, "Hi")
        await phones.text(number, "1")
    senders = {number: {m.sender for m in twilio_api.to(number)} for number in people}
    assert all(len(used) == 1 for used in senders.values())
    assert {s for used in senders.values() for s in used} == set(pool.split(","))


@pytest.mark.parametrize(("per_second", "refused"), [(5.0, False), (1000.0, True)],
                         ids=["paced", "unpaced-control"])
async def test_each_sending_number_keeps_to_its_rate(
        twilio_api: TwilioApi, make_client: MakeClient, config: Config, runtime: Runtime,
        per_second: float, refused: bool) -> None:
    # The stand-in refuses (429) a number's sixth segment within any second, as a carrier
    # counts a long code's. Paced at the configured 5 a second, a burst of messages from one
    # number all go through; the control shows the stand-in would refuse a sender that did
    # not keep to it.
    twilio_api.per_number_per_second = 5
    phones = Phones(twilio_api, await make_client(with_changes(
        sms_config(config, twilio_api), rate_limits={"sms_per_second": per_second})), runtime)
    people = [f"+1555124{n:04d}" for n in range(12)]
    now = runtime.clock.now()
    async with runtime.transaction() as uow:
        for number in people:
            customer = Customer(created_at=now)
            uow.session.add(customer)
            await uow.session.flush()
            identity = Identity(channel="sms", address=number, customer_id=customer.id,
                                created_at=now)
            uow.session.add(identity)
            await uow.session.flush()
            await enqueue(uow, identity, Outbound("sms", number, "Your mechanic is ready."),
                          now)
    stats = await phones.outbox.run_once()
    if refused:
        assert stats.retried > 0
        assert any(code == 20429 for _to, code in twilio_api.rejected)
    else:
        assert (stats.sent, stats.retried) == (len(people), 0)
        assert twilio_api.rejected == []
        assert {m.to for m in twilio_api.sent} == set(people)
