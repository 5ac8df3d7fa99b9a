"""The Telegram channel over the Bot API's wire format, against the stand-in on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from bot.app import ENGINE
from channels.telegram import TELEGRAM, TelegramChannel
from core import dispatch
from core.clock import ManualClock
from core.config import Config, with_changes
from core.delivery import DeliveryStats, OutboxDispatcher
from core.engine import Context
from core.mechanics import invite_mechanic
from core.messages import Button, Link, Outbound
from core.models import (
    Conversation,
    Customer,
    File,
    Identity,
    InboundEvent,
    Offer,
    OutboxItem,
    SessionRequest,
)
from core.runtime import Runtime
from tests.factories import linked_mechanic, paid_request
from tests.standins.telegram_api import TelegramApi, TgUser, blocked, too_many_requests

TOKEN = "123456789:AAH-stand-in-token-for-tests_0123456789"
PUBLIC_URL = "https://autodoctor.example"
GOOD_VIN = "1HGCM82633A004352"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8

ALICE = TgUser(1001, "Alice", "Driver", "alice")
SAM, ANN, BOB = TgUser(2001, "Sam"), TgUser(2002, "Ann"), TgUser(2003, "Bob")
MALLORY = TgUser(3001, "Mallory")

MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def telegram_api(clock: ManualClock) -> AsyncIterator[TelegramApi]:
    api = TelegramApi(TOKEN, clock=clock.now)
    await api.start()
    yield api
    await api.close()


def telegram_config(config: Config, api: TelegramApi, mode: str = "polling",
                    **changes: Any) -> Config:
    return with_changes(config, public_url=PUBLIC_URL,
                        telegram={"mode": mode, "api_base": api.base_url},
                        secrets={"telegram_bot_token": TOKEN}, **changes)


class Bot:
    """The service with its Telegram channel on, driven through the stand-in."""

    def __init__(self, api: TelegramApi, client: TestClient, runtime: Runtime) -> None:
        self.api, self.client, self.runtime = api, client, runtime
        self.channel: TelegramChannel = client.app[TELEGRAM]
        self.outbox = OutboxDispatcher(runtime, {"telegram": self.channel.sender})

    async def send(self, *updates: dict[str, Any]) -> None:
        """People act (all in one getUpdates batch); returns once the bot handled it all."""
        await self.api.inject(*updates)
        await self.api.wait_confirmed(updates[-1])

    async def deliver(self) -> DeliveryStats:
        """Run the outbox until nothing more is due now (one row per chat per round)."""
        total = DeliveryStats()
        while True:
            stats = await self.outbox.run_once()
            total.sent += stats.sent
            total.retried += stats.retried
            total.failed += stats.failed
            if not (stats.sent or stats.failed):
                return total

    async def say(self, user: TgUser, text: str) -> list[str]:
        before = len(self.api.chat_messages(user.id))
        await self.send(self.api.message(user, text))
        await self.deliver()
        return self.api.texts(user.id)[before:]

    async def tap(self, user: TgUser, label: str) -> list[str]:
        before = len(self.api.chat_messages(user.id))
        await self.send(self.api.tap(user, label))
        await self.deliver()
        return self.api.texts(user.id)[before:]


@pytest.fixture
async def bot(telegram_api: TelegramApi, make_client: MakeClient, config: Config,
              runtime: Runtime) -> Bot:
    client = await make_client(telegram_config(config, telegram_api))
    return Bot(telegram_api, client, runtime)


async def intake_to_photos(bot: Bot, user: TgUser) -> None:
    assert "Which kind of help" in (await bot.say(user, "/start"))[0]
    await bot.tap(user, "Quick Chat")
    await bot.say(user, GOOD_VIN)
    await bot.say(user, "84000")
    replies = await bot.say(user, "Grinding noise from the front left wheel when braking")
    assert replies[-1].startswith("Photos help a lot")


async def invite(runtime: Runtime, name: str) -> str:
    async with runtime.sessions.begin() as s:
        return (await invite_mechanic(s, runtime.config, name, runtime.clock.now())).invite_code


async def offer(runtime: Runtime, request: SessionRequest) -> int:
    async with runtime.transaction() as uow:
        fresh = await uow.session.get(SessionRequest, request.id)
        assert fresh is not None
        return await dispatch.offer_request(uow, runtime, fresh, runtime.clock.now())


async def request_status(runtime: Runtime, request: SessionRequest) -> tuple[str, int | None]:
    async with runtime.sessions() as s:
        fresh = await s.get(SessionRequest, request.id)
        assert fresh is not None
        return fresh.status, fresh.mechanic_id


def keyboard(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for row in message.get("reply_markup", {}).get("inline_keyboard", []) for b in row]


# ---------------------------------------------------------------------- customers


async def test_customer_completes_the_intake_by_polling_and_gets_a_pay_button(
        bot: Bot, telegram_api: TelegramApi) -> None:
    api = telegram_api
    (greeting,) = await bot.say(ALICE, "/start")
    assert greeting.startswith("Hi! I'm the AutoDoctor assistant.")
    plans = keyboard(api.chat_messages(ALICE.id)[-1])
    assert [b["callback_data"] for b in plans] == ["plan:chat10", "plan:video15",
                                                   "plan:diagnostic"]
    # Telegram gave her first name: not asked for it.
    assert "VIN" in (await bot.tap(ALICE, "Quick Chat"))[0]
    assert "odometer" in (await bot.say(ALICE, GOOD_VIN))[-1].lower()
    await bot.say(ALICE, "84,000 miles")
    await bot.say(ALICE, "Grinding noise from the front left wheel when braking")
    (summary,) = await bot.tap(ALICE, "Skip")
    assert "Grinding noise" in summary and "Name: Alice\n" in summary
    (terms,) = await bot.tap(ALICE, "Confirm and pay")
    assert "advice, not an inspection" in terms
    assert [b["text"] for b in keyboard(api.chat_messages(ALICE.id)[-1])] == [
        "I agree", "Read the terms"]
    await bot.tap(ALICE, "I agree")

    pay = api.chat_messages(ALICE.id)[-1]
    (button,) = keyboard(pay)
    assert button["text"] == "Pay $9.99"
    assert button["url"].startswith(f"{PUBLIC_URL}/pay/") and "callback_data" not in button
    # The person is known by name, and every tap stopped its spinner.
    async with bot.runtime.sessions() as s:
        identity = await s.scalar(select(Identity).where(Identity.address == str(ALICE.id)))
    assert identity is not None and identity.display_name == "Alice Driver"
    taps = api.calls_to("answerCallbackQuery")
    assert len(taps) == 4 and all(c.status == 200 for c in taps)
    assert not api._open_queries


async def test_customer_photo_is_downloaded_and_attached_to_the_intake(
        bot: Bot, telegram_api: TelegramApi) -> None:
    await intake_to_photos(bot, ALICE)
    update = telegram_api.photo(ALICE, JPEG)
    await bot.send(update)
    await bot.deliver()
    assert telegram_api.texts(ALICE.id)[-1].startswith("Got it: 1 file attached.")
    # The largest size was fetched (getFile, then the file URL), not the thumbnail.
    largest = update["message"]["photo"][-1]["file_id"]
    assert [c.params["file_id"] for c in telegram_api.calls_to("getFile")] == [largest]
    assert len(telegram_api.calls_to("download")) == 1
    async with bot.runtime.sessions() as s:
        conversation = await s.scalar(select(Conversation).join(Identity).where(
            Identity.address == str(ALICE.id)))
        (stored,) = (await s.scalars(select(File))).all()
    assert conversation is not None and stored.intake_id == conversation.intake_id
    assert stored.size_bytes == len(JPEG) and stored.content_type == "image/jpeg"


async def test_oversized_file_is_refused_before_download_and_its_caption_still_counts(
        telegram_api: TelegramApi, make_client: MakeClient, config: Config,
        runtime: Runtime) -> None:
    small = telegram_config(config, telegram_api, uploads={"max_bytes": 1_000_000})
    bot = Bot(telegram_api, await make_client(small), runtime)
    await intake_to_photos(bot, ALICE)
    before = len(telegram_api.texts(ALICE.id))
    await bot.send(telegram_api.document(ALICE, b"%PDF-1.4 tiny", "scan.pdf", caption="done",
                                         declared_size=3_000_000))
    await bot.deliver()
    refusal, summary = telegram_api.texts(ALICE.id)[before:]
    assert refusal == "That file is 3.0 MB; the limit is 1 MB. Please send a smaller one."
    assert not telegram_api.calls_to("getFile")
    assert "Grinding noise" in summary  # the caption "done" moved the intake on
    async with runtime.sessions() as s:
        assert (await s.scalars(select(File))).all() == []


async def test_odd_documents_get_a_clear_reply_and_odd_names_are_stored(
        bot: Bot, telegram_api: TelegramApi, runtime: Runtime) -> None:
    # A file id getFile could not carry (a lone surrogate) is a failed download, said so (it
    # was the generic "not processed"); a declared size no file has is not repeated back; a
    # first contact by file with a lone surrogate in their name is stored with U+FFFD (it
    # failed the message: the file's path makes the customer without the engine).
    newcomer = TgUser(4001, "Zo\ud800e")
    odd = telegram_api.document(newcomer, b"%PDF-1.4 tiny", "scan.pdf")
    odd["message"]["document"]["file_id"] = "\ud800"
    await bot.send(odd)
    await bot.send(telegram_api.document(newcomer, b"%PDF-1.4 tiny", "scan.pdf",
                                         declared_size=10**30))
    await bot.send(telegram_api.document(newcomer, b"%PDF-1.4 tiny", "scan.pdf"))
    await bot.deliver()
    failed, too_big = telegram_api.texts(newcomer.id)[:2]
    assert failed == "I couldn't fetch that file from Telegram; please send it again."
    assert too_big == "That file is larger than 10 MB; please send a smaller one."
    async with runtime.sessions() as s:
        assert len((await s.scalars(select(File))).all()) == 1
        assert (await s.scalars(select(Customer.display_name))).all() == ["Zo\ufffde"]


# ---------------------------------------------------------------------- mechanics


async def test_two_mechanics_tap_accept_at_once_one_wins_and_the_other_offers_are_edited(
        bot: Bot, telegram_api: TelegramApi, runtime: Runtime) -> None:
    api = telegram_api
    for user in (SAM, ANN, BOB):
        code = await invite(runtime, user.first_name)
        (welcome,) = await bot.say(user, f"/start m_{code}")
        assert welcome.startswith(f"Welcome, {user.first_name}!")
    for forged in ("NOSUCHCODE", "\ud800", "X" * 300):  # a surrogate failed the message
        assert await bot.say(MALLORY, f"/start m_{forged}") == [
            "That mechanic invite link is unknown or was already used in another chat. "
            "Please ask AutoDoctor for a new link."]
    assert "available" in (await bot.say(SAM, "/help"))[0]

    request = await paid_request(runtime, "chat10")
    assert await offer(runtime, request) == 3
    await bot.deliver()
    offered: dict[int, int] = {}
    for user in (SAM, ANN, BOB):
        message = api.chat_messages(user.id)[-1]
        assert message["text"].startswith(f"New request {request.ref}: Quick Chat")
        assert keyboard(message) == [{"text": "Accept", "callback_data": f"accept:{request.ref}"}]
        offered[user.id] = message["message_id"]
    async with runtime.sessions() as s:
        ids = set((await s.scalars(select(Offer.provider_message_id))).all())
    assert ids == {str(m) for m in offered.values()}

    taps = [api.tap(SAM, "Accept"), api.tap(ANN, "Accept")]
    await bot.send(*taps)  # one getUpdates batch: handled at the same moment
    toasts = {t["callback_query"]["from"]["id"]: api.answers[t["callback_query"]["id"]]
              for t in taps}
    assert sorted(toasts.values()) == ["Accepted", "Already taken"]
    winner = next(u for u in (SAM, ANN) if toasts[u.id] == "Accepted")
    loser = ANN if winner is SAM else SAM
    status, mechanic_id = await request_status(runtime, request)
    assert status == "accepted" and mechanic_id is not None

    await bot.deliver()
    edits = {(c.chat_id, int(c.params["message_id"])) for c in api.calls_to("editMessageText")}
    assert edits == {(user_id, message_id) for user_id, message_id in offered.items()}
    for user in (loser, BOB):
        edited = api.messages[(user.id, offered[user.id])]
        assert edited["text"] == f"Request {request.ref} was taken by another mechanic."
        assert "reply_markup" not in edited  # the Accept button is gone
    mine = api.messages[(winner.id, offered[winner.id])]
    assert mine["text"] == f"Request {request.ref}: accepted by you."
    assert "reply_markup" not in mine
    assert any(t.startswith(f"It's yours: {request.ref}") for t in api.texts(winner.id))
    # The loser was told once: the toast, and the offer message edited to "taken". (No third
    # "Sorry, already taken" message saying it again.)
    assert not any("already taken" in t for t in api.texts(loser.id))
    assert not api._open_queries  # every callback query was answered


async def test_unlinked_user_forging_an_accept_payload_cannot_accept(
        bot: Bot, telegram_api: TelegramApi, runtime: Runtime) -> None:
    await linked_mechanic(runtime, "Sam")
    request = await paid_request(runtime, "chat10")
    assert await offer(runtime, request) == 1
    forged = telegram_api.callback(MALLORY, f"accept:{request.ref}")
    await bot.send(forged)
    await bot.deliver()
    assert telegram_api.answers[forged["callback_query"]["id"]] == "Not available"
    assert await request_status(runtime, request) == ("pending", None)
    assert "mechanic" in telegram_api.texts(MALLORY.id)[-1].lower()


async def test_a_tap_that_fails_inside_still_stops_the_spinner_and_messages_say_so(
        bot: Bot, telegram_api: TelegramApi) -> None:
    await bot.say(ALICE, "/start")
    engine = bot.client.app[ENGINE]
    working = engine.router

    async def broken(ctx: Context) -> None:
        raise RuntimeError("database on fire")

    engine.router = broken
    tap = telegram_api.tap(ALICE, "Quick Chat")
    await bot.send(tap)
    assert telegram_api.answers[tap["callback_query"]["id"]] == "Something went wrong, try again"
    assert (await bot.say(ALICE, "Quick Chat"))[0].startswith("Sorry, something went wrong")
    engine.router = working
    # Polling goes on, and the same button works now.
    assert "VIN" in (await bot.tap(ALICE, "Quick Chat"))[0]


# ---------------------------------------------------------------------- webhook


async def test_webhook_mode_processes_only_requests_with_the_secret(
        telegram_api: TelegramApi, make_client: MakeClient, config: Config,
        runtime: Runtime) -> None:
    client = await make_client(telegram_config(config, telegram_api, mode="webhook"))
    bot = Bot(telegram_api, client, runtime)
    webhook = telegram_api.webhook
    assert webhook is not None and webhook.url == f"{PUBLIC_URL}/webhooks/telegram"
    assert webhook.secret_token and webhook.allowed_updates == ["message", "callback_query"]

    update = telegram_api.message(ALICE, "/start")
    missing = await client.post("/webhooks/telegram", json=update)
    wrong = await client.post("/webhooks/telegram", json=update, headers={
        "X-Telegram-Bot-Api-Secret-Token": webhook.secret_token[:-1] + "x"})
    assert (missing.status, wrong.status) == (403, 403)
    async with runtime.sessions() as s:
        assert (await s.scalars(select(InboundEvent))).all() == []

    for _ in range(2):  # Telegram may deliver an update twice: handled once
        ok = await client.post("/webhooks/telegram", json=update,
                               headers=telegram_api.webhook_headers())
        assert ok.status == 200
    await bot.deliver()
    (greeting,) = telegram_api.texts(ALICE.id)
    assert greeting.startswith("Hi! I'm the AutoDoctor assistant.")
    assert not telegram_api.calls_to("getUpdates")
    bad = await client.post("/webhooks/telegram", data=b"not json",
                            headers=telegram_api.webhook_headers())
    assert bad.status == 400


async def test_webhook_bodies_it_cannot_use_get_a_400_and_odd_ones_still_work(
        telegram_api: TelegramApi, make_client: MakeClient, config: Config,
        runtime: Runtime) -> None:
    # These were 500s: a Content-Type naming an unknown charset (the body is JSON, UTF-8
    # whatever it says), JSON nested deeper than the parser's recursion, a tap whose callback
    # id answerCallbackQuery cannot carry (a lone surrogate: the tap is handled all the same).
    client = await make_client(telegram_config(config, telegram_api, mode="webhook"))
    bot = Bot(telegram_api, client, runtime)
    headers = telegram_api.webhook_headers()
    odd_charset = await client.post(
        "/webhooks/telegram", data=json.dumps(telegram_api.message(ALICE, "/start")).encode(),
        headers={**headers, "Content-Type": "application/json; charset=foobar"})
    assert odd_charset.status == 200
    await bot.deliver()
    assert telegram_api.texts(ALICE.id)[-1].startswith("Hi! I'm the AutoDoctor assistant.")
    deep = await client.post("/webhooks/telegram", data=b"[" * 100_000 + b"]" * 100_000,
                             headers={**headers, "Content-Type": "application/json"})
    assert deep.status == 400
    tap = telegram_api.tap(ALICE, "Quick Chat")
    tap["callback_query"]["id"] = "\ud800"
    tapped = await client.post("/webhooks/telegram", json=tap, headers=headers)
    assert tapped.status == 200
    await bot.deliver()
    assert "VIN" in telegram_api.texts(ALICE.id)[-1]


async def test_polling_takes_over_from_a_webhook_left_set(
        telegram_api: TelegramApi, make_client: MakeClient, config: Config,
        runtime: Runtime) -> None:
    await telegram_api._set_webhook({"url": f"{PUBLIC_URL}/webhooks/telegram"})
    bot = Bot(telegram_api, await make_client(telegram_config(config, telegram_api)), runtime)
    (greeting,) = await bot.say(ALICE, "/start")
    assert greeting.startswith("Hi! I'm the AutoDoctor assistant.")
    assert telegram_api.webhook is None and len(telegram_api.calls_to("deleteWebhook")) == 1
    assert telegram_api.calls_to("getUpdates")[0].status == 409


# ---------------------------------------------------------------------- delivery errors


async def test_429_delays_the_next_send_to_that_chat_by_retry_after(
        bot: Bot, telegram_api: TelegramApi, clock: ManualClock) -> None:
    await bot.send(telegram_api.message(ALICE, "/start"))
    telegram_api.fail_next(ALICE.id, too_many_requests(2))
    failed_at = clock.now()
    assert (await bot.outbox.run_once()).retried == 1
    async with bot.runtime.sessions() as s:
        row = await s.scalar(select(OutboxItem).where(OutboxItem.address == str(ALICE.id)))
    assert row is not None and row.status == "pending"
    assert row.next_attempt_at >= failed_at + timedelta(seconds=2)
    assert "retry after 2" in (row.last_error or "")

    clock.advance(1.9)
    assert (await bot.outbox.run_once()).sent == 0
    assert len(telegram_api.calls_to("sendMessage", ALICE.id)) == 1
    clock.advance(0.1)
    assert (await bot.outbox.run_once()).sent == 1
    first, second = telegram_api.calls_to("sendMessage", ALICE.id)
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= timedelta(seconds=2)


async def test_403_bot_blocked_marks_the_identity_unreachable(
        bot: Bot, telegram_api: TelegramApi) -> None:
    await bot.send(telegram_api.message(ALICE, "/start"))
    telegram_api.fail_next(ALICE.id, blocked())
    stats = await bot.outbox.run_once()
    assert (stats.sent, stats.failed, stats.retried) == (0, 1, 0)
    async with bot.runtime.sessions() as s:
        identity = await s.scalar(select(Identity).where(Identity.address == str(ALICE.id)))
        row = await s.scalar(select(OutboxItem).where(OutboxItem.address == str(ALICE.id)))
    assert identity is not None and identity.reachable is False
    assert "bot was blocked by the user" in (identity.unreachable_reason or "")
    assert row is not None and row.status == "failed"


# ---------------------------------------------------------------------- rendering


async def test_long_text_is_split_with_buttons_under_the_last_part(
        bot: Bot, telegram_api: TelegramApi) -> None:
    await bot.say(ALICE, "/start")
    before = len(telegram_api.chat_messages(ALICE.id))
    long = "\n".join(f"Line {i}: " + "word " * 20 for i in range(200))  # ~22,000 chars
    sender = bot.channel.sender
    message_id = await sender.send(Outbound(
        "telegram", str(ALICE.id), long,
        buttons=(Button("OK", "ok"), Button("Too long", "x" * 65)),
        link=Link("Local page", "http://127.0.0.1:8080/pay/1")))
    parts = telegram_api.chat_messages(ALICE.id)[before:]
    assert len(parts) > 4 and all(len(p["text"]) <= 4096 for p in parts)
    assert "\n".join(p["text"] for p in parts).replace("\n", " ").split() == (
        long + "\n\nLocal page: http://127.0.0.1:8080/pay/1").replace("\n", " ").split()
    assert all(keyboard(p) == [] for p in parts[:-1])
    assert keyboard(parts[-1]) == [{"text": "OK", "callback_data": "ok"}]
    assert message_id == str(parts[-1]["message_id"])


async def test_edits_of_unchanged_or_missing_messages_do_not_retry(
        bot: Bot, telegram_api: TelegramApi) -> None:
    (greeting,) = await bot.say(ALICE, "/start")
    first_id = telegram_api.chat_messages(ALICE.id)[-1]["message_id"]
    sender = bot.channel.sender
    edit = Outbound("telegram", str(ALICE.id), "Taken", edit_of=str(first_id))
    assert await sender.send(edit) == str(first_id)
    assert await sender.send(edit) == str(first_id)  # "message is not modified": done
    gone = await sender.send(Outbound("telegram", str(ALICE.id), "Taken", edit_of="9999"))
    assert gone is not None and gone != "9999"  # sent as a new message instead
    assert telegram_api.texts(ALICE.id) == ["Taken", "Taken"]
