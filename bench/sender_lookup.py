"""The engine's lookup of a batch's senders against tables of growing size.

Each of the engine's transactions starts by finding its senders: identity, conversation and
current intake, in one query keyed by (channel, address) (core.store.people.people_for). This
script times that query for a batch of --batch known senders, picked at random, on tables of
1,000, 10,000 and 100,000 people (--sizes), on SQLite and on PostgreSQL, in a throwaway
database migrated like the service's:

    .venv/bin/python bench/sender_lookup.py [--db sqlite,postgresql] [--batch 86]

It prints the median wall-clock milliseconds of one lookup (--iterations of them, each in its
own transaction, as the engine runs it) per size. Wall clock, not CPU: on PostgreSQL the work
is the server's. A lookup that goes through the index costs about the same at every size; a
scan grows with the table (SQLite's did: see core.engine._identity_in).

PostgreSQL comes from AUTODOCTOR_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/
postgres); a database bench_<random> is created and dropped afterwards. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchdb import database_url
from sqlalchemy import func, insert, select

import migrations
from bot.app import build_runtime
from core.clock import SystemClock
from core.config import load_config
from core.db import create_engine
from core.models import Conversation, Customer, Identity, Intake
from core.runtime import Runtime
from core.store.people import Contact, people_for

PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CHUNK = 5000


async def grow(runtime: Runtime, people: int) -> None:
    """Add people (customer, identity, intake, conversation) until there are `people`."""
    now = runtime.clock.now()
    async with runtime.sessions.begin() as session:
        have = (await session.execute(select(func.count()).select_from(Identity))).scalar_one()
        top = (await session.execute(select(func.coalesce(func.max(Customer.id), 0)))
               ).scalar_one()
        for start in range(top + 1, top + 1 + people - have, CHUNK):
            ids = range(start, min(start + CHUNK, top + 1 + people - have))
            await session.execute(insert(Customer), [
                {"id": i, "display_name": None, "created_at": now} for i in ids])
            await session.execute(insert(Identity), [
                {"id": i, "channel": "web", "address": address(i), "customer_id": i,
                 "reachable": True, "created_at": now} for i in ids])
            await session.execute(insert(Intake), [
                {"id": i, "customer_id": i, "channel": "web", "status": "draft",
                 "created_at": now, "updated_at": now} for i in ids])
            await session.execute(insert(Conversation), [
                {"id": i, "identity_id": i, "flow": "customer", "step": "plan", "data": {},
                 "intake_id": i, "created_at": now, "updated_at": now}
                for i in ids])


def address(i: int) -> str:
    return f"bench:{i:08d}"


async def lookup_ms(runtime: Runtime, people: int, batch: int, iterations: int) -> float:
    rng = random.Random(people)
    times = []
    for _ in range(iterations):
        contacts = [Contact(channel="web", address=address(i))
                    for i in rng.sample(range(1, people + 1), batch)]
        start = time.perf_counter()
        async with runtime.transaction() as uow:
            found = await people_for(uow, contacts, runtime.clock.now())
        times.append(time.perf_counter() - start)
        assert len(found) == batch, len(found)
    return statistics.median(times) * 1000


async def run_db(db: str, args: argparse.Namespace) -> list[float] | None:
    with tempfile.TemporaryDirectory(prefix="autodoctor-lookup-") as tmp:
        async with database_url(db, args.pg_url, Path(tmp) / "bench.db") as url:
            if url is None:
                return None
            if url.startswith("postgresql://"):
                url = url.replace("postgresql://", "postgresql+asyncpg://", 1)
            config = load_config(environ={"AUTODOCTOR_SECRET_KEY": "bench-secret-key"},
                                 data_dir=Path(tmp))
            engine = create_engine(url)
            try:
                await migrations.upgrade(engine)
                runtime = build_runtime(config, engine, clock=SystemClock())
                figures = []
                for size in args.sizes:
                    await grow(runtime, size)
                    if engine.dialect.name == "postgresql":  # as autovacuum would have
                        async with engine.connect() as conn:
                            await conn.exec_driver_sql("ANALYZE")
                    await lookup_ms(runtime, size, args.batch, 3)  # warm: statements prepared
                    figures.append(await lookup_ms(runtime, size, args.batch, args.iterations))
                return figures
            finally:
                await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    print(f"one lookup of {args.batch} known senders (median of {args.iterations}), ms")
    print(f"{'db':<12}" + "".join(f"{size:>12,}" for size in args.sizes) + "  people")
    for db in args.db.split(","):
        figures = await run_db(db, args)
        if figures is not None:
            print(f"{db:<12}" + "".join(f"{ms:>12.2f}" for ms in figures))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1000, 10000, 100000])
    parser.add_argument("--batch", type=int, default=86)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))
    sys.exit(asyncio.run(main(parser.parse_args())))
