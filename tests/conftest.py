"""Shared fixtures: every database test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from billing import refunds_for
from billing.offline import OfflinePayments
from billing.payouts import payouts_for
from bot.texts import text as render_text
from core.clock import ManualClock
from core.config import Config, load_config, normalize_database_url
from core.db import create_engine
from core.models import Base
from core.runtime import Runtime

PG_URL = normalize_database_url(
    os.environ.get("AUTODOCTOR_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"))
IN_CI = os.environ.get("CI", "").lower() == "true"
TEST_ENV = {"AUTODOCTOR_SECRET_KEY": "test-secret-key-not-for-production"}

_pg_reachable: bool | None = None


async def _probe_pg() -> bool:
    engine = create_engine(PG_URL)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means unreachable
        return False
    finally:
        await engine.dispose()


async def require_postgres() -> None:
    """Skip when PostgreSQL is unreachable, except under CI=true where that is a failure."""
    global _pg_reachable
    if _pg_reachable is None:
        _pg_reachable = await _probe_pg()
    if not _pg_reachable:
        message = f"PostgreSQL unreachable at {PG_URL}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: PostgreSQL is required)")
        pytest.skip(message)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """The shipped config.toml with a private data dir and no secrets from the environment."""
    return load_config(environ=TEST_ENV, data_dir=tmp_path / "data")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def engine_factory(backend: str, tmp_path: Path) -> AsyncIterator[Callable[[], AsyncEngine]]:
    """Makes engines on one private database (a SQLite file or a fresh PostgreSQL schema),
    as separate processes sharing it would have."""
    engines: list[AsyncEngine] = []
    schema = f"t_{uuid.uuid4().hex[:16]}"
    if backend == "sqlite":
        def make() -> AsyncEngine:
            engines.append(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"))
            return engines[-1]
    else:
        await require_postgres()
        admin = create_engine(PG_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))

        def make() -> AsyncEngine:
            engines.append(create_engine(
                PG_URL, connect_args={"server_settings": {"search_path": schema}}))
            return engines[-1]
    try:
        yield make
    finally:
        for made in engines:
            await made.dispose()
        if backend != "sqlite":
            async with admin.begin() as conn:
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            await admin.dispose()


@pytest.fixture
def empty_engine(engine_factory: Callable[[], AsyncEngine]) -> AsyncEngine:
    """An engine on an empty, private database."""
    return engine_factory()


@pytest.fixture
async def engine(empty_engine: AsyncEngine) -> AsyncEngine:
    """An engine whose database has every table (created from the models)."""
    async with empty_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    return empty_engine


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def runtime(config: Config, engine: AsyncEngine, clock: ManualClock) -> Runtime:
    payments = OfflinePayments(config)
    return Runtime.build(config, engine, payments, render_text, clock,
                         refund=refunds_for(payments), payout=payouts_for(payments))


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A whole fresh PostgreSQL database, for tests that run the CLI in another process."""
    asyncio.run(require_postgres())
    name = f"t_{uuid.uuid4().hex[:16]}"

    async def run(sql: str) -> None:
        admin = create_engine(PG_URL.rsplit("/", 1)[0] + "/postgres")
        try:
            async with admin.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text(sql))
        finally:
            await admin.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def make_client(aiohttp_client: Any, engine: AsyncEngine,
                      clock: ManualClock) -> AsyncIterator[Callable[..., Awaitable[TestClient]]]:
    """Start the whole app on the test database; closed before the database goes away."""
    from bot.app import create_app

    clients: list[TestClient] = []

    async def make(config: Config, **overrides: Any) -> TestClient:
        overrides.setdefault("clock", clock)
        overrides.setdefault("background", False)
        overrides.setdefault("engine", engine)
        client = await aiohttp_client(create_app(config, **overrides))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
