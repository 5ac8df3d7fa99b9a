"""Alembic environment: async, batch mode so SQLite can alter tables."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context

from core.models import Base

target_metadata = Base.metadata


def do_run_migrations(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    from core.config import load_config
    from core.db import create_engine

    engine = create_engine(load_config().database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


connection = context.config.attributes.get("connection")
if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run `autodoctor migrate`")
elif connection is not None:
    do_run_migrations(connection)
else:
    asyncio.run(run_async_migrations())
