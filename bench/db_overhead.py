"""Database layer overhead on PostgreSQL: what SQLAlchemy costs per transaction, per statement
and per loaded row, next to asyncpg alone, in this process's CPU time.

The widget benchmark's server spends most of its CPU in the engine's transactions. This script
takes their two fixed ingredients apart on a throwaway database migrated like the service's:

1. a transaction of k trivial statements (SELECT 1), k = 1 and 5: through the service's own
   sessions (core.runtime: AsyncSession, with the service's session hooks), through a Core
   AsyncConnection of the same engine, and through a bare asyncpg connection with a prepared
   statement. The difference between k = 5 and k = 1, over 4, is the cost of one statement;
   the rest is the cost of the transaction (BEGIN, COMMIT, checkout, session);
2. loading N people (identity, conversation, intake: the engine's lookup shape) in one query,
   as ORM objects (an Identity and an Intake each) and as plain rows, and the difference per
   person.

    .venv/bin/python bench/db_overhead.py [--rows 60] [--iterations 300] [--repeat 3]

CPU is time.process_time() (this process only; the database server's work is not in it), the
median of --repeat runs of --iterations each. PostgreSQL comes from AUTODOCTOR_BENCH_PG_URL
(default postgresql://postgres@127.0.0.1:5432/postgres); a database bench_<random> is created
and dropped afterwards. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchdb import pg_database
from sqlalchemy import select, text

import migrations
from bot.app import build_runtime
from core.clock import SystemClock
from core.config import load_config
from core.db import create_engine
from core.models import Conversation, Customer, Identity, Intake
from core.runtime import Runtime

PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
STATEMENTS = (1, 5)


async def cpu_us(work: Callable[[], Awaitable[object]], iterations: int, repeat: int) -> float:
    """Median CPU microseconds of one call of `work`."""
    await work()  # statements prepared, connection checked out once
    runs = []
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(iterations):
            await work()
        runs.append((time.process_time() - start) / iterations * 1e6)
    return statistics.median(runs)


async def seed(runtime: Runtime, rows: int) -> None:
    now = runtime.clock.now()
    async with runtime.sessions.begin() as session:
        customers = [Customer(display_name=None, created_at=now) for _ in range(rows)]
        session.add_all(customers)
        await session.flush()
        identities = [Identity(channel="web", address=f"bench:{c.id}", customer_id=c.id,
                               created_at=now) for c in customers]
        intakes = [Intake(customer_id=c.id, channel="web", status="draft", created_at=now,
                          updated_at=now) for c in customers]
        session.add_all(identities + intakes)
        await session.flush()
        session.add_all(Conversation(identity_id=i.id, flow="customer", step="plan", data={},
                                     intake_id=k.id, created_at=now, updated_at=now)
                        for i, k in zip(identities, intakes, strict=True))


async def measure(url: str, args: argparse.Namespace) -> list[tuple[str, float]]:
    import asyncpg

    with tempfile.TemporaryDirectory(prefix="autodoctor-dboverhead-") as tmp:
        config = load_config(environ={"AUTODOCTOR_SECRET_KEY": "bench-secret-key"},
                             data_dir=Path(tmp))
        engine = create_engine(url)
        raw = None
        try:
            await migrations.upgrade(engine)
            runtime = build_runtime(config, engine, clock=SystemClock())
            await seed(runtime, args.rows)
            raw = await asyncpg.connect(url)
            select_one = text("SELECT 1")
            prepared = await raw.prepare("SELECT 1")

            # Each layer: how a transaction begins, and one statement inside it.
            layers: list[tuple[str, Callable[[], Any], Callable[[Any], Awaitable[object]]]] = [
                ("AsyncSession (the service's sessions)", runtime.sessions.begin,
                 lambda session: session.execute(select_one)),
                ("Core AsyncConnection", engine.begin, lambda conn: conn.execute(select_one)),
                ("asyncpg alone", raw.transaction, lambda _transaction: prepared.fetch()),
            ]

            def transaction(begin: Callable[[], Any],
                            statement: Callable[[Any], Awaitable[object]],
                            k: int) -> Callable[[], Awaitable[None]]:
                async def work() -> None:
                    async with begin() as handle:
                        for _ in range(k):
                            await statement(handle)
                return work

            figures: list[tuple[str, float]] = []
            for name, begin, statement in layers:
                one, five = [await cpu_us(transaction(begin, statement, k), args.iterations,
                                          args.repeat) for k in STATEMENTS]
                per_statement = (five - one) / (STATEMENTS[1] - STATEMENTS[0])
                figures += [(f"{name}: per statement", per_statement),
                            (f"{name}: per transaction, statements aside", one - per_statement)]

            identities, intakes = Identity.__table__, Intake.__table__
            conversations = Conversation.__table__
            joined = (identities
                      .join(conversations, conversations.c.identity_id == identities.c.id)
                      .join(intakes, intakes.c.id == conversations.c.intake_id))
            people = select(Identity, Intake).select_from(joined)
            plain = select(*identities.c, *intakes.c).select_from(joined)

            def load(query: Any) -> Callable[[], Awaitable[None]]:
                async def work() -> None:
                    async with runtime.sessions() as session:
                        rows = (await session.execute(query)).all()
                    assert len(rows) == args.rows, len(rows)
                return work

            orm = await cpu_us(load(people), args.iterations, args.repeat)
            core = await cpu_us(load(plain), args.iterations, args.repeat)
            figures += [(f"{args.rows} people in one query and session, as ORM objects", orm),
                        (f"{args.rows} people in one query and session, as plain rows", core),
                        ("the ORM objects' extra cost per person", (orm - core) / args.rows)]
            return figures
        finally:
            if raw is not None:
                await raw.close()
            await engine.dispose()


async def main_async(args: argparse.Namespace) -> int:
    async with pg_database(args.pg_url) as url:
        if url is None:
            return 1
        figures = await measure(url, args)
    width = max(len(name) for name, _ in figures)
    print(f"CPU of this process, median of {args.repeat} x {args.iterations}:")
    for name, value in figures:
        print(f"  {name:<{width}}  {value:7.1f} us")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60,
                        help="people in the lookup (default 60, about one engine batch)")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))
    args = parser.parse_args()
    if not 1 <= args.rows <= 10_000 or args.iterations < 1 or args.repeat < 1:
        parser.error("--rows takes 1 to 10000; --iterations and --repeat at least 1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
