"""Offers in waves: paid requests a minute sustained with 1,000 mechanics on Telegram, 0 429s.

M mechanics are linked on "telegram" (rows inserted directly, as bench/fanout.py does). Paid
requests arrive at R a minute for D seconds; each is made and offered (core.dispatch.
offer_request, its first wave) in one transaction, as a payment is. The real OutboxDispatcher
(ChannelLimiter from config.toml, as bot/app.py builds it) delivers through bench/fanout.py's
Bot API stand-in (30 messages per sliding second for the bot, 1 per chat, else 429), and the
real sweep (core.sweeps.run_sweeps, every [timeouts] sweep_interval_seconds) widens the waves.
A mechanic who receives an offer taps Accept with probability --accept-share after a pause of
2-8 s (core.dispatch.accept), as a person reading it would. Wall clock throughout.

    .venv/bin/python bench/waves.py [--rates 30,40,50] [--seconds 120] [--mechanics 1000]
        [--db sqlite,postgresql] [--accept-share 0.15]

Printed per rate: requests paid and accepted, payment -> first offer delivered (p50/p95/max),
payment -> accepted (p50/p95), offers per request, the 429s provoked, the deepest and the
final Telegram backlog in the outbox. Sustained: every request accepted, 0 429s, and 95% of
first offers delivered within wave_seconds of the payment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchdb import database_url
from fanout import (
    CHANNEL,
    PG_URL,
    BotApiStandIn,
    add_paid_request,
    make_sender,
    seed_mechanics,
    stop_dispatcher,
)
from fanout import Result as FanoutResult
from sqlalchemy import func, select

import migrations
from bot.app import build_runtime
from core import dispatch
from core.clock import SystemClock
from core.config import Config, load_config
from core.db import create_engine
from core.delivery import OutboxDispatcher
from core.models import (
    Offer,
    OutboxItem,
)
from core.ratelimit import ChannelLimiter
from core.runtime import Runtime
from core.sweeps import run_sweeps

OFFER = re.compile(r"^New request (R-\d+)")
GRACE = 90.0  # after the last payment: for the last ones to be accepted


@dataclass
class Run:
    db: str
    rate: int
    paid: dict[str, float] = field(default_factory=dict)  # ref -> monotonic at commit
    first_offer: dict[str, float] = field(default_factory=dict)
    accepted: dict[str, float] = field(default_factory=dict)
    offers: int = 0
    too_many: int = 0
    peak_backlog: int = 0
    final_backlog: int = 0

    def sustained(self, wave_seconds: int) -> bool:
        """Every request taken, 0 429s, and 95% of first offers delivered within one wave."""
        first = [self.first_offer[ref] - at for ref, at in self.paid.items()
                 if ref in self.first_offer]
        p95 = pct(first, 0.95)
        return (len(self.accepted) == len(self.paid) and not self.too_many
                and p95 is not None and p95 <= wave_seconds)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def pay(runtime: Runtime, n: int) -> str:
    """A customer's paid request, made and offered (its first wave) in one transaction."""
    async with runtime.transaction() as uow:
        request = await add_paid_request(uow.session, runtime, str(n))
        await dispatch.offer_request(uow, runtime, request, runtime.clock.now())
        return request.ref


async def backlog(runtime: Runtime) -> int:
    async with runtime.readers() as s:
        return int(await s.scalar(select(func.count()).select_from(OutboxItem).where(
            OutboxItem.channel == CHANNEL, OutboxItem.status == "pending")) or 0)


async def run_one(db: str, url: str, rate: int, config: Config,
                  args: argparse.Namespace) -> Run:
    run = Run(db, rate)
    limits = config.rate_limits
    engine = create_engine(url, busy_timeout_ms=config.database.sqlite_busy_timeout_ms)
    standin = BotApiStandIn(int(limits.telegram_per_second),
                            int(limits.telegram_per_chat_per_second))
    rng = random.Random(rate)
    tasks: list[asyncio.Task[None]] = []
    outbox: asyncio.Task[None] | None = None
    try:
        await migrations.upgrade(engine)
        runtime = build_runtime(config, engine, clock=SystemClock())
        chats = await seed_mechanics(runtime, args.mechanics)
        base = standin.start()
        async with make_sender("http", base) as sender:
            outbox = asyncio.create_task(OutboxDispatcher(
                runtime, {CHANNEL: sender},
                {CHANNEL: ChannelLimiter(limits.telegram_per_second,
                                         limits.telegram_per_chat_per_second)}).run_forever())

            async def tap(ref: str, mechanic_id: int, delay: float) -> None:
                await asyncio.sleep(delay)
                async with runtime.transaction() as uow:
                    result = await dispatch.accept(uow, runtime, ref, mechanic_id,
                                                   runtime.clock.now())
                if result.outcome is dispatch.Outcome.ACCEPTED:
                    run.accepted[ref] = time.monotonic()

            async def payments() -> None:
                start = time.monotonic()
                for n in range(int(rate * args.seconds / 60)):
                    await asyncio.sleep(max(0.0, start + n * 60 / rate - time.monotonic()))
                    ref = await pay(runtime, n)
                    run.paid[ref] = time.monotonic()

            async def sweeps() -> None:
                while True:
                    await run_sweeps(runtime)
                    run.peak_backlog = max(run.peak_backlog, await backlog(runtime))
                    await asyncio.sleep(config.timeouts.sweep_interval_seconds)

            tasks = [asyncio.create_task(payments()), asyncio.create_task(sweeps())]
            seen = 0
            deadline = time.monotonic() + args.seconds + GRACE
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                with standin._lock:
                    fresh = standin.accepted[seen:]
                seen += len(fresh)
                for at, chat, text in fresh:
                    found = OFFER.match(text)
                    if found is None:
                        continue
                    ref = found.group(1)
                    run.first_offer.setdefault(ref, at)
                    if rng.random() < args.accept_share:
                        tasks.append(asyncio.create_task(
                            tap(ref, chats[chat], rng.uniform(2, 8))))
                if tasks[0].done() and len(run.accepted) == len(run.paid):
                    break
            run.too_many = standin.rejected
            run.final_backlog = await backlog(runtime)
            async with runtime.readers() as s:
                run.offers = int(await s.scalar(select(func.count()).select_from(Offer)) or 0)
            await stop(tasks, outbox)  # before the sender's HTTP session closes
    finally:
        await stop(tasks, outbox)
        standin.stop()
        await engine.dispose()
    return run


async def stop(tasks: list[asyncio.Task[None]], outbox: asyncio.Task[None] | None) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if outbox is not None and not outbox.done():
        await stop_dispatcher(outbox, FanoutResult("", 0))


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(runs: list[Run], config: Config, args: argparse.Namespace) -> None:
    d = config.dispatch
    print(f"\nOffers in waves: {args.mechanics} mechanics on a Bot API stand-in "
          f"({config.rate_limits.telegram_per_second:g}/s per bot, "
          f"{config.rate_limits.telegram_per_chat_per_second:g}/s per chat, else 429); "
          f"wave_size {d.wave_size}, wave_seconds {d.wave_seconds}, sweep every "
          f"{config.timeouts.sweep_interval_seconds} s; payments for {args.seconds} s; "
          f"accept share {args.accept_share:g}.")
    head = (f"{'db':<11}{'req/min':>8}{'paid':>6}{'taken':>6}{'1st p50':>8}{'p95':>6}"
            f"{'max':>6}{'acc p50':>8}{'p95':>6}{'offers/req':>11}{'429s':>6}"
            f"{'peak q':>7}{'end q':>6}  sustained")
    print(head)
    print("-" * len(head))
    for r in runs:
        first = [r.first_offer[ref] - at for ref, at in r.paid.items() if ref in r.first_offer]
        taken = [r.accepted[ref] - at for ref, at in r.paid.items() if ref in r.accepted]
        print(f"{r.db:<11}{r.rate:>8}{len(r.paid):>6}{len(r.accepted):>6}"
              f"{fmt(pct(first, 0.5)):>8}{fmt(pct(first, 0.95)):>6}"
              f"{fmt(max(first) if first else None):>6}{fmt(pct(taken, 0.5)):>8}"
              f"{fmt(pct(taken, 0.95)):>6}"
              f"{r.offers / max(1, len(r.paid)):>11.1f}{r.too_many:>6}{r.peak_backlog:>7}"
              f"{r.final_backlog:>6}  {'yes' if r.sustained(d.wave_seconds) else 'NO'}")
    print("seconds; 1st: payment commit -> first offer delivered; acc: -> accepted; q: Telegram\n"
          "messages pending in the outbox (peak at the sweeps; end); sustained: all taken, 0 "
          "429s,\n1st p95 within wave_seconds.")


async def main_async(args: argparse.Namespace) -> int:
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="autodoctor-waves-") as tmpdir:
        tmp = Path(tmpdir)
        env = {"AUTODOCTOR_SECRET_KEY": "bench-secret-key-not-for-production"}
        config = load_config(environ=env, data_dir=tmp / "data")
        for db in args.db:
            for rate in args.rates:
                async with database_url(db, args.pg_url, tmp / f"waves-{rate}.db") as url:
                    if url is None:
                        break
                    runs.append(await run_one(db, url, rate, config, args))
                    print(f"{db} {rate}/min done", file=sys.stderr)
    report(runs, config, args)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="30,40,50",
                        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                        help="paid requests a minute, comma-separated")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long payments come")
    parser.add_argument("--mechanics", type=int, default=1000)
    parser.add_argument("--accept-share", type=float, default=0.15,
                        help="chance that a mechanic who receives an offer taps Accept")
    parser.add_argument("--db", default="sqlite",
                        type=lambda s: [d.strip() for d in s.split(",") if d.strip()])
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
