from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from bot.app import RUNTIME
from core.config import Config
from core.db import WalCheckpointer, create_engine, create_sessionmaker, sqlite_file
from core.models import (
    Base,
    Customer,
    Identity,
    InboundEvent,
    Intake,
    Mechanic,
    OutboxItem,
    SessionRequest,
)

NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def _diff(engine: AsyncEngine) -> list[object]:
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))


async def test_migrations_upgrade_downgrade_upgrade_and_match_models(
        empty_engine: AsyncEngine) -> None:
    await migrations.upgrade(empty_engine)
    assert set(Base.metadata.tables) <= await _tables(empty_engine)
    assert await migrations.current(empty_engine) is not None
    await migrations.downgrade(empty_engine, "base")
    assert await _tables(empty_engine) <= {"alembic_version"}
    await migrations.upgrade(empty_engine)
    assert set(Base.metadata.tables) <= await _tables(empty_engine)
    assert await _diff(empty_engine) == []


async def test_migrated_schema_enforces_one_job_per_mechanic(empty_engine: AsyncEngine) -> None:
    await migrations.upgrade(empty_engine)
    await _assert_one_job_rule(empty_engine)


async def _seed_requests(engine: AsyncEngine, n: int) -> tuple[int, list[int]]:
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as s:
        customer = Customer(display_name="Dana")
        mechanic = Mechanic(name="Sam")
        s.add_all([customer, mechanic])
        await s.flush()
        ids = []
        for i in range(n):
            intake = Intake(customer_id=customer.id, channel="web", plan="chat10")
            s.add(intake)
            await s.flush()
            req = SessionRequest(ref=f"R-{1000 + i}", intake_id=intake.id,
                                 customer_id=customer.id, plan="chat10", price_cents=999,
                                 paid_at=NOW)
            s.add(req)
            await s.flush()
            ids.append(req.id)
        return mechanic.id, ids


async def _assert_one_job_rule(engine: AsyncEngine) -> None:
    mechanic_id, (first, second) = await _seed_requests(engine, 2)
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as s:
        req = await s.get(SessionRequest, first)
        assert req is not None
        req.status, req.mechanic_id = "accepted", mechanic_id
    with pytest.raises(IntegrityError):
        async with sessions.begin() as s:
            req = await s.get(SessionRequest, second)
            assert req is not None
            req.status, req.mechanic_id = "accepted", mechanic_id
    # Once the first job is over the mechanic may take another.
    async with sessions.begin() as s:
        req = await s.get(SessionRequest, first)
        assert req is not None
        req.status = "completed"
    async with sessions.begin() as s:
        req = await s.get(SessionRequest, second)
        assert req is not None
        req.status, req.mechanic_id = "accepted", mechanic_id
    async with sessions.begin() as s:
        accepted = (await s.scalars(select(SessionRequest.ref).where(
            SessionRequest.status == "accepted"))).all()
    assert accepted == ["R-1001"]


async def test_models_enforce_one_job_per_mechanic(engine: AsyncEngine) -> None:
    await _assert_one_job_rule(engine)


async def test_unique_keys_for_idempotency(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as s:
        s.add(InboundEvent(provider="stripe", event_id="evt_1"))
        s.add(OutboxItem(dedupe_key="offer:1:2", channel="web", address="v1", payload={}))
        c = Customer()
        s.add(c)
        await s.flush()
        s.add(Identity(channel="telegram", address="42", customer_id=c.id))
    for row in (InboundEvent(provider="stripe", event_id="evt_1"),
                OutboxItem(dedupe_key="offer:1:2", channel="web", address="v2", payload={}),
                Identity(channel="telegram", address="42", customer_id=c.id)):
        with pytest.raises(IntegrityError):
            async with sessions.begin() as s:
                s.add(row)
    async with sessions.begin() as s:
        # The same event id from another provider is a different event.
        s.add(InboundEvent(provider="telegram", event_id="evt_1"))


async def test_identity_must_belong_to_someone(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    with pytest.raises(IntegrityError):
        async with sessions.begin() as s:
            s.add(Identity(channel="sms", address="+15550001"))


async def test_foreign_keys_are_enforced(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    with pytest.raises(IntegrityError):
        async with sessions.begin() as s:
            s.add(Identity(channel="sms", address="+15550001", customer_id=999_999))


async def test_timestamps_round_trip_as_aware_utc(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    cet = timezone(timedelta(hours=1))
    async with sessions.begin() as s:
        c = Customer(created_at=datetime(2026, 3, 1, 10, 30, tzinfo=cet))
        s.add(c)
    async with sessions() as s:
        if engine.dialect.name == "postgresql":
            # What is read is UTC whatever the session's zone (asyncpg's binary timestamptz;
            # UTCDateTime does nothing per value there).
            await s.execute(text("SET TIME ZONE 'Asia/Kolkata'"))
        loaded = await s.scalar(select(Customer).where(Customer.id == c.id)
                                .execution_options(populate_existing=True))
        assert loaded is not None
        assert loaded.created_at == NOW
        assert loaded.created_at.utcoffset() == timedelta(0)
        assert loaded.created_at.tzinfo is UTC
        # Comparisons in SQL see the same instant.
        later = await s.scalar(select(Customer.id).where(
            Customer.created_at < NOW + timedelta(seconds=1)))
        assert later == c.id


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_sqlite_stores_timestamps_as_its_datetime_text_in_time_order(
        engine: AsyncEngine) -> None:
    # The text SQLAlchemy's SQLite DATETIME writes, microseconds always there, so rows
    # written before and after the service's own conversion read back the same, and the
    # text's order is the time order (SQL compares the text).
    sessions = create_sessionmaker(engine)
    moments = [datetime(2026, 3, 1, 9, 30, 0, 500000, tzinfo=timezone(timedelta(hours=-1))),
               datetime(2026, 3, 1, 10, 30, tzinfo=UTC),
               datetime(2026, 3, 1, 10, 29, 59, 999999, tzinfo=UTC)]
    async with sessions.begin() as s:
        s.add_all(Customer(display_name=str(i), created_at=at) for i, at in enumerate(moments))
    async with engine.connect() as conn:
        stored = (await conn.exec_driver_sql(
            "SELECT created_at FROM customers ORDER BY created_at")).scalars().all()
        await conn.exec_driver_sql(
            "INSERT INTO customers (display_name, created_at) VALUES ('old', "
            "'2026-03-01 10:31:00.000000'), ('bare', '2026-03-01 10:32:00')")
        await conn.commit()
    assert stored == ["2026-03-01 10:29:59.999999", "2026-03-01 10:30:00.000000",
                      "2026-03-01 10:30:00.500000"]
    async with sessions() as s:
        loaded = {c.display_name: c.created_at for c in await s.scalars(select(Customer))}
        after = (await s.scalars(select(Customer.display_name).where(
            Customer.created_at > datetime(2026, 3, 1, 10, 30, tzinfo=UTC))
            .order_by(Customer.created_at))).all()
    assert loaded["0"] == moments[0] and loaded["0"].utcoffset() == timedelta(0)
    assert loaded["old"] == datetime(2026, 3, 1, 10, 31, tzinfo=UTC)
    assert loaded["bare"] == datetime(2026, 3, 1, 10, 32, tzinfo=UTC)
    assert after == ["0", "old", "bare"]


async def test_naive_datetimes_are_refused(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    with pytest.raises(Exception, match="naive datetime"):
        async with sessions.begin() as s:
            s.add(Customer(created_at=datetime(2026, 3, 1, 10, 30)))


async def test_sqlite_writer_waits_for_another_process_without_stalling_the_loop(
        tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=5000)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    other = sqlite3.connect(path, isolation_level=None)  # another process's connection
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def write() -> None:
        async with create_sessionmaker(engine).begin() as s:
            s.add(Customer(display_name="Dana", created_at=NOW))

    try:
        ticking = asyncio.create_task(ticker())
        writing = asyncio.create_task(write())
        await asyncio.sleep(0.5)
        assert not writing.done()  # waiting for the other writer...
        assert ticks >= 10  # ...while the loop goes on serving others
        other.execute("COMMIT")
        await asyncio.wait_for(writing, 5)
        ticking.cancel()
        async with create_sessionmaker(engine)() as s:
            assert await s.scalar(select(Customer.display_name)) == "Dana"
    finally:
        other.close()
        await engine.dispose()


async def test_sqlite_writer_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "stuck.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}", busy_timeout_ms=300)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(OperationalError, match="locked"):
            async with create_sessionmaker(engine).begin() as s:
                s.add(Customer(display_name="Dana", created_at=NOW))
        assert asyncio.get_running_loop().time() - started >= 0.3
        # The in-process write lock was released: the next writer goes ahead once free.
        other.execute("ROLLBACK")
        async with create_sessionmaker(engine).begin() as s:
            s.add(Customer(display_name="Lee", created_at=NOW))
    finally:
        other.close()
        await engine.dispose()


async def test_the_wal_is_checkpointed_on_a_thread_not_by_commits_on_the_loop(
        tmp_path: Path) -> None:
    # A commit that checkpoints copies the log into the file and syncs it, on the loop's
    # thread; with background checkpoints commits never do, and a thread keeps the log short.
    path = tmp_path / "wal.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}", background_checkpoints=True)
    checkpointer = WalCheckpointer(str(path), interval=0.05)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one() == 0
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)"))
        for _ in range(40):  # far past SQLite's own threshold of 1,000 pages
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (body) VALUES (:b)"),
                                   [{"b": "x" * 4000} for _ in range(50)])
        frames_before = checkpointer.checkpoint()[1]
        assert frames_before > 1000  # nothing was checkpointed by the commits themselves

        task = asyncio.create_task(checkpointer.run_forever())
        await asyncio.sleep(0.3)
        async with engine.begin() as conn:  # the next writer starts the log over
            await conn.execute(text("INSERT INTO t (body) VALUES ('after')"))
        await asyncio.sleep(0.3)
        busy, frames, done = await asyncio.to_thread(checkpointer.checkpoint)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert busy == 0 and frames == done and frames < 50
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 2001
    finally:
        await engine.dispose()


async def test_the_service_engine_leaves_checkpoints_to_its_thread(config: Config) -> None:
    # The running service: its commits never checkpoint, and still the log is kept short.
    from aiohttp.test_utils import TestServer

    from bot.app import create_app

    app = create_app(config, background=False)
    engine = app[RUNTIME].engine
    async with engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA wal_autocheckpoint"))).scalar_one() == 0
    assert any(getattr(ctx, "__name__", "") == "wal-checkpoints" for ctx in app.cleanup_ctx)
    server = TestServer(app)
    await server.start_server()
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)"))
        for _ in range(40):  # far past SQLite's own threshold of 1,000 pages
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (body) VALUES (:b)"),
                                   [{"b": "x" * 4000} for _ in range(50)])
        await asyncio.sleep(2.5)  # the service's checkpointer runs every second
        async with engine.begin() as conn:  # the next writer starts the log over
            await conn.execute(text("INSERT INTO t (body) VALUES ('after')"))
        with contextlib.closing(sqlite3.connect(str(sqlite_file(engine)))) as probe:
            frames = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        assert frames < 50, frames
    finally:
        await server.close()


async def _customer(sessions: Any) -> Customer:
    async with sessions.begin() as s:
        customer = Customer(created_at=NOW)
        s.add(customer)
    return customer
