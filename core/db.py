"""Async engine and sessions for SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import orjson
from awaitlet import awaitlet
from sqlalchemy import event, make_url, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from core.config import normalize_database_url

Sessionmaker = async_sessionmaker[AsyncSession]
log = logging.getLogger("autodoctor.db")


def is_sqlite(engine_or_url: AsyncEngine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


def to_json(value: Any) -> str:
    """JSON columns as stored, by orjson (a message's body and a conversation's data are
    written for every message). Keys that are not strings become strings, as with json.dumps."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def create_engine(url: str, *, busy_timeout_ms: int = 5000, echo: bool = False,
                  connect_args: dict[str, Any] | None = None,
                  background_checkpoints: bool = False) -> AsyncEngine:
    """An engine with SQLite set up for concurrent use: WAL, foreign keys, busy timeout.

    background_checkpoints: on a plain file (see sqlite_file), its connections never
    checkpoint the WAL themselves (a commit that does copies megabytes and syncs the file
    while the writer waits); the caller runs a WalCheckpointer on sqlite_file(engine).
    """
    url = normalize_database_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "connect_args": dict(connect_args or {}),
                              "json_serializer": to_json, "json_deserializer": orjson.loads}
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # Waiting for another process's write lock happens in SQLite's busy handler, on the
        # driver's (aiosqlite's) thread: the event loop goes on meanwhile.
        kwargs["connect_args"].setdefault("timeout", busy_timeout_ms / 1000)
    else:
        # No ping before each checkout (a round trip per transaction): a connection found
        # dead when used is dropped from the pool, and the engine tries the message again.
        kwargs.setdefault("pool_size", 10)
        # The most recently used connection first: its prepared statements are warm, and
        # idle ones beyond the load can time out.
        kwargs["pool_use_lifo"] = True
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):
        _configure_sqlite(engine, background_checkpoints and _plain_file(url) is not None)
    return engine


def _configure_sqlite(engine: AsyncEngine, background_checkpoints: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself, so "BEGIN IMMEDIATE" below takes the write lock
        # at the start of each transaction instead of failing on upgrade mid-transaction
        # (SQLAlchemy's documented recipe for pysqlite and aiosqlite).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        if background_checkpoints:
            cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    # Writers of this process queue on an asyncio lock before BEGIN IMMEDIATE, in the order
    # they came, rather than in SQLite's busy handler (which sleeps up to 100 ms a try).
    # Read-only transactions (execution option readonly=True) take no lock: WAL lets them
    # read beside a writer. Other processes still meet on SQLite's own lock and busy timeout.
    write_lock = asyncio.Lock()
    holders: set[int] = set()

    def _release(dbapi_conn: Any) -> None:
        if id(dbapi_conn) in holders:
            holders.discard(id(dbapi_conn))
            write_lock.release()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(READONLY):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi_conn = conn.connection.dbapi_connection
        # The event runs inside SQLAlchemy's asyncio bridge: awaitlet waits on the lock there.
        awaitlet(write_lock.acquire())
        holders.add(id(dbapi_conn))
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(dbapi_conn)
            raise

    @event.listens_for(engine.sync_engine, "commit")
    @event.listens_for(engine.sync_engine, "rollback")
    def _on_end(conn: Any) -> None:
        try:
            dbapi_conn = conn.connection.dbapi_connection
        except Exception:  # noqa: BLE001 - invalidated (e.g. cancelled mid-query)
            return  # the pool's invalidate/close event releases it instead
        _release(dbapi_conn)

    @event.listens_for(engine.sync_engine.pool, "reset")
    @event.listens_for(engine.sync_engine.pool, "invalidate")
    @event.listens_for(engine.sync_engine.pool, "close")
    def _on_pool_end(dbapi_conn: Any, *args: Any) -> None:
        # A connection returned, invalidated or closed mid-transaction must not keep the lock.
        _release(dbapi_conn)


READONLY = "autodoctor_readonly"


def readonly(engine: AsyncEngine) -> AsyncEngine:
    """The same engine for read-only work: on SQLite it does not queue behind writers."""
    return engine.execution_options(**{READONLY: True})


def is_transient(exc: DBAPIError) -> bool:
    """A lock timeout, deadlock or serialization failure: the same transaction may succeed if
    run again."""
    text = str(exc.orig).lower() if exc.orig is not None else ""
    return any(s in text for s in ("database is locked", "deadlock", "could not serialize"))


class WalCheckpointer:
    """Checkpoints a SQLite file's write-ahead log every `interval` seconds, on a thread of
    its own with its own connection, so the event loop never does it (see create_engine's
    background_checkpoints). PASSIVE: it never waits for readers or writers, and copies what
    they leave it; the WAL stays about one interval's writes long."""

    def __init__(self, path: str, interval: float = 1.0) -> None:
        self.path, self.interval = path, interval
        self._conn: sqlite3.Connection | None = None

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint (blocking: call it off the loop): (busy, frames in the log,
        frames checkpointed)."""
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, timeout=0, check_same_thread=False,
                                         isolation_level=None)
        busy, log_frames, done = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(busy), int(log_frames), int(done)

    async def run_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                running = asyncio.ensure_future(asyncio.to_thread(self.checkpoint))
                try:
                    await asyncio.shield(running)
                except asyncio.CancelledError:
                    await asyncio.wait({running})  # its thread still uses the connection
                    raise
                except sqlite3.Error as exc:  # busy or briefly unavailable: next time
                    log.info("WAL checkpoint skipped: %s", exc)
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def sqlite_file(engine: AsyncEngine) -> str | None:
    """The file of an engine on a plain SQLite file, else None."""
    return _plain_file(engine.url.render_as_string(hide_password=False))


def _plain_file(url: str) -> str | None:
    # A file, not memory, and no URI options.
    if not is_sqlite(url):
        return None
    parsed = make_url(url)
    if not parsed.database or parsed.database == ":memory:" or parsed.query:
        return None
    return parsed.database


def create_sessionmaker(engine: AsyncEngine) -> Sessionmaker:
    """Sessions for use cases (core.runtime.Runtime.transaction wraps one in a unit of work)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def create_readonly_sessionmaker(engine: AsyncEngine) -> Sessionmaker:
    """Sessions that only read (pushing transcripts, lookups): they never take the write lock."""
    return async_sessionmaker(readonly(engine), expire_on_commit=False)


async def insert_ignore(session: AsyncSession, model: type[Any], values: dict[str, Any],
                        conflict: list[str]) -> int | None:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id: the new id, or None if it already existed.

    Unlike add()+flush(), a conflict does not abort the surrounding transaction.
    """
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else \
        sqlite.insert
    stmt = (insert(model).values(**values).on_conflict_do_nothing(index_elements=conflict)
            .returning(model.id))
    new_id: int | None = (await session.execute(stmt)).scalar_one_or_none()
    return new_id


async def ping(engine: AsyncEngine) -> bool:
    """True when the database answers a trivial query within two seconds."""
    try:
        async with asyncio.timeout(2.0), readonly(engine).connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means "down" for the health check
        return False
    return True


__all__ = ["READONLY", "Sessionmaker", "create_engine", "create_readonly_sessionmaker",
           "create_sessionmaker", "insert_ignore", "is_sqlite", "ping", "readonly"]
