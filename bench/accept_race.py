"""Accept race benchmark: M mechanics holding an offer for one request tap Accept at once.

Each round seeds M mechanics linked on "telegram" (rows created directly), one customer's paid
request, and offers it to them with core.dispatch.offer_request. Then M concurrent
Engine.handle(Inbound(action="accept:<ref>")) calls start together, each in its own database
session, exactly as a channel would deliver the taps. Printed: winners (must be 1 per round),
losers told "Already taken" (a toast; the notice closing their offer says it in the chat, and a
reply only if that notice had gone out before the tap), anything else, and the answer latency of
each tap (from the common start to its reply; target p99 < 100 ms). Mechanics of earlier rounds
are made inactive, so each round offers to M fresh mechanics while the tables keep growing. A
first, uncounted round warms the connections up, as a running service's are.

With --instances 2 the taps alternate between two Engine instances on two separate database
engines (connection pools), as two `autodoctor serve` processes sharing one database would.

    .venv/bin/python bench/accept_race.py [--mechanics 200] [--rounds 3]
        [--db postgresql,sqlite] [--instances 1,2]

PostgreSQL comes from AUTODOCTOR_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/
postgres); a database bench_<random> is created for each scenario and dropped afterwards.
Skipped with a note when unreachable. SQLite uses a temporary file. No network traffic other
than to the database on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchdb import database_url
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from bot.app import build_runtime
from bot.cli import settle_heap
from bot.flows import route
from core import dispatch
from core.clock import SystemClock
from core.config import Config, load_config, with_changes
from core.db import create_engine
from core.engine import Engine, Handled
from core.messages import Inbound
from core.models import (
    Conversation,
    Customer,
    Identity,
    Intake,
    Mechanic,
    Offer,
    OutboxItem,
    SessionRequest,
)
from core.runtime import Runtime

PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CHANNEL = "telegram"
TAP_TIMEOUT = 60.0  # one tap's answer
ROUND_TIMEOUT = 300.0  # all taps of one round

log = logging.getLogger("bench.accept_race")


# --- the database ------------------------------------------------------------------------------



async def seed_round(runtime: Runtime, round_no: int, m: int, *,
                     first_message: bool = False) -> tuple[SessionRequest, list[Identity]]:
    """M fresh linked mechanics (earlier rounds' made inactive) and one paid, pending request.

    A mechanic linked through Telegram (/start m_CODE, handled by the engine) has a
    conversation with the bot already; with first_message, none has, so every tap is also
    that mechanic's first message to the bot (as after linking on the web console)."""
    now = runtime.clock.now()
    async with runtime.sessions.begin() as s:
        await s.execute(update(Mechanic).values(is_active=False))
        mechanics = [Mechanic(name=f"Mechanic {round_no}.{i}", created_at=now)
                     for i in range(m)]
        s.add_all(mechanics)
        await s.flush()
        identities = [Identity(channel=CHANNEL, address=str(800_000_000 + round_no * 100_000 + i),
                               mechanic_id=mech.id, display_name=mech.name, created_at=now)
                      for i, mech in enumerate(mechanics)]
        s.add_all(identities)
        if not first_message:
            await s.flush()
            s.add_all(Conversation(identity_id=i.id, flow="mechanic", step="start", data={},
                                   created_at=now, updated_at=now) for i in identities)
        # As tests/factories.paid_request: a customer who finished the intake and paid.
        customer = Customer(display_name=f"Bench customer {round_no}", created_at=now)
        s.add(customer)
        await s.flush()
        identity = Identity(channel="console", address=f"bench-customer-{round_no}",
                            customer_id=customer.id, created_at=now)
        s.add(identity)
        intake = Intake(customer_id=customer.id, channel="console", status="paid",
                        plan="chat10", vehicle_year=2015, vehicle_make="Honda",
                        vehicle_model="Civic", created_at=now, updated_at=now,
                        problem="Grinding noise from the front wheel when braking")
        s.add(intake)
        await s.flush()
        request = SessionRequest(ref=f"R-{4821 + round_no}", intake_id=intake.id,
                                 customer_id=customer.id, plan="chat10",
                                 price_cents=runtime.config.plan("chat10").price_cents,
                                 status="pending", paid_at=now, created_at=now)
        s.add(request)
        await s.flush()
        s.add(Conversation(identity_id=identity.id, flow="customer", step="matching", data={},
                           intake_id=intake.id, created_at=now, updated_at=now))
    async with runtime.transaction() as uow:
        fresh = await uow.session.get(SessionRequest, request.id)
        assert fresh is not None
        offered = await dispatch.offer_request(uow, runtime, fresh, runtime.clock.now())
    if offered != m:
        raise RuntimeError(f"offer_request offered {offered}, not {m}")
    return request, identities


async def warm(engine: AsyncEngine, connections: int) -> None:
    """Open the pool's connections once, as a running service would have them."""
    async def one() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await asyncio.sleep(0.05)

    await asyncio.gather(*(one() for _ in range(connections)))


# --- one race ----------------------------------------------------------------------------------

@dataclass
class Round:
    winners: int = 0
    taken: int = 0
    replied: int = 0  # losers answered by a reply besides the closing notice
    other: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, every answered tap
    winner_latency: float | None = None
    seconds: float = 0.0  # the whole round, first tap to last answer
    cpu: float = 0.0  # this process's CPU seconds (all threads) during the round
    db_ok: bool = False  # the request accepted by the winner, every other offer "taken"


async def race(engines: list[Engine], request: SessionRequest,
               mechanics: list[Identity]) -> Round:
    result = Round()
    go = asyncio.Event()
    started = 0.0

    async def tap(index: int, mechanic: Identity) -> None:
        engine = engines[index % len(engines)]
        await go.wait()
        try:
            async with asyncio.timeout(TAP_TIMEOUT):
                handled: Handled = await engine.handle(Inbound(
                    channel=mechanic.channel, address=mechanic.address,
                    action=f"accept:{request.ref}"))
        except Exception as exc:  # noqa: BLE001 - counted and reported, the race goes on
            result.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        latency = time.perf_counter() - started
        result.latencies.append(latency)
        said = "\n".join(r.text for r in handled.replies)
        if handled.toast == "Accepted":
            result.winners += 1
            result.winner_latency = latency
        elif handled.toast == "Already taken" and (not said or "already taken" in said):
            # Told by the notice closing their offer (still on its way), or by a reply.
            result.taken += 1
            result.replied += bool(said)
        else:
            result.other[f"{handled.toast}: {said[:60]}"] += 1

    tasks = [asyncio.create_task(tap(i, m)) for i, m in enumerate(mechanics)]
    await asyncio.sleep(0.05)  # every task is waiting on the start signal
    cpu = time.process_time()
    started = time.perf_counter()
    go.set()
    try:
        async with asyncio.timeout(ROUND_TIMEOUT):
            await asyncio.gather(*tasks)
    except TimeoutError:
        result.errors.append(f"round timed out after {ROUND_TIMEOUT:.0f}s")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result.seconds = time.perf_counter() - started
    result.cpu = time.process_time() - cpu
    return result


async def check(runtime: Runtime, request: SessionRequest, m: int) -> bool:
    async with runtime.readers() as s:
        fresh = await s.get(SessionRequest, request.id)
        taken = await s.scalar(select(func.count()).select_from(Offer).where(
            Offer.request_id == request.id, Offer.status == "taken"))
        accepted = await s.scalar(select(func.count()).select_from(Offer).where(
            Offer.request_id == request.id, Offer.status == "accepted"))
        # One closing notice per offer: "accepted by you", or "taken by another mechanic".
        notices = await s.scalar(select(func.count()).select_from(OutboxItem).where(
            OutboxItem.dedupe_key.startswith(f"offer-closed:{request.id}:")))
    return (fresh is not None and fresh.status == "accepted" and fresh.mechanic_id is not None
            and taken == m - 1 and accepted == 1 and notices == m)


# --- one scenario ------------------------------------------------------------------------------

@dataclass
class Scenario:
    db: str
    instances: int
    rounds: list[Round] = field(default_factory=list)
    cold: Round | None = None  # the warm-up round, on connections that had not run it yet

    @property
    def latencies(self) -> list[float]:
        return sorted(x for r in self.rounds for x in r.latencies)

    def pct(self, q: float) -> float | None:
        return percentile_ms(self.latencies, q)


def percentile_ms(values: list[float], q: float) -> float | None:
    """The q-quantile of values (seconds) in milliseconds, nearest rank; None if empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else None


async def run_scenario(db: str, url: str, instances: int, config: Config,
                       args: argparse.Namespace) -> Scenario:
    scenario = Scenario(db, instances)
    made: list[AsyncEngine] = []
    try:
        for _ in range(instances):
            made.append(create_engine(url,
                                      busy_timeout_ms=config.database.sqlite_busy_timeout_ms))
        await migrations.upgrade(made[0])
        runtimes = [build_runtime(config, e, clock=SystemClock()) for e in made]
        engines = [Engine(r, route) for r in runtimes]
        for e in made:
            await warm(e, 10 if db == "postgresql" else 4)
        # Round 0 warms up, as a running service is: its pool's connections (most recently
        # used first) have these statements prepared. Its figures are printed apart ("cold").
        for round_no in range(args.rounds + 1):
            request, mechanics = await seed_round(runtimes[0], round_no, args.mechanics,
                                                 first_message=args.first_message)
            result = await race(engines, request, mechanics)
            result.db_ok = await check(runtimes[0], request, args.mechanics)
            if round_no == 0:
                scenario.cold = result
            else:
                scenario.rounds.append(result)
    finally:
        for e in made:
            await e.dispose()
    return scenario


# --- main ----------------------------------------------------------------------------------------

def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def report(scenarios: list[Scenario], args: argparse.Namespace) -> None:
    print(f"\n{args.mechanics} mechanics with an offer tap Accept at once "
          f"(Engine.handle, own session each), {args.rounds} round(s) per scenario")
    head = (f"{'db':<11}{'inst':>5}{'winners':>11}{'taken':>7}{'reply':>6}{'other':>6}"
            f"{'errors':>7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'p99<100':>8}{'win ms':>8}"
            f"{'round s':>8}{'cpu/tap':>8}{'db ok':>6}")
    print(head)
    print("-" * len(head))
    for sc in scenarios:
        winners = ",".join(str(r.winners) for r in sc.rounds)
        taken = sum(r.taken for r in sc.rounds)
        replied = sum(r.replied for r in sc.rounds)
        other = sum(sum(r.other.values()) for r in sc.rounds)
        errors = sum(len(r.errors) for r in sc.rounds)
        p99 = sc.pct(0.99)
        wins = [r.winner_latency * 1000 for r in sc.rounds if r.winner_latency is not None]
        answered = sum(len(r.latencies) for r in sc.rounds)
        cpu_per_tap = sum(r.cpu for r in sc.rounds) * 1000 / answered if answered else None
        print(f"{sc.db:<11}{sc.instances:>5}{winners:>11}{taken:>7}{replied:>6}{other:>6}"
              f"{errors:>7}"
              f"{fmt(sc.pct(0.50)):>8}{fmt(p99):>8}{fmt(sc.pct(1.0)):>8}"
              f"{'ok' if p99 is not None and p99 < 100 else 'NO':>8}"
              f"{fmt(max(wins) if wins else None):>8}"
              f"{fmt(max(r.seconds for r in sc.rounds), '.2f'):>8}"
              f"{fmt(cpu_per_tap, '.1f'):>8}"
              f"{'ok' if all(r.db_ok for r in sc.rounds) else 'NO':>6}")
        if sc.cold is not None:
            cold = sc.cold
            print(f"{'':<11}warm-up round (not counted): winners {cold.winners}, p99 "
                  f"{fmt(percentile_ms(cold.latencies, 0.99))} ms, db ok "
                  f"{'ok' if cold.db_ok else 'NO'}")
        if args.per_round:
            for i, r in enumerate(sc.rounds):
                print(f"{'':<11}round {i}: winners {r.winners}, taken {r.taken}, "
                      f"p50 {fmt(percentile_ms(r.latencies, 0.5))} ms, "
                      f"p99 {fmt(percentile_ms(r.latencies, 0.99))} ms, winner answered at "
                      f"{fmt(r.winner_latency * 1000 if r.winner_latency else None)} ms")
        for r in sc.rounds:
            for what, count in r.other.items():
                print(f"{'':<11}other answer x{count}: {what}")
            for error in r.errors[:3]:
                print(f"{'':<11}error: {error}")
    print("winners: per round (must be 1); taken: losers answered \"Already taken\" (the toast,\n"
          "and the notice closing their offer, or a reply if that notice had gone out already);\n"
          "reply: of those, answered by a reply too; latency: from the common start to each\n"
          "tap's answer, all rounds; win ms: the winner's answer (max over rounds); round s: the\n"
          "slowest round; cpu/tap: this process's CPU ms per tap (the database server's not\n"
          "included); db ok: request accepted, one offer accepted, every other one 'taken', and\n"
          "one closing notice per offer. Target: p99 < 100 ms.")


async def main_async(args: argparse.Namespace) -> int:
    scenarios: list[Scenario] = []
    # As `autodoctor serve` does once its app is built: what start-up loaded is frozen out of
    # the collector's way.
    settle_heap()
    with tempfile.TemporaryDirectory(prefix="autodoctor-accept-") as tmpdir:
        tmp = Path(tmpdir)
        env = {"AUTODOCTOR_SECRET_KEY": "bench-secret-key-not-for-production"}
        config = load_config(environ=env, data_dir=tmp / "data")
        # Every mechanic offered at once, as the race needs (the service offers waves of 20:
        # bench/waves.py), with a wave budget wide enough for them all.
        config = with_changes(config, dispatch={"wave_size": args.mechanics, "wave_seconds": max(
            10, -(-2 * args.mechanics // int(config.rate_limits.telegram_per_second)))})
        for db in args.db:
            for instances in args.instances:
                async with database_url(db, args.pg_url, tmp / f"race-{instances}.db") as url:
                    if url is None:
                        break
                    scenarios.append(await run_scenario(db, url, instances, config, args))
    report(scenarios, args)
    good = all(r.winners == 1 and r.db_ok and not r.errors
               for sc in scenarios for r in [*sc.rounds, *([sc.cold] if sc.cold else [])])
    return 0 if good else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mechanics", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", default="postgresql,sqlite",
                        type=lambda s: [d.strip() for d in s.split(",") if d.strip()])
    parser.add_argument("--instances", default="1,2",
                        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                        help="app instances (engines) sharing the database, comma-separated")
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))
    parser.add_argument("--per-round", action="store_true", help="print each round too")
    parser.add_argument("--first-message", action="store_true",
                        help="mechanics who never wrote to the bot (no conversation yet)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the service")
    args = parser.parse_args()
    unknown = set(args.db) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown --db {', '.join(sorted(unknown))}")
    if not 2 <= args.mechanics <= 10_000 or not 1 <= args.rounds <= 50:
        parser.error("--mechanics takes 2..10000, --rounds 1..50")
    if not args.instances or min(args.instances) < 1 or max(args.instances) > 8:
        parser.error("--instances takes counts from 1 to 8")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
