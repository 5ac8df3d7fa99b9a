"""Offer fan-out benchmark: one paid request offered to N mechanics on a rate-limited channel.

N mechanics are linked on the channel "telegram" (their mechanic and identity rows are created
directly, so no "linked" greetings are queued). One paid request is offered to all of them with
core.dispatch.offer_request, and the real OutboxDispatcher (run_forever, woken on commit) delivers
the offers through a stand-in of the Telegram Bot API: a small aiohttp server on 127.0.0.1, in
its own thread, that enforces 30 messages per sliding second for the bot and 1 per second per
chat, and answers HTTP 429 with `parameters.retry_after = 1` past either limit. The dispatcher
gets ChannelLimiter(telegram_per_second, telegram_per_chat_per_second) from config.toml, as
bot/app.py builds it. The request goes out in one wave of N ([dispatch] wave_size = N, and
wave_seconds long enough for its budget); bench/waves.py measures the waves. Wall clock
(core.clock.SystemClock) throughout.

    .venv/bin/python bench/fanout.py [--n 100,1000] [--db sqlite,postgresql]
        [--sender http|aiogram] [--channel-burst B] [--channel-rate R]

Printed per run: elapsed seconds from the commit of offer_request to the stand-in accepting the
last offer, the floor N/30 s, their ratio (target <= 1.05) and the 429s provoked (target 0).
--channel-burst / --channel-rate replace the limiter's channel bucket (default: as the service
builds it), to try a different limiter without touching the service.

PostgreSQL comes from AUTODOCTOR_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/
postgres); a database bench_<random> is created there for each run and dropped afterwards.
Skipped with a note when unreachable. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import logging
import math
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from benchdb import database_url
from sqlalchemy.ext.asyncio import AsyncSession

import migrations
from bot.app import build_runtime
from core import dispatch
from core.clock import SystemClock
from core.config import Config, load_config, with_changes
from core.db import create_engine
from core.delivery import OutboxDispatcher, Sender
from core.errors import PermanentFailure, RetryLater
from core.messages import Outbound
from core.models import (
    Conversation,
    Customer,
    Identity,
    Intake,
    Mechanic,
    OutboxItem,
    SessionRequest,
)
from core.ratelimit import ChannelLimiter, TokenBucket
from core.runtime import Runtime

PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CHANNEL = "telegram"
TOKEN = "123456789:AAbench-token-for-the-stand-in-only"  # aiogram checks the shape only
RETRY_AFTER = 1
SETTLE_TIMEOUT = 30.0  # after the last offer reached the stand-in: rows recorded as sent
START_TIMEOUT = 10.0  # the stand-in listening

log = logging.getLogger("bench.fanout")


# --- the stand-in provider -----------------------------------------------------------------------

class BotApiStandIn:
    """A Telegram Bot API stand-in on 127.0.0.1 that enforces the bot's and each chat's limit.

    Runs in its own thread and event loop, as a remote server would, so that its clock readings
    are not held up by the dispatcher's work. Limits are sliding windows of one second over the
    messages it accepted; a request past a limit gets 429 with retry_after and is not counted.
    """

    def __init__(self, per_second: int, per_chat_per_second: int) -> None:
        self.per_second = per_second
        self.per_chat = per_chat_per_second
        self.accepted: list[tuple[float, str, str]] = []  # (monotonic, chat, text)
        self.too_many_bot = 0
        self.too_many_chat = 0
        self._window: collections.deque[float] = collections.deque()
        self._chats: dict[str, collections.deque[float]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.base = ""

    @property
    def rejected(self) -> int:
        return self.too_many_bot + self.too_many_chat

    def offers_delivered(self, marker: str) -> tuple[int, float | None, float | None]:
        """Distinct chats that got a message containing marker; first and last time."""
        with self._lock:
            times = {}
            for at, chat, text in self.accepted:
                if marker in text and chat not in times:
                    times[chat] = at
        if not times:
            return 0, None, None
        return len(times), min(times.values()), max(times.values())

    def _admit(self, chat: str, now: float) -> str | None:
        with self._lock:
            while self._window and self._window[0] <= now - 1.0:
                self._window.popleft()
            chat_window = self._chats.setdefault(chat, collections.deque())
            while chat_window and chat_window[0] <= now - 1.0:
                chat_window.popleft()
            if len(self._window) >= self.per_second:
                self.too_many_bot += 1
                return "bot"
            if len(chat_window) >= self.per_chat:
                self.too_many_chat += 1
                return "chat"
            self._window.append(now)
            chat_window.append(now)
            return None

    async def _method(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        if request.match_info["token"] != TOKEN:
            return web.json_response({"ok": False, "error_code": 401,
                                      "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        if request.content_type == "application/json":
            body: dict[str, Any] = await request.json()
        else:  # aiogram posts multipart/form-data, each field a string (JSON for objects)
            body = dict(await request.post())  # type: ignore[arg-type]
        chat = str(body.get("chat_id", ""))
        if method not in ("sendMessage", "editMessageText"):
            return web.json_response({"ok": False, "error_code": 404,
                                      "description": "Not Found: method not found"}, status=404)
        limited = self._admit(chat, now)
        if limited is not None:
            return web.json_response({
                "ok": False, "error_code": 429,
                "description": f"Too Many Requests: retry after {RETRY_AFTER}",
                "parameters": {"retry_after": RETRY_AFTER}}, status=429)
        text = str(body.get("text", ""))
        with self._lock:
            self.accepted.append((now, chat, text))
            message_id = int(body.get("message_id") or 0) or next(self._ids)
        return web.json_response({"ok": True, "result": {
            "message_id": message_id, "date": int(time.time()), "text": text,
            "chat": {"id": int(chat) if chat.lstrip("-").isdigit() else 0, "type": "private"}}})

    def start(self) -> str:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                app = web.Application()
                app.router.add_post("/bot{token}/{method}", self._method)
                self._runner = web.AppRunner(app, access_log=None)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                loop.run_until_complete(site.start())
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self.base = f"http://127.0.0.1:{port}"
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="bot-api-stand-in", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError("the stand-in did not start")
        if failure:
            raise failure[0]
        return self.base

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


# --- senders -------------------------------------------------------------------------------------

class BotApiSender:
    """A minimal Sender: POSTs sendMessage / editMessageText JSON, maps the answer for the outbox.

    429 → RetryLater(retry_after), 5xx and network errors → RetryLater, other 4xx → permanent.
    """

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.url = f"{base}/bot{TOKEN}/"
        self.retry_later = 0

    async def send(self, outbound: Outbound) -> str | None:
        body: dict[str, Any] = {"chat_id": outbound.address, "text": outbound.text}
        if outbound.buttons:
            body["reply_markup"] = {"inline_keyboard": [
                [{"text": b.label, "callback_data": b.payload}] for b in outbound.buttons]}
        method = "sendMessage"
        if outbound.edit_of:
            method, body["message_id"] = "editMessageText", outbound.edit_of
        try:
            async with self.http.post(self.url + method, json=body,
                                      timeout=aiohttp.ClientTimeout(total=10)) as resp:
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            self.retry_later += 1
            raise RetryLater(f"stand-in: {type(exc).__name__}: {exc}") from exc
        if resp.status == 429:
            self.retry_later += 1
            retry_after = float((data.get("parameters") or {}).get("retry_after", RETRY_AFTER))
            raise RetryLater(f"HTTP 429: {data.get('description')}", retry_after=retry_after)
        if resp.status >= 500:
            self.retry_later += 1
            raise RetryLater(f"HTTP {resp.status}: {data.get('description')}")
        if resp.status >= 400 or not data.get("ok"):
            raise PermanentFailure(f"HTTP {resp.status}: {data.get('description')}")
        return str(data["result"]["message_id"])


class CountingSender:
    """Wraps a Sender to count the RetryLater it raises (e.g. the project's TelegramSender)."""

    def __init__(self, inner: Sender) -> None:
        self.inner = inner
        self.retry_later = 0

    async def send(self, outbound: Outbound) -> str | None:
        try:
            return await self.inner.send(outbound)
        except RetryLater:
            self.retry_later += 1
            raise


@contextlib.asynccontextmanager
async def make_sender(kind: str, base: str) -> AsyncIterator[BotApiSender | CountingSender]:
    if kind == "http":
        async with aiohttp.ClientSession() as http:
            yield BotApiSender(http, base)
        return
    # The service's own Telegram sender (aiogram), pointed at the stand-in.
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    from channels.telegram_send import TelegramSender

    bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(base)))
    try:
        yield CountingSender(TelegramSender(bot))
    finally:
        await bot.session.close()


# --- the database ------------------------------------------------------------------------------



async def seed_mechanics(runtime: Runtime, n: int) -> dict[str, int]:
    """N linked, available mechanics on CHANNEL: chat id -> mechanic id."""
    now = runtime.clock.now()
    async with runtime.sessions.begin() as s:
        mechanics = [Mechanic(name=f"Mechanic {i}", created_at=now) for i in range(n)]
        s.add_all(mechanics)
        await s.flush()
        s.add_all(Identity(channel=CHANNEL, address=str(700_000_000 + i), mechanic_id=m.id,
                           display_name=m.name, created_at=now)
                  for i, m in enumerate(mechanics))
    return {str(700_000_000 + i): m.id for i, m in enumerate(mechanics)}


async def add_paid_request(s: AsyncSession, runtime: Runtime, label: str) -> SessionRequest:
    """As tests/factories.paid_request, in the caller's transaction: a customer who finished
    the intake and paid, and their pending request."""
    now = runtime.clock.now()
    customer = Customer(display_name=f"Bench customer {label}", created_at=now)
    s.add(customer)
    await s.flush()
    identity = Identity(channel="console", address=f"bench-customer-{label}",
                        customer_id=customer.id, created_at=now)
    intake = Intake(customer_id=customer.id, channel="console", status="paid",
                    plan="chat10", vehicle_year=2015, vehicle_make="Honda",
                    vehicle_model="Civic", created_at=now, updated_at=now,
                    problem="Grinding noise from the front wheel when braking")
    s.add_all([identity, intake])
    await s.flush()
    request = SessionRequest(ref=f"R-{secrets.randbelow(9_000_000) + 1_000_000}",
                             intake_id=intake.id, customer_id=customer.id, plan="chat10",
                             price_cents=runtime.config.plan("chat10").price_cents,
                             status="pending", paid_at=now, created_at=now)
    s.add(request)
    await s.flush()
    s.add(Conversation(identity_id=identity.id, flow="customer", step="matching", data={},
                       intake_id=intake.id, created_at=now, updated_at=now))
    return request


async def seed(runtime: Runtime, n: int) -> SessionRequest:
    """N linked, available mechanics on CHANNEL, and one customer's paid, pending request."""
    await seed_mechanics(runtime, n)
    async with runtime.sessions.begin() as s:
        return await add_paid_request(s, runtime, "fanout")


# --- one run -------------------------------------------------------------------------------------

@dataclass
class Result:
    db: str
    n: int
    offer_tx: float = 0.0  # seconds inside offer_request's transaction, commit included
    first: float | None = None  # commit → first offer accepted by the stand-in
    elapsed: float | None = None  # commit → last offer accepted by the stand-in
    recorded: float | None = None  # commit → the last outbox row marked sent
    delivered: int = 0
    too_many_bot: int = 0
    too_many_chat: int = 0
    retried: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def floor(self) -> float:
        return self.n / 30

    @property
    def ratio(self) -> float | None:
        return None if self.elapsed is None else self.elapsed / self.floor


class SlidingWindow:
    """An experiment, not the service's: at most `limit` sends in any `window` seconds (the
    provider's own rule, plus a margin), first come first served; same face as TokenBucket."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.times: collections.deque[float] = collections.deque()
        self.blocked_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self.blocked_until:
                    await asyncio.sleep(self.blocked_until - now)
                    continue
                while self.times and self.times[0] <= now - self.window:
                    self.times.popleft()
                if len(self.times) < self.limit:
                    self.times.append(now)
                    return
                await asyncio.sleep(self.times[0] + self.window - now)


def limiter_for(config: Config, args: argparse.Namespace) -> ChannelLimiter:
    """ChannelLimiter as bot/app.py builds it, unless the command line swaps its channel part."""
    limits = config.rate_limits
    limiter = ChannelLimiter(limits.telegram_per_second, limits.telegram_per_chat_per_second)
    rate = args.channel_rate or limits.telegram_per_second
    if args.window_margin is not None:
        limiter.channel = SlidingWindow(int(rate), 1.0 + args.window_margin)  # type: ignore
    elif args.channel_rate is not None or args.channel_burst is not None:
        limiter.channel = TokenBucket(rate, args.channel_burst)
    return limiter


def limiter_label(config: Config, args: argparse.Namespace) -> str:
    limits = config.rate_limits
    rate = args.channel_rate or limits.telegram_per_second
    if args.window_margin is not None:
        channel = f"SlidingWindow({rate:g} per {1 + args.window_margin:g} s) [bench experiment]"
    elif args.channel_rate is not None or args.channel_burst is not None:
        channel = f"TokenBucket({rate:g}/s, burst {args.channel_burst or 1:g})"
    else:
        channel = f"TokenBucket({rate:g}/s, burst 1) as bot/app.py builds it"
    return f"channel {channel}; {limits.telegram_per_chat_per_second:g}/s per chat"


async def run_one(db: str, url: str, n: int, config: Config,
                  args: argparse.Namespace) -> Result:
    result = Result(db, n)
    # All N in one wave (the service offers the best 20 first: bench/waves.py measures that),
    # its budget wide enough for N offers and their edits.
    config = with_changes(config, dispatch={"wave_size": n, "wave_seconds": max(
        10, math.ceil(2 * n / config.rate_limits.telegram_per_second))})
    engine = create_engine(url, busy_timeout_ms=config.database.sqlite_busy_timeout_ms)
    standin = BotApiStandIn(int(config.rate_limits.telegram_per_second),
                            int(config.rate_limits.telegram_per_chat_per_second))
    task: asyncio.Task[None] | None = None
    try:
        await migrations.upgrade(engine)
        runtime = build_runtime(config, engine, clock=SystemClock())
        request = await seed(runtime, n)
        base = standin.start()
        async with make_sender(args.sender, base) as sender:
            dispatcher = OutboxDispatcher(runtime, {CHANNEL: sender},
                                          {CHANNEL: limiter_for(config, args)})
            task = asyncio.create_task(dispatcher.run_forever(), name="outbox")
            await asyncio.sleep(0.2)  # the dispatcher is idle, waiting for a wake-up
            started = time.perf_counter()
            async with runtime.transaction() as uow:
                fresh = await uow.session.get(SessionRequest, request.id)
                assert fresh is not None
                offered = await dispatch.offer_request(uow, runtime, fresh,
                                                       runtime.clock.now())
            committed, committed_at = time.monotonic(), datetime.now(UTC)
            result.offer_tx = time.perf_counter() - started
            if offered != n:
                result.notes.append(f"offer_request offered {offered}, not {n}")
            deadline = committed + n / 30 * 3 + 60
            marker = f"New request {request.ref}"
            while time.monotonic() < deadline:
                delivered, _, _ = standin.offers_delivered(marker)
                if delivered >= n or task.done():
                    break
                await asyncio.sleep(0.02)
            delivered, first, last = standin.offers_delivered(marker)
            result.delivered = delivered
            if first is not None and last is not None:
                result.first = first - committed
            if delivered >= n and last is not None:
                result.elapsed = last - committed
            else:
                result.notes.append(f"only {delivered}/{n} offers delivered before the timeout")
            result.recorded = await wait_recorded(runtime, committed_at, delivered >= n)
            result.too_many_bot, result.too_many_chat = standin.too_many_bot, standin.too_many_chat
            result.retried = sender.retry_later
    finally:
        if task is not None:
            await stop_dispatcher(task, result)
        standin.stop()
        await engine.dispose()
    return result


async def stop_dispatcher(task: asyncio.Task[None], result: Result) -> None:
    """Cancel run_forever; a cancellation it swallows is noted (with where) and sent again."""
    for attempt in range(40):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if done:
            if attempt:
                result.notes.append(f"dispatcher stopped after {attempt + 1} cancels")
            break
        if attempt == 0:
            frames = task.get_stack()[-4:]
            where = " > ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames)
            result.notes.append(f"run_forever swallowed a cancel, at {where}")
    else:
        result.notes.append("dispatcher did not stop after 40 cancels; abandoned")
        return
    with contextlib.suppress(asyncio.CancelledError):
        exc = task.exception()
        if exc is not None:
            result.notes.append(f"dispatcher ended with {type(exc).__name__}: {exc}")


async def wait_recorded(runtime: Runtime, committed_at: datetime, complete: bool) -> float | None:
    """Seconds from the commit to the last offer row marked sent, once none is pending."""
    from sqlalchemy import func, select

    deadline = time.monotonic() + (SETTLE_TIMEOUT if complete else 1.0)
    while True:
        async with runtime.readers() as s:
            pending = await s.scalar(select(func.count()).select_from(OutboxItem).where(
                OutboxItem.channel == CHANNEL, OutboxItem.status == "pending"))
            last = await s.scalar(select(func.max(OutboxItem.sent_at)).where(
                OutboxItem.channel == CHANNEL))
        if not pending and last is not None:
            return (last - committed_at).total_seconds()
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.05)


# --- main ----------------------------------------------------------------------------------------

def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(results: list[Result], args: argparse.Namespace, config: Config) -> None:
    limits = config.rate_limits
    print(f"\nOffer fan-out: OutboxDispatcher, sender {args.sender}, ChannelLimiter: "
          f"{limiter_label(config, args)}.\nStand-in: {limits.telegram_per_second:g} per "
          f"sliding second for the bot, {limits.telegram_per_chat_per_second:g} per chat, "
          f"else 429 retry_after={RETRY_AFTER}.")
    head = (f"{'db':<11}{'N':>6}{'offer tx':>9}{'first':>7}{'elapsed':>9}{'floor':>7}"
            f"{'ratio':>7}{'<=1.05':>7}{'429 bot':>8}{'429 chat':>9}{'retries':>8}"
            f"{'recorded':>9}")
    print(head)
    print("-" * len(head))
    for r in results:
        ok = r.ratio is not None and r.ratio <= 1.05
        print(f"{r.db:<11}{r.n:>6}{fmt(r.offer_tx, '.2f'):>9}{fmt(r.first, '.2f'):>7}"
              f"{fmt(r.elapsed, '.2f'):>9}{r.floor:>7.2f}{fmt(r.ratio, '.3f'):>7}"
              f"{'ok' if ok else 'NO':>7}{r.too_many_bot:>8}{r.too_many_chat:>9}"
              f"{r.retried:>8}{fmt(r.recorded, '.2f'):>9}")
        for note in r.notes:
            print(f"{'':<11}{note}")
    print("seconds; offer tx: offer_request's transaction; first / elapsed: from its commit to\n"
          "the stand-in accepting the first / last offer; floor: N/30; recorded: commit -> the\n"
          "last outbox row marked sent. Targets: ratio <= 1.05, 429s 0.")


async def main_async(args: argparse.Namespace) -> int:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="autodoctor-fanout-") as tmpdir:
        tmp = Path(tmpdir)
        env = {"AUTODOCTOR_SECRET_KEY": "bench-secret-key-not-for-production"}
        config = load_config(environ=env, data_dir=tmp / "data")
        for db in args.db:
            for n in args.n:
                async with database_url(db, args.pg_url, tmp / f"fanout-{n}.db") as url:
                    if url is None:
                        break
                    results.append(await run_one(db, url, n, config, args))
    report(results, args, config)
    return 0 if all(r.elapsed is not None for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100,1000",
                        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                        help="mechanics to offer to, comma-separated (default 100,1000)")
    parser.add_argument("--db", default="sqlite,postgresql",
                        type=lambda s: [d.strip() for d in s.split(",") if d.strip()])
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))
    parser.add_argument("--sender", choices=("http", "aiogram"), default="http",
                        help="http: a minimal JSON sender; aiogram: the service's "
                             "channels.telegram_send.TelegramSender")
    parser.add_argument("--channel-burst", type=float, default=None,
                        help="replace the limiter's channel bucket burst (default: as built)")
    parser.add_argument("--channel-rate", type=float, default=None,
                        help="replace the limiter's channel rate (default: from config)")
    parser.add_argument("--window-margin", type=float, default=None, metavar="SECONDS",
                        help="experiment: replace the channel bucket by a sliding window of "
                             "RATE sends per 1+SECONDS s")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the dispatcher")
    args = parser.parse_args()
    unknown = set(args.db) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown --db {', '.join(sorted(unknown))}")
    if not args.n or min(args.n) < 1 or max(args.n) > 100_000:
        parser.error("--n takes counts from 1 to 100000")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
