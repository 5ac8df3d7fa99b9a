from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Numeric, String, Table, inspect, select, text
from sqlalchemy.exc import IntegrityError, InvalidRequestError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from bot.app import RUNTIME
from core.config import Config
from core.db import WalCheckpointer, create_engine, create_sessionmaker, sqlite_file
from core.models import (
    Base,
    Conversation,
    Customer,
    Identity,
    InboundEvent,
    Intake,
    Mechanic,
    OutboxItem,
    SessionRequest,
)
from core.sql import add_new, as_loaded, bulk_insert_sync, bulk_update_sync, get_by_id
from core.sqlite_inline import InlineConnection
from tests.helpers import recording_executions, recording_statements

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


async def test_sqlite_statements_run_on_the_event_loop_thread(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert isinstance(raw.driver_connection, InlineConnection)
            await raw.driver_connection.create_function("whoami", 0, threading.get_ident)
            ran_on = (await conn.execute(text("SELECT whoami()"))).scalar_one()
        assert ran_on == threading.get_ident()  # no hop to a worker thread
    finally:
        await engine.dispose()


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


async def test_an_object_made_as_loaded_is_persistent_and_clean_like_a_loaded_row(
        engine: AsyncEngine) -> None:
    # core.sql.as_loaded (add_new's objects, the engine's first contacts): in the session's
    # identity map as a query would have put it, so the session finds it without a statement,
    # a change to it is written as for a loaded row, and a second object for the same row is
    # refused.
    sessions = create_sessionmaker(engine)
    customer = await _customer(sessions)
    values = {"id": customer.id, "display_name": None, "stripe_customer_id": None,
              "created_at": NOW}
    async with sessions.begin() as s:
        made = as_loaded(s, Customer, values)
        state = inspect(made)
        assert state.persistent and not state.modified and made in s
        with recording_statements(engine) as statements:
            assert await s.get(Customer, customer.id) is made
            assert made.created_at == NOW
        assert statements == []
        with pytest.raises(InvalidRequestError):
            as_loaded(s, Customer, values)
        made.display_name = "Bea"
        assert state.modified and made in s.dirty
    async with sessions() as s:
        stored = await s.get(Customer, customer.id)
        assert stored is not None and stored.display_name == "Bea"
        assert stored.created_at == NOW


async def test_add_new_rows_known_at_once_written_together_before_what_points_at_them(
        engine: AsyncEngine) -> None:
    # core.sql.add_new: the new object's id is known at once; on PostgreSQL no statement per
    # row (ids drawn ahead from the sequence, one INSERT for the lot at the flush, ahead of
    # the flush's UPDATEs that point at them); a savepoint rolled back takes its row along.
    sessions = create_sessionmaker(engine)
    customer = await _customer(sessions)
    async with sessions.begin() as s:
        identity = Identity(channel="web", address="v_new", customer_id=customer.id,
                            created_at=NOW)
        s.add(identity)
        await s.flush()
        conversation = Conversation(identity_id=identity.id, flow="customer", step="start",
                                    data={}, created_at=NOW, updated_at=NOW)
        s.add(conversation)
        await s.flush()
    postgres = engine.dialect.name == "postgresql"
    with recording_statements(engine) as statements:
        async with sessions.begin() as s:
            conversation = await s.get(Conversation, conversation.id)
            assert conversation is not None
            intakes = [await add_new(s, Intake, {"customer_id": customer.id, "channel": "web",
                                                 "status": "draft", "created_at": NOW,
                                                 "updated_at": NOW}) for _ in range(5)]
            assert len({i.id for i in intakes}) == 5 and intakes[0].plan is None
            before_flush = [x for x in statements if "intakes" in x or "nextval" in x]
            conversation.intake_id = intakes[-1].id  # an UPDATE in the same flush
            intakes[0].plan = "chat10"  # changed before it is written: still kept
            async with s.begin_nested() as savepoint:
                dropped = await add_new(s, Intake, {"customer_id": customer.id,
                                                    "channel": "web", "status": "draft",
                                                    "created_at": NOW, "updated_at": NOW})
                await savepoint.rollback()
            assert dropped not in s  # gone with its savepoint, like the flush's own new rows
            await s.flush()
            writes = [x for x in statements if x.lstrip().upper().startswith("INSERT INTO")
                      and "intakes" in x]
            # After the flush, rows added the ORM's way and by add_new keep apart (SQLite:
            # the ORM's INSERT takes the next rowid, the next draw counts on from there).
            by_orm = Intake(customer_id=customer.id, channel="web", status="draft",
                            created_at=NOW, updated_at=NOW)
            s.add(by_orm)
            await s.flush()
            later = await add_new(s, Intake, {"customer_id": customer.id, "channel": "web",
                                              "status": "draft", "created_at": NOW,
                                              "updated_at": NOW})
    if postgres:
        assert before_flush and all("nextval" in x for x in before_flush)
    else:  # the largest id, read once
        assert len(before_flush) == 1 and "max(intakes.id)" in before_flush[0], before_flush
    assert len(writes) == 2, writes  # the five at the flush, and the one in the savepoint
    async with sessions() as s:
        stored = {i.id: i for i in (await s.scalars(select(Intake))).all()}
        assert set(stored) == {i.id for i in [*intakes, by_orm, later]}
        assert len(stored) == 7  # the dropped one's id may be taken again (SQLite)
        assert stored[intakes[0].id].plan == "chat10"
        assert stored[intakes[0].id].created_at == NOW
        assert (await s.get(Conversation, conversation.id)).intake_id == intakes[-1].id


async def test_multi_row_writes_of_any_size_keep_every_value(engine: AsyncEngine) -> None:
    # Many rows at once (more values than one SQLite statement may bind: it takes several),
    # each value stored as its type stores it (timestamps, JSON, booleans); a conflict skips
    # the row and the others go in; the RETURNING values come back for the rows inserted.
    sessions = create_sessionmaker(engine)
    customer = await _customer(sessions)
    async with sessions.begin() as s:
        identity = Identity(channel="web", address="v_bulk", customer_id=customer.id,
                            created_at=NOW)
        s.add(identity)
    table = OutboxItem.__table__
    rows = [{"dedupe_key": f"k{i}", "channel": "web", "address": f"a{i}",
             "identity_id": None, "message_id": None, "payload": {"text": f"t{i}", "n": [i]},
             "status": "pending", "attempts": 0, "next_attempt_at": NOW,
             "created_at": NOW + timedelta(microseconds=i)} for i in range(300)]
    async with sessions.begin() as s:
        first = await s.run_sync(lambda sync: bulk_insert_sync(
            sync.connection(), table, rows[:250], returning=("dedupe_key", "id")))
        second = await s.run_sync(lambda sync: bulk_insert_sync(
            sync.connection(), table, rows[200:], returning=("dedupe_key", "id"),
            conflict=("dedupe_key",)))
        ids = dict(first) | dict(second)
        await s.run_sync(lambda sync: bulk_update_sync(
            sync.connection(), Identity.__table__, ("reachable", "unreachable_reason"),
            [{"id": identity.id, "reachable": False, "unreachable_reason": "blocked"}]))
    assert len(first) == 250 and {key for key, _ in second} == {f"k{i}" for i in range(250, 300)}
    async with sessions() as s:
        stored = {row.dedupe_key: row for row in (await s.scalars(select(OutboxItem))).all()}
        stored_identity = await s.get(Identity, identity.id)
    assert set(stored) == set(ids) and len(stored) == 300
    assert all(stored[key].id == ids[key] for key in ids)
    assert stored["k299"].payload == {"text": "t299", "n": [299]}
    assert stored["k299"].created_at == NOW + timedelta(microseconds=299)
    assert stored_identity is not None
    assert (stored_identity.reachable, stored_identity.unreachable_reason) == (False, "blocked")


_AWKWARD = ["", "plain", 'quotes " and \\ backslash', "{braces,commas}", "NULL", "null",
            "ünïcödé ✓ 🚗", "tab\tnew\nline", "x" * 5000]


class _Instant(datetime):
    """A datetime subclass, as a test clock or a library may hand over."""

    @classmethod
    def of(cls, t: datetime) -> _Instant:
        return cls(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond,
                   t.tzinfo)


async def test_multi_row_writes_keep_awkward_values_exactly(engine: AsyncEngine) -> None:
    # Whatever way the columns travel (PostgreSQL: each as one JSON text, see core.sql), text
    # comes back as it went, SQL NULL stays NULL and JSON's null in a JSON column stays JSON's
    # null, timestamps keep their microseconds (and their instant, given in another offset and
    # as a datetime subclass), and booleans and large integers their values.
    sessions = create_sessionmaker(engine)
    customer = await _customer(sessions)
    plus_two = timezone(timedelta(hours=2))
    rows = [{"dedupe_key": f"awk{i}", "channel": "web", "address": text_value[:255],
             "identity_id": None, "message_id": None, "last_error": text_value,
             "payload": {"text": text_value, "n": [i, None, True, 2**53], 7: {"k": None}},
             "status": "pending", "attempts": 2**31 - 1 - i,
             "next_attempt_at": _Instant.of(
                 (NOW + timedelta(microseconds=i)).astimezone(plus_two)),
             "lease_until": NOW if i % 2 else None, "created_at": NOW}
            for i, text_value in enumerate(_AWKWARD)]
    rows.append({**rows[0], "dedupe_key": "awk-null-json", "payload": None})
    table = OutboxItem.__table__
    async with sessions.begin() as s:
        identity = Identity(channel="web", address="v_awkward", customer_id=customer.id,
                            created_at=NOW)
        s.add(identity)
        await s.flush()
        await s.run_sync(lambda sync: bulk_insert_sync(sync.connection(), table, rows))
        await s.run_sync(lambda sync: bulk_update_sync(
            sync.connection(), Identity.__table__, ("reachable", "unreachable_reason"),
            [{"id": identity.id, "reachable": False, "unreachable_reason": _AWKWARD[2]}]))
    async with sessions() as s:
        stored = {row.dedupe_key: row for row in (await s.scalars(
            select(OutboxItem).where(OutboxItem.dedupe_key.like("awk%")))).all()}
        stored_identity = await s.get(Identity, identity.id)
        json_nulls = (await s.execute(text(
            "SELECT count(*) FROM outbox WHERE dedupe_key = 'awk-null-json'"
            " AND payload IS NOT NULL"))).scalar_one()
    for i, text_value in enumerate(_AWKWARD):
        row = stored[f"awk{i}"]
        assert (row.address, row.last_error) == (text_value[:255], text_value)
        assert row.payload == {"text": text_value, "n": [i, None, True, 2**53],
                               "7": {"k": None}}  # keys made strings, as to_json writes them
        assert row.attempts == 2**31 - 1 - i
        assert row.next_attempt_at == NOW + timedelta(microseconds=i)
        assert row.lease_until == (NOW if i % 2 else None)
    assert stored["awk-null-json"].payload is None and json_nulls == 1  # JSON null, not NULL
    assert stored_identity is not None
    assert (stored_identity.reachable, stored_identity.unreachable_reason) == (
        False, _AWKWARD[2])


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_multi_row_writes_send_each_column_as_one_json_text(engine: AsyncEngine) -> None:
    # PostgreSQL: a column's values go as one JSON array (text), not as an array that asyncpg
    # and SQLAlchemy encode element by element; a type with no JSON reading still goes as an
    # array; a naive timestamp is refused, as a single row's would be.
    sessions = create_sessionmaker(engine)
    customer = await _customer(sessions)
    rows = [{"channel": "web", "address": f"v_json{i}", "customer_id": customer.id,
             "reachable": True, "created_at": NOW} for i in range(3)]
    with recording_executions(engine) as runs:
        async with sessions.begin() as s:
            await s.run_sync(lambda sync: bulk_insert_sync(
                sync.connection(), Identity.__table__, rows))
    [(statement, parameters)] = [run for run in runs if "INSERT" in run[0]]
    assert "json_array_elements_text(" in statement
    assert all(isinstance(value, str) for value in parameters), parameters
    assert ["web"] * 3 in [orjson.loads(value) for value in parameters]

    other = MetaData()
    amounts = Table("json_fallback", other, Column("id", Integer, primary_key=True),
                    Column("amount", Numeric(10, 2)), Column("note", String(20)))
    async with engine.begin() as conn:
        await conn.run_sync(other.create_all)
    with recording_executions(engine) as runs:
        async with sessions.begin() as s:
            await s.run_sync(lambda sync: bulk_insert_sync(
                sync.connection(), amounts,
                [{"amount": Decimal("12.34"), "note": "a"}, {"amount": None, "note": None}]))
    [(_, parameters)] = [run for run in runs if "INSERT" in run[0]]
    assert [Decimal("12.34"), None] in [list(value) for value in parameters
                                         if not isinstance(value, str)]
    async with sessions() as s:
        assert (await s.execute(select(amounts.c.amount, amounts.c.note)
                                .order_by(amounts.c.id))).all() == [(Decimal("12.34"), "a"),
                                                                     (None, None)]

    naive = [{**rows[0], "address": "v_naive", "created_at": NOW.replace(tzinfo=None)}]
    with pytest.raises(ValueError, match="naive datetime"):
        async with sessions.begin() as s:
            await s.run_sync(lambda sync: bulk_insert_sync(
                sync.connection(), Identity.__table__, naive))


async def test_drawing_ids_for_new_rows_leaves_the_flush_to_wait(engine: AsyncEngine) -> None:
    # add_new drawing a block of ids from the sequence (PostgreSQL) does not flush first: a
    # flush in mid-transaction would write on its own what the commit writes in one statement.
    sessions = create_sessionmaker(engine)
    customer = await _customer(sessions)
    with recording_statements(engine) as statements:
        async with sessions.begin() as s:
            waiting = Customer(created_at=NOW)
            s.add(waiting)
            intake = await add_new(s, Intake, {"customer_id": customer.id, "channel": "web",
                                               "status": "draft", "created_at": NOW,
                                               "updated_at": NOW})
            assert waiting in s.new
            drawn = list(statements)
    assert waiting.id is not None
    if engine.dialect.name == "postgresql":
        assert drawn and all("nextval" in x for x in drawn), drawn
    async with sessions() as s:
        assert (await s.get(Intake, intake.id)) is not None


async def test_add_new_refuses_naive_datetimes_like_the_orm(engine: AsyncEngine) -> None:
    sessions = create_sessionmaker(engine)
    customer = await _customer(sessions)
    with pytest.raises(Exception, match="naive datetime"):
        async with sessions.begin() as s:
            await add_new(s, Intake, {"customer_id": customer.id, "channel": "web",
                                      "status": "draft", "created_at": datetime(2026, 1, 1),
                                      "updated_at": NOW})


async def test_get_by_id_returns_the_object_in_hand_or_loads_it(engine: AsyncEngine) -> None:
    # core.sql.get_by_id: what session.get would return, without flushing; an object this
    # transaction holds comes back as it is, changes and all, with no statement; one that
    # is expired, or not loaded, is read from the database.
    sessions = create_sessionmaker(engine)
    async with sessions.begin() as s:
        customer = Customer(display_name="Ann", created_at=NOW)
        s.add(customer)
    async with sessions.begin() as s:
        loaded = (await s.scalars(select(Customer))).one()
        loaded.display_name = "Changed, not flushed"
        with recording_statements(engine) as statements:
            assert await get_by_id(s, Customer, customer.id) is loaded
        assert statements == []
        assert loaded.display_name == "Changed, not flushed"
        s.expire(loaded)
        with recording_statements(engine) as statements:
            again = await get_by_id(s, Customer, customer.id)
        assert again is loaded and again.display_name == "Ann" and len(statements) == 1
        assert await get_by_id(s, Customer, customer.id + 1000) is None
        assert await get_by_id(s, Intake, customer.id) is None  # another table's row


async def test_changed_intakes_are_written_together_and_marked_clean(
        engine: AsyncEngine) -> None:
    # core.sql.write_changes_together(Intake): on PostgreSQL the intakes a transaction changed,
    # whatever columns changed in each, are written in one statement before each flush and at
    # the commit (the ORM: one statement per set of changed columns, one execution per row).
    # Written, they are clean; changed again, written again; an intake with an attribute
    # expired is left to the ORM's flush; a rollback undoes it all.
    sessions = create_sessionmaker(engine)
    customer = await _customer(sessions)
    async with sessions.begin() as s:
        s.add_all([Intake(customer_id=customer.id, channel="web", status="draft",
                          created_at=NOW, updated_at=NOW) for _ in range(5)])
    later = NOW + timedelta(minutes=5)
    with recording_statements(engine) as statements:
        async with sessions.begin() as s:
            intakes = (await s.scalars(select(Intake).order_by(Intake.id))).all()
            intakes[0].plan = "chat10"
            intakes[1].vin, intakes[1].vehicle_year = "1HGCM82633A004352", 2003
            intakes[2].odometer, intakes[2].odometer_unit = 84000, "km"
            intakes[3].status, intakes[3].submitted_at = "awaiting_payment", later
            s.expire(intakes[4], ["plan"])
            intakes[4].problem = "Grinding noise when braking"
            # A query flushes first: the four are written and clean.
            assert (await s.scalar(select(Intake.plan).where(Intake.id == intakes[0].id))
                    == "chat10")
            assert not any(inspect(i).modified for i in intakes[:4])
            intakes[0].problem = "Changed again after the flush"
    # (At the commit, on PostgreSQL, an UPDATE may be a part of one WITH … statement.)
    updates = [x for x in statements
               if x.lstrip().upper().startswith("UPDATE") or 'UPDATE "intakes"' in x]
    if engine.dialect.name == "postgresql":
        together = [x for x in updates if 'UPDATE "intakes" AS t' in x]
        # Four at the flush, one at the commit; the one with an expired attribute on its own.
        assert len(together) == 2 and len(updates) == 3, updates
    else:
        assert updates and all("intakes" in x for x in updates)
    async with sessions() as s:
        stored = (await s.scalars(select(Intake).order_by(Intake.id))).all()
        assert [(i.plan, i.problem) for i in stored[:1]] == [
            ("chat10", "Changed again after the flush")]
        assert (stored[1].vin, stored[1].vehicle_year, stored[1].plan) == (
            "1HGCM82633A004352", 2003, None)
        assert (stored[2].odometer, stored[2].odometer_unit) == (84000, "km")
        assert (stored[3].status, stored[3].submitted_at) == ("awaiting_payment", later)
        assert stored[4].problem == "Grinding noise when braking"
        assert all(i.created_at == NOW and i.channel == "web" for i in stored)
    with pytest.raises(RuntimeError):
        async with sessions.begin() as s:
            first = (await s.scalars(select(Intake).order_by(Intake.id))).first()
            assert first is not None
            first.plan = "diag50"
            await s.flush()
            raise RuntimeError("rolled back")
    assert "plan" not in inspect(first).dict  # expired by the rollback, as after a flush
    async with sessions() as s:
        assert (await s.get(Intake, stored[0].id)).plan == "chat10"
