"""A multi-row INSERT's cost on PostgreSQL, with each column sent as one JSON text (what
core.store.sql does) against one array per column (what it did before 2026-12-03).

    .venv/bin/python bench/column_encoding.py [--rows 60] [--statements 1000]

On a throwaway database with the service's tables, it inserts --rows transcript rows (the
messages table: integers, short and long text, JSON bodies, timestamps, NULLs) --statements
times each way, through SQLAlchemy and asyncpg as the service does, alternating the two ways
three times, and prints per statement: this process's CPU (SQLAlchemy's and asyncpg's
encoding, the round trip) and the CPU of the database server's process that ran it (from
/proc, so Linux only, with the server on this machine). The JSON way moves work from the
client, the service's event loop, to the server, which parses the JSON and casts the text.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from benchdb import cpu_seconds, pg_database

PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def array_insert(table: Any, names: tuple[str, ...]) -> Any:
    """The statement as core.sql built it before: unnest of one array per column."""
    from sqlalchemy import bindparam, text
    from sqlalchemy.dialects.postgresql import ARRAY

    quoted = ", ".join(f'"{name}"' for name in names)
    sql = (f'INSERT INTO "{table.name}" ({quoted}) SELECT {quoted} FROM unnest('
           + ", ".join(f":{name}" for name in names)
           + f") WITH ORDINALITY AS rows({quoted}, _place) ORDER BY _place")
    return text(sql).bindparams(*(bindparam(name, type_=ARRAY(table.c[name].type))
                                  for name in names))


async def run(url: str, rows: int, statements: int) -> None:
    from sqlalchemy import String, bindparam, text

    from core.db import create_engine
    from core.models import Base, Customer, Identity, Message
    from core.store import sql

    engine = create_engine(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        now = datetime.now(UTC)
        async with engine.begin() as conn:
            customer = (await conn.execute(Customer.__table__.insert().values(
                created_at=now).returning(Customer.id))).scalar_one()
            identity = (await conn.execute(Identity.__table__.insert().values(
                channel="web", address="bench", customer_id=customer, created_at=now)
                .returning(Identity.id))).scalar_one()
        table = Message.__table__
        body = {"buttons": [{"label": "Quick Chat · $9.99", "payload": "plan:chat10"},
                            {"label": "Standard Video · $29.99", "payload": "plan:video15"}],
                "link": None}
        values = dict({
            "identity_id": [identity] * rows, "conversation_id": [None] * rows,
            "consultation_id": [None] * rows, "direction": ["out"] * rows,
            "channel": ["web"] * rows,
            "text": [f"Thanks! Which plan would you like? ({i})" for i in range(rows)],
            "action": [None] * rows, "body": [body] * rows, "provider_id": [None] * rows,
            "created_at": [now] * rows})
        arrays = array_insert(table, tuple(values))
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await conn.commit()

            names = tuple(values)
            as_json = text(sql.pg_insert_sql(table, names)).bindparams(
                *(bindparam(name, type_=String()) for name in names))
            rows_ = list(zip(*values.values(), strict=True))

            async def json_way() -> None:
                await conn.execute(as_json, sql.pg_params(table, names, rows_))

            async def array_way() -> None:
                await conn.execute(arrays, values)

            figures: dict[str, list[tuple[float, float]]] = {"json": [], "arrays": []}
            for _ in range(3):
                for name, way in (("arrays", array_way), ("json", json_way)):
                    await way()  # prepared on this connection first
                    await conn.rollback()
                    client, server = time.process_time(), cpu_seconds(pid)
                    for _ in range(statements):
                        await way()
                        await conn.rollback()
                    figures[name].append(((time.process_time() - client) / statements,
                                          (cpu_seconds(pid) - server) / statements))
        print(f"{rows}-row INSERT into messages ({len(values)} columns), {statements} "
              "statements each way, 3 alternations; µs per statement (each a rollback too):")
        for name, runs in figures.items():
            client = sorted(run[0] for run in runs)[1]
            server = sorted(run[1] for run in runs)[1]
            print(f"  {name:6s}  client {1e6 * client:6.0f}  server {1e6 * server:6.0f}  "
                  f"(client runs {'/'.join(f'{1e6 * run[0]:.0f}' for run in runs)}; "
                  f"server {'/'.join(f'{1e6 * run[1]:.0f}' for run in runs)})")
    finally:
        await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    if sys.platform != "linux":
        raise SystemExit("reads the server's CPU from /proc: Linux only")
    async with pg_database(args.pg_url) as url:
        if url is None:
            raise SystemExit("postgresql unreachable")
        await run(url, args.rows, args.statements)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--statements", type=int, default=1000)
    parser.add_argument("--pg-url", default=os.environ.get("AUTODOCTOR_BENCH_PG_URL", PG_URL))
    asyncio.run(main(parser.parse_args()))
